"""Feature cache: round trip, resume after a crash, atomic shards, stale detection, failures, multi-rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from agiqa.semantic import (
    FeatureCache,
    MissingFeaturesError,
    StaleFeatureCacheError,
    extract_features,
    load_features,
    sha256_file,
)
from agiqa.semantic.base import SemanticEncoder


class CountingEncoder(SemanticEncoder):
    """Wraps an encoder, counts encoded images, optionally 'crashes' after `crash_after` batches."""

    def __init__(self, inner, crash_after: int | None = None, crash: type[BaseException] = RuntimeError):
        self.inner, self.crash = inner, crash
        self.name, self.feature_dim, self.prompts = inner.name, inner.feature_dim, inner.prompts
        self.layer, self.pooling = inner.layer, inner.pooling
        self.crash_after = crash_after
        self.calls = 0
        self.images = 0

    def encode(self, images, generation_prompts=None):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise self.crash("simulated crash")
        self.calls += 1
        self.images += len(images)
        return self.inner.encode(images, generation_prompts)

    def fingerprint(self):
        return self.inner.fingerprint()


def test_round_trip(qwen_encoder, image_files, tmp_path):
    cache_dir = tmp_path / "cache"
    report = extract_features(image_files, qwen_encoder, cache_dir, batch_size=3, shard_size=4, progress=False)
    assert (report.done, report.skipped, report.failed) == (7, 0, [])
    feats = load_features(cache_dir, image_files)
    from agiqa.data.images import load_image

    direct = qwen_encoder.encode([load_image(p) for p in image_files])
    torch.testing.assert_close(feats, direct, rtol=1e-5, atol=1e-5)  # fp32 model -> fp32 storage
    # Order follows the requested paths, not the cache order.
    torch.testing.assert_close(load_features(cache_dir, image_files[::-1]), direct.flip(0), rtol=1e-5, atol=1e-5)
    shards = sorted(os.listdir(cache_dir / "shards"))
    assert len(shards) == 2 and all(s.endswith(".safetensors") for s in shards)  # 4 + 3, never one per image
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["count"] == 7
    names = sorted(n for s in index["shards"].values() for n in s["names"])
    assert names == sorted(os.path.basename(p) for p in image_files)
    fp = json.loads((cache_dir / "fingerprint.json").read_text())
    assert fp["encoder"] == "tiny-qwen2-vl" and fp["layer"] == -1 and fp["pooling"] == "all" and fp["dtype"] == "fp32"
    cache = FeatureCache(cache_dir)
    assert cache.has(sha256_file(image_files[0])) and len(cache) == 7
    # Second run: nothing to do.
    counting = CountingEncoder(qwen_encoder)
    again = extract_features(image_files, counting, cache_dir, progress=False)
    assert (again.done, again.skipped, counting.calls) == (0, 7, 0)


def test_keyed_by_content_not_name(qwen_encoder, image_files, tmp_path):
    cache_dir = tmp_path / "cache"
    extract_features(image_files[:2], qwen_encoder, cache_dir, progress=False)
    renamed = tmp_path / "copy_of_first.png"
    renamed.write_bytes(open(image_files[0], "rb").read())
    torch.testing.assert_close(load_features(cache_dir, [str(renamed)]), load_features(cache_dir, image_files[:1]))


def test_resume_after_crash(qwen_encoder, image_files, tmp_path):
    cache_dir = tmp_path / "cache"
    crashing = CountingEncoder(qwen_encoder, crash_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(image_files, crashing, cache_dir, batch_size=2, shard_size=2, progress=False)
    assert crashing.images == 4
    assert len(FeatureCache(cache_dir)) == 4
    resumed = CountingEncoder(qwen_encoder)
    report = extract_features(image_files, resumed, cache_dir, batch_size=2, shard_size=2, progress=False)
    assert resumed.images == 3 and (report.done, report.skipped) == (3, 4)  # only the remaining images
    from agiqa.data.images import load_image

    torch.testing.assert_close(load_features(cache_dir, image_files),
                               qwen_encoder.encode([load_image(p) for p in image_files]), rtol=1e-5, atol=1e-5)


def test_ctrl_c_flushes_the_unwritten_shard_and_the_rerun_completes(qwen_encoder, image_files, tmp_path):
    """Ctrl-C (KeyboardInterrupt, what SIGINT raises) before any shard is full: the flush-on-error path writes the
    computed features, so the re-run encodes only the rest and the cache equals an uninterrupted run's."""
    cache_dir = tmp_path / "cache"
    interrupted = CountingEncoder(qwen_encoder, crash_after=3, crash=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_features(image_files, interrupted, cache_dir, batch_size=1, shard_size=100, progress=False)
    assert interrupted.images == 3 and len(FeatureCache(cache_dir)) == 3  # no shard was full: only the flush wrote
    resumed = CountingEncoder(qwen_encoder)
    report = extract_features(image_files, resumed, cache_dir, batch_size=1, shard_size=100, progress=False)
    assert resumed.images == 4 and (report.done, report.skipped) == (4, 3)
    whole_dir = tmp_path / "whole"
    extract_features(image_files, qwen_encoder, whole_dir, batch_size=1, shard_size=100, progress=False)
    torch.testing.assert_close(load_features(cache_dir, image_files), load_features(whole_dir, image_files))


def test_partial_shard_is_ignored(qwen_encoder, image_files, tmp_path):
    cache_dir = tmp_path / "cache"
    extract_features(image_files[:3], qwen_encoder, cache_dir, progress=False)
    shard_dir = cache_dir / "shards"
    good = next(shard_dir.iterdir())
    # What a process killed mid-write leaves: a truncated temp file (never renamed into place).
    (shard_dir / f".{good.name}.dead.tmp").write_bytes(good.read_bytes()[:100])
    (cache_dir / "index.json").unlink()  # the index is only a hint: rebuilt from shards
    cache = FeatureCache(cache_dir)
    assert len(cache) == 3 and cache.shards == [good.name]
    counting = CountingEncoder(qwen_encoder)
    report = extract_features(image_files, counting, cache_dir, progress=False)
    assert counting.images == 4 and report.skipped == 3


def test_kill_9_then_resume(image_files, tmp_path):
    """A real SIGKILL mid-run (subprocess): completed shards survive, the re-run computes only the rest."""
    cache_dir = tmp_path / "cache"
    here = os.path.dirname(__file__)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {here!r})
        from _tiny import tiny_qwen2_vl
        from agiqa.semantic import HFVLMEncoder, extract_features
        enc = HFVLMEncoder(*tiny_qwen2_vl(0), name="tiny-qwen2-vl", precision="fp32", device="cpu")
        original, calls = enc.encode, []
        def encode(images, generation_prompts=None):
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            calls.append(1)
            return original(images, generation_prompts)
        enc.encode = encode
        extract_features({image_files!r}, enc, {str(cache_dir)!r}, batch_size=2, shard_size=2, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(FeatureCache(cache_dir)) == 4
    from _tiny import tiny_qwen2_vl

    from agiqa.semantic import HFVLMEncoder

    counting = CountingEncoder(HFVLMEncoder(*tiny_qwen2_vl(0), name="tiny-qwen2-vl", precision="fp32", device="cpu"))
    report = extract_features(image_files, counting, cache_dir, batch_size=2, progress=False)
    assert counting.images == 3 and report.skipped == 4
    assert load_features(cache_dir, image_files).shape == (7, 2, 32)


def test_stale_cache_detected(qwen_pair, qwen_encoder, image_files, tmp_path):
    from agiqa.semantic import HFVLMEncoder

    cache_dir = tmp_path / "cache"
    extract_features(image_files[:2], qwen_encoder, cache_dir, progress=False)
    other = HFVLMEncoder(*qwen_pair, name="tiny-qwen2-vl", precision="fp32", device="cpu",
                         prompts=("Is this image beautiful?",) + qwen_encoder.prompts[1:])
    with pytest.raises(StaleFeatureCacheError, match="prompts") as err:
        extract_features(image_files, other, cache_dir, progress=False)
    assert "--overwrite" in str(err.value) and "new output directory" in str(err.value)
    pooled = HFVLMEncoder(*qwen_pair, name="tiny-qwen2-vl", precision="fp32", device="cpu", pooling="text")
    with pytest.raises(StaleFeatureCacheError, match="pooling"):
        extract_features(image_files, pooled, cache_dir, progress=False)
    with pytest.raises(StaleFeatureCacheError, match="prompts"):
        load_features(cache_dir, image_files[:2], expected_fingerprint=other.fingerprint())
    # --overwrite recomputes with the new setup.
    report = extract_features(image_files[:2], other, cache_dir, progress=False, overwrite=True)
    assert report.done == 2
    assert FeatureCache(cache_dir).fingerprint["prompts"][0] == "Is this image beautiful?"


def test_corrupt_image_reported_not_fatal(qwen_encoder, image_files, tmp_path):
    bad = tmp_path / "images" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    missing = str(tmp_path / "images" / "gone.png")
    paths = image_files[:3] + [str(bad), missing]
    report = extract_features(paths, qwen_encoder, tmp_path / "cache", progress=False)
    assert report.done == 3 and report.n_failed == 2
    assert {p for p, _ in report.failed} == {str(bad), missing}
    summary = report.summary()
    assert "broken.png" in summary and "gone.png" in summary and "2 failed" in summary
    with pytest.raises(MissingFeaturesError) as err:
        load_features(tmp_path / "cache", paths)
    message = str(err.value)
    assert "2 of 5 images" in message and "broken.png" in message and "agiqa features extract" in message


def test_two_ranks_merge(qwen_encoder, image_files, tmp_path):
    """world_size=2 run as two sequential 'ranks' in one process: each writes rank-tagged shards."""
    cache_dir = tmp_path / "cache"
    r1 = extract_features(image_files, qwen_encoder, cache_dir, rank=1, world_size=2, progress=False)
    r0 = extract_features(image_files, qwen_encoder, cache_dir, rank=0, world_size=2, progress=False)
    assert (r0.done, r1.done) == (4, 3)
    shards = sorted(os.listdir(cache_dir / "shards"))
    assert [s[:4] for s in shards] == ["r000", "r001"]
    assert json.loads((cache_dir / "index.json").read_text())["count"] == 7
    from agiqa.data.images import load_image

    torch.testing.assert_close(load_features(cache_dir, image_files),
                               qwen_encoder.encode([load_image(p) for p in image_files]), rtol=1e-5, atol=1e-5)


def test_generation_prompt_keys(qwen_pair, image_files, tmp_path):
    from agiqa.semantic import HFVLMEncoder

    enc = HFVLMEncoder(*qwen_pair, name="t", precision="fp32", device="cpu",
                       prompts=("Does this image show {prompt}?",))
    gens = ["a cat"] * 3
    extract_features(image_files[:3], enc, tmp_path / "c", generation_prompts=gens, progress=False)
    assert load_features(tmp_path / "c", image_files[:3], generation_prompts=gens).shape == (3, 1, 32)
    with pytest.raises(MissingFeaturesError):
        load_features(tmp_path / "c", image_files[:3], generation_prompts=["a dog"] * 3)


def test_fp16_storage_for_half_precision(qwen_encoder, image_files, tmp_path):
    from safetensors import safe_open

    from agiqa.semantic import FeatureCache

    class Half(CountingEncoder):
        def fingerprint(self):
            return {**self.inner.fingerprint(), "dtype": "bf16"}

    extract_features(image_files[:2], Half(qwen_encoder), tmp_path / "c", progress=False)
    cache = FeatureCache(tmp_path / "c")
    with safe_open(str(cache.shard_dir / cache.shards[0]), framework="pt") as fh:
        assert fh.get_tensor("features").dtype == torch.float16
    assert load_features(tmp_path / "c", image_files[:2]).dtype == torch.float32
