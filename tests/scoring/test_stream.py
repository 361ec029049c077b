"""Scoring at scale as a user runs it: `agiqa score` over a folder, a CSV list, a Parquet list and WebDataset shards
(with corrupt, missing and sidecar-prompt samples) → shards of one row per input; the numbers are those of
`Scorer.score` on the same files; several decode workers, torchrun ranks and Ray actors give the same rows."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.models import create_model
from agiqa.scoring.scorer import Scorer
from agiqa.scoring.shards import ShardStore
from agiqa.scoring.sources import iter_items

PROMPTS = ["a red circle", "two blue squares", "a green star"]


def _png(rng, size=(36, 44)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder (with a broken file), a CSV list naming a missing file, a Parquet list, two WebDataset shards (one
    truncated mid-sample, one with a corrupt image and a sample without image); every good image also as a file in
    `reference/` with its prompt, for `Scorer.score`."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    reference: dict[str, tuple[str, str | None]] = {}  # key -> (file with the same bytes, prompt)
    (root / "reference").mkdir()

    def keep(key: str, data: bytes, prompt: str | None) -> None:
        file = root / "reference" / f"{len(reference):04d}.png"
        file.write_bytes(data)
        reference[key] = (str(file), prompt)

    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.png", "sub/c.png"):
        data = _png(rng)
        (folder / name).write_bytes(data)
        keep(str(folder / name), data, None)
    (folder / "broken.png").write_bytes(b"not an image")

    listed = root / "lists" / "files"
    listed.mkdir(parents=True)
    rows = []
    for i in range(5):
        data = _png(rng)
        (listed / f"{i}.png").write_bytes(data)
        rows.append({"image": f"files/{i}.png", "prompt": PROMPTS[i % 3]})
        keep(str(listed / f"{i}.png"), data, PROMPTS[i % 3])
    pd.DataFrame(rows[:3] + [{"image": "files/missing.png", "prompt": "gone"}]).to_csv(root / "lists" / "a.csv",
                                                                                         index=False)
    pd.DataFrame(rows[3:]).to_parquet(root / "lists" / "b.parquet", index=False)

    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i in range(6):
            data = _png(rng)
            _add(tar, f"s{i:03d}.png", data)
            if i % 2:
                _add(tar, f"s{i:03d}.txt", PROMPTS[i % 3].encode())
            else:
                _add(tar, f"s{i:03d}.json", f'{{"caption": "{PROMPTS[i % 3]}", "seed": {i}}}'.encode())
            keep(f"{root / 'shard-000.tar'}#s{i:03d}", data, PROMPTS[i % 3])
        _add(tar, "s006.png", b"\x89PNG\r\n\x1a\n corrupt")
        _add(tar, "s007.txt", b"a sample whose image never arrived")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(3):
            data = _png(rng)
            _add(tar, f"t{i:03d}.png", data)
            if i < 2:
                keep(f"{root / 'shard-001.tar'}#t{i:03d}", data, None)
    (root / "shard-001.tar").write_bytes(whole.getvalue()[:_data_offsets(whole)[2] + 100])  # cut inside t002.png

    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "model")
    paths = [str(folder), str(root / "lists" / "a.csv"), str(root / "lists" / "b.parquet"),
             str(root / "shard-000.tar"), str(root / "shard-001.tar")]
    return root, paths, reference


def _data_offsets(tar_bytes: io.BytesIO) -> list[int]:
    tar_bytes.seek(0)
    with tarfile.open(fileobj=tar_bytes) as tar:
        return [member.offset_data for member in tar]


BAD = {"broken.png": "Pillow can identify", "missing.png": "file not found", "s006": "could not be opened",
       "s007": "no image", "t002": "truncated", "shard-001.tar#": "unreadable"}


def test_a_shard_cut_inside_a_header_reports_the_lost_rest(tmp_path):
    rng = np.random.default_rng(2)
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(3):
            _add(tar, f"x{i}.png", _png(rng))
    (tmp_path / "cut.tar").write_bytes(whole.getvalue()[:_data_offsets(whole)[2] - 200])
    items = list(iter_items([tmp_path / "cut.tar"]))
    assert [item.key.split("#")[1] for item in items] == ["x0", "x1", ""]
    assert "damaged header" in items[-1].error and items[0].error is None


def _score(root, paths, out, *extra) -> int:
    return main(["score", str(root / "model"), *paths, "--device", "cpu", "--precision", "fp32",
                 "--batch-size", "3", "--block-size", "4", "--out", str(out), *extra])


def test_every_kind_of_input_scores_like_scorer_score_with_error_rows_for_the_bad(inputs, tmp_path, capsys):
    root, paths, reference = inputs
    assert _score(root, paths, tmp_path / "out", "--workers", "0") == 1
    err = capsys.readouterr().err
    rows = ShardStore(tmp_path / "out").read()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out"), rows)  # the folder reads as one table
    assert len(rows) == len(reference) + len(BAD) and rows["image"].is_unique
    assert list(rows["image"]) == [item.key for item in iter_items(paths)]  # input order, across shards
    failed = rows[rows["score"].isna()]
    assert len(failed) == len(BAD)
    for fragment, reason in BAD.items():
        row = failed[failed["image"].str.endswith(fragment)]
        assert len(row) == 1 and reason.lower() in row["error"].iloc[0].lower(), (fragment, row)
        assert fragment.rstrip("#") in err
    good = rows.dropna(subset=["score"]).set_index("image")
    files = [reference[key][0] for key in good.index]
    expected = Scorer(root / "model", device="cpu", precision="fp32").score(files).scores
    np.testing.assert_allclose(good["score"], expected, rtol=1e-5, atol=1e-6)
    prompts = [None if pd.isna(good.loc[key, "prompt"]) else good.loc[key, "prompt"] for key in good.index]
    assert prompts == [reference[key][1] for key in good.index]


def test_decode_workers_give_the_rows_of_the_main_process(inputs, tmp_path):
    root, paths, _ = inputs
    assert _score(root, paths, tmp_path / "w0", "--workers", "0", "--format", "csv") == 1
    assert _score(root, paths, tmp_path / "w2", "--workers", "2", "--format", "jsonl") == 1
    one, two = ShardStore(tmp_path / "w0", "csv").read(), ShardStore(tmp_path / "w2", "jsonl").read()
    assert sorted(p.suffix for p in (tmp_path / "w2").glob("part-*")) == [".jsonl"] * 6
    pd.testing.assert_frame_equal(one, two, rtol=1e-6)


def test_top_k_from_the_shards_matches_pandas_and_a_table_output_ranks(inputs, tmp_path):
    root, paths, _ = inputs
    assert _score(root, paths, tmp_path / "out", "--top-k", "2") == 1
    rows = ShardStore(tmp_path / "out").read().dropna(subset=["score"])
    best = pd.read_parquet(tmp_path / "out.top2_by_prompt.parquet")
    expected = (rows.sort_values("score", ascending=False, kind="stable").groupby("prompt", dropna=False).head(2)
                .sort_values(["prompt", "score"], ascending=[True, False]))
    assert list(best["image"]) == list(expected["image"])
    assert set(best["rank"]) == {1, 2} and len(best) == len(expected)

    assert _score(root, paths, tmp_path / "scores.csv", "--top-k", "1") == 1
    table = pd.read_csv(tmp_path / "scores.csv")
    assert not (tmp_path / "scores.csv.parts").exists() and len(table) == len(rows) + len(BAD)
    top1 = pd.read_csv(tmp_path / "scores.top1.csv")
    assert list(top1["image"]) == list(expected.groupby("prompt", dropna=False).head(1)["image"])


def test_a_rerun_skips_finished_shards_and_changed_inputs_are_refused(inputs, tmp_path, capsys):
    root, paths, _ = inputs
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(os.listdir(paths[0]))[:3]:
        (folder / name).write_bytes((root / "reference" / "0000.png").read_bytes())
    assert _score(root, [str(folder)], tmp_path / "out") == 0
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    assert _score(root, [str(folder)], tmp_path / "out") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")} == first  # nothing re-scored
    (folder / "0-new.png").write_bytes((root / "reference" / "0001.png").read_bytes())
    assert _score(root, [str(folder)], tmp_path / "out") == 2
    assert "scored for other inputs" in capsys.readouterr().err


def test_progress_lines_when_not_on_a_terminal(inputs, tmp_path, caplog):
    root, paths, _ = inputs
    with caplog.at_level(logging.INFO, logger="agiqa.score"):
        _score(root, paths, tmp_path / "out", "--log-every", "0")
    lines = [r.getMessage() for r in caplog.records if r.name == "agiqa.score"]
    total = len(list(iter_items(paths)))
    assert len(lines) >= 3 and lines[-1].startswith(f"scored {total}/{total} images (")
    assert lines[-1].endswith(f"{len(BAD)} errors") and "img/s, ETA" in lines[-1]


def test_a_prompt_model_reads_prompts_from_lists_and_sidecars(tmp_path):
    torch.manual_seed(0)
    create_model("test_moe_agiqa").save_pretrained(tmp_path / "moe")
    rng = np.random.default_rng(1)
    files, prompts = [], []
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i in range(4):
            data = _png(rng, (40, 40))
            (tmp_path / f"{i}.png").write_bytes(data)
            files.append(str(tmp_path / f"{i}.png"))
            prompts.append(PROMPTS[i % 3])
            _add(tar, f"k{i}.png", data)
            if i < 3:
                _add(tar, f"k{i}.txt", PROMPTS[i % 3].encode())
    code = main(["score", str(tmp_path / "moe"), str(tmp_path / "shard.tar"), "--device", "cpu", "--precision",
                 "fp32", "--out", str(tmp_path / "out.csv")])
    rows = pd.read_csv(tmp_path / "out.csv")
    assert code == 1 and rows["error"].iloc[3].startswith("no prompt")  # k3 has no sidecar and no --prompt
    expected = Scorer(tmp_path / "moe", device="cpu", precision="fp32").score(files[:3], prompts[:3]).scores
    np.testing.assert_allclose(rows["score"].iloc[:3], expected, rtol=1e-5, atol=1e-6)
    # the mixture's gate weights and per-expert scores, from the same forward (averaged over the test crops)
    experts = [f"expert{i}" for i in range(4)]
    assert list(rows.columns) == ["image", "prompt", "score", *[f"{kind}_{name}" for name in experts
                                                                 for kind in ("gate", "expert")], "error", "rank",
                                  "best"]
    gates = rows[[f"gate_{name}" for name in experts]].iloc[:3].to_numpy()
    assert (gates >= 0).all() and (gates.sum(axis=1) <= 1 + 1e-6).all() and rows.iloc[3, 3:11].isna().all()


def test_explain_draws_each_scored_image_with_its_heat_map(inputs, tmp_path, capsys):
    root, paths, reference = inputs
    assert _score(root, paths[:1] + paths[3:4], tmp_path / "plain.csv", "--workers", "0") == 1
    assert _score(root, paths[:1] + paths[3:4], tmp_path / "explained.csv", "--workers", "2",
                  "--explain", str(tmp_path / "maps")) == 1
    plain, rows = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "explained.csv")
    pd.testing.assert_frame_equal(rows.drop(columns="heatmap"), plain, rtol=1e-6)  # drawing changes no score
    assert rows.loc[rows["score"].isna(), "heatmap"].isna().all()
    drawn = rows.dropna(subset=["score"])
    assert len(drawn) == 9 and drawn["heatmap"].is_unique
    assert sorted(str(p) for p in (tmp_path / "maps").iterdir()) == sorted(drawn["heatmap"])  # nothing else left
    for key, file in zip(drawn["image"], drawn["heatmap"]):
        original = Image.open(reference[key][0]).convert("RGB")
        heat = Image.open(file)
        assert heat.format == "PNG" and heat.size == original.size
        difference = np.abs(np.asarray(heat, dtype=float) - np.asarray(original, dtype=float))
        assert difference.mean() > 10  # the map is drawn over the image
    # MoE-AGIQA has no per-patch scores: said plainly, before any work
    torch.manual_seed(0)
    create_model("test_moe_agiqa").save_pretrained(tmp_path / "moe")
    assert main(["score", str(tmp_path / "moe"), paths[0], "--prompt", "x", "--device", "cpu", "--out",
                 str(tmp_path / "moe.csv"), "--explain", str(tmp_path / "moe-maps")]) == 2
    assert "no per-patch scores" in capsys.readouterr().err


def test_torchrun_without_a_shared_output_is_refused(inputs, monkeypatch, capsys):
    root, paths, _ = inputs
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["score", str(root / "model"), *paths]) == 2
    assert "pass --out" in capsys.readouterr().err


def _two_ranks(root, paths, out) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "agiqa", "score", str(root / "model"), *paths, "--device", "cpu", "--precision", "fp32",
               "--batch-size", "3", "--block-size", "4", "--workers", "0", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_two_torchrun_ranks_on_gloo_give_the_rows_of_one_process(inputs, tmp_path):
    root, paths, _ = inputs
    assert _score(root, paths, tmp_path / "one") == 1
    result = _two_ranks(root, paths, tmp_path / "two")
    assert result.returncode == 0 and "rows in 6 shard(s)" in result.stdout, result.stderr[-3000:]
    assert "6 of 22 image(s) could not be scored" in result.stderr  # reported, though torchrun gets exit code 0
    pd.testing.assert_frame_equal(ShardStore(tmp_path / "one").read(), ShardStore(tmp_path / "two").read(),
                                  rtol=1e-6)


@pytest.mark.slow
def test_the_ray_engine_on_a_local_instance_gives_the_rows_of_the_local_path(inputs, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    root, paths, _ = inputs
    assert _score(root, paths, tmp_path / "local") == 1
    command = [sys.executable, "-m", "agiqa", "score", str(root / "model"), *paths, "--device", "cpu",
               "--precision", "fp32", "--batch-size", "3", "--block-size", "4", "--engine", "ray", "--actors", "2",
               "--out", str(tmp_path / "ray")]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 1 and "rows in 6 shard(s)" in result.stdout, result.stderr[-3000:]
    pd.testing.assert_frame_equal(ShardStore(tmp_path / "local").read(), ShardStore(tmp_path / "ray").read(),
                                  rtol=1e-6)
