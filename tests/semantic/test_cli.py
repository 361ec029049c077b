"""`agiqa features ...` end to end, offline, with a tiny model saved to a local folder ("any local path")."""
from __future__ import annotations

import json
import os

import pytest
import torch

from agiqa.cli import main
from agiqa.semantic import PAPER_PROMPTS, FeatureCache, load_features


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from _tiny import tiny_llava

    model, processor = tiny_llava(seed=0)
    path = tmp_path_factory.mktemp("models") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_extract_images_from_local_model_dir(tiny_model_dir, image_files, tmp_path, capsys):
    out = str(tmp_path / "cache")
    folder = os.path.dirname(image_files[0])
    argv = ["features", "extract", "--images", folder, "--encoder", tiny_model_dir, "--out", out,
            "--precision", "fp32", "--device", "cpu", "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    assert "7 computed" in capsys.readouterr().out
    feats = load_features(out, image_files)
    assert feats.shape == (7, 2, 32) and torch.isfinite(feats).all()
    fp = FeatureCache(out).fingerprint
    assert fp["encoder"] == tiny_model_dir and fp["revision"].startswith("local-")
    assert fp["prompts"] == list(PAPER_PROMPTS)
    # Resume is a no-op; a changed prompt is refused with an explanation.
    assert main(argv) == 0
    assert "0 computed, 7 already cached" in capsys.readouterr().out
    assert main(argv + ["--prompt", "Is it sharp?"]) == 2
    err = capsys.readouterr().err
    assert "different setup" in err and "--overwrite" in err
    assert main(argv + ["--prompt", "Is it sharp?", "--with-paper-prompts", "--overwrite", "--pooling", "text"]) == 0
    assert load_features(out, image_files).shape == (7, 3, 32)

    assert main(["features", "info", out]) == 0
    printed = capsys.readouterr().out
    assert "7 images" in printed and "Is it sharp?" in printed and "pooling" in printed
    assert main(["features", "info", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"]["pooling"] == "text"


def test_extract_reports_failures_nonzero(tiny_model_dir, image_files, tmp_path, capsys):
    bad = tmp_path / "images" / "zz_broken.jpg"
    bad.write_bytes(b"garbage")
    argv = ["features", "extract", "--images", os.path.dirname(image_files[0]), "--encoder", tiny_model_dir,
            "--out", str(tmp_path / "c"), "--precision", "fp32", "--device", "cpu", "--no-progress"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "zz_broken.jpg" in out


def _write_agiqa3k(root, image_files):
    import shutil

    lines = ["name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align"]
    for i, path in enumerate(image_files):
        name = f"sd1.5_{i:03d}.png"
        shutil.copy(path, root / name)
        lines.append(f"{name},a photo of thing {i},,,,{1 + i * 0.3:.2f},0.5,{2 + i * 0.1:.2f},0.4")
    (root / "data.csv").write_text("\n".join(lines) + "\n")


def test_extract_and_import_with_dataset(tiny_model_dir, image_files, tmp_path, capsys):
    root = tmp_path / "agiqa3k"
    root.mkdir()
    _write_agiqa3k(root, image_files)
    out = str(tmp_path / "cache")
    argv = ["features", "extract", "--dataset", "agiqa3k", "--root", str(root), "--encoder", tiny_model_dir,
            "--out", out, "--precision", "fp32", "--device", "cpu", "--no-progress",
            "--prompt", "Does the image show {prompt}?"]
    assert main(argv) == 0
    from agiqa.data import load_dataset

    frame = load_dataset("agiqa3k", str(root))
    feats = load_features(out, list(frame["path"]), generation_prompts=list(frame["prompt"]))
    assert feats.shape == (7, 1, 32)
    names = {n for _, n in FeatureCache(out).iter_names()}
    assert names == set(frame["name"])

    official = tmp_path / "official"
    official.mkdir()
    for name in frame["name"]:
        stem = os.path.splitext(name)[0]
        for suffix in ("semantic_content", "coherence"):
            torch.save(torch.randn(1, 4096).half(), official / f"{stem}_{suffix}.pt")
    out2 = str(tmp_path / "official-cache")
    assert main(["features", "import-official", "--features", str(official), "--dataset", "agiqa3k",
                 "--root", str(root), "--out", out2]) == 0
    assert load_features(out2, list(frame["path"])).shape == (7, 2, 4096)
