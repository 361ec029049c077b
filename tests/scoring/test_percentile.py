"""What a score means (issue #33): a model folder that records the quantiles of its training MOS
(`mos_distribution.json`: `mos_quantiles`, 101 values, and `mos_range`) gives every score a `percentile` -- the share of
the training images it is better than -- in `agiqa score` outputs (CSV, Parquet, shard folders), in
`Scorer.score(...).percentiles` and in the service's JSON; `score_range` becomes the training range. Without the file
nothing changes but the summary saying so; zero-shot `vlm:` scores say their 1..5 level scale instead."""
from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.models import create_model
from agiqa.scoring.distribution import DISTRIBUTION_FILE, percentile_of
from agiqa.scoring.scorer import Scorer

CPU = ["--device", "cpu", "--precision", "fp32", "--workers", "0"]


def _quantiles(low: float, high: float) -> np.ndarray:
    """101 strictly increasing, unevenly spaced quantiles from `low` to `high` (checks interpolation, not a line)."""
    return low + (high - low) * np.linspace(0, 1, 101) ** 2


def _expected(scores, quantiles, lower_better=False) -> np.ndarray:
    share = np.interp(scores, quantiles, np.arange(101.0))
    return np.round(100 - share if lower_better else share, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model folder with mos_distribution.json whose quantiles span its scores on six images; the images; the
    quantiles; the same model without the file."""
    root = tmp_path_factory.mktemp("percentile")
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", semantic_experts=())
    model.save_pretrained(root / "model")
    model.save_pretrained(root / "plain")
    rng = np.random.default_rng(3)
    (root / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    files = sorted(str(p) for p in (root / "images").glob("*.png"))
    scores = Scorer(root / "plain", device="cpu", precision="fp32").score(files).scores
    spread = scores.max() - scores.min()
    quantiles = _quantiles(scores.min() - spread / 4, scores.max() + spread / 4)
    (root / "model" / DISTRIBUTION_FILE).write_text(json.dumps({
        "mos_quantiles": quantiles.tolist(), "mos_range": [float(quantiles[0]) - 1, float(quantiles[-1]) + 1],
        "dataset": "agiqa3k", "n_images": 2386, "target": "quality"}))
    return root, files, quantiles


def test_percentile_of_reads_the_quantiles():
    quantiles = np.linspace(1.0, 5.0, 101)
    got = percentile_of([0.5, 1.0, 3.0, 3.02, 5.0, 9.0, np.nan], quantiles)
    np.testing.assert_allclose(got[:6], [0.0, 0.0, 50.0, 50.5, 100.0, 100.0])
    assert np.isnan(got[6])
    ties = np.concatenate([np.full(51, 2.0), np.linspace(2.0, 4.0, 51)[1:]])  # half of the labels are 2.0
    np.testing.assert_allclose(percentile_of([2.0, 1.0, 4.0], ties), [25.0, 0.0, 100.0])


@pytest.mark.parametrize("out", ["scores.csv", "scores.parquet", "shards"])
def test_every_score_output_has_a_percentile_column(out, trained, tmp_path, capsys):
    root, files, quantiles = trained
    target = tmp_path / out
    assert main(["score", str(root / "model"), str(root / "images"), "--out", str(target), *CPU]) == 0
    table = (pd.read_csv(target) if out.endswith(".csv") else pd.read_parquet(target)).set_index("image")
    assert list(table.columns[:3]) == ["prompt", "score", "percentile"]
    table = table.loc[files]
    np.testing.assert_allclose(table["percentile"], _expected(table["score"], quantiles), atol=0.051)
    assert table["percentile"].between(0, 100).all() and table["percentile"].nunique() > 3
    said = capsys.readouterr().out
    assert "`percentile` = the share of the agiqa3k training images (2,386) each score is better than" in said


def test_the_python_result_has_percentiles_and_the_training_range(trained, tmp_path):
    root, files, quantiles = trained
    scorer = Scorer(root / "model", device="cpu", precision="fp32")
    result = scorer.score(files)
    np.testing.assert_allclose(result.percentiles, _expected(result.scores, quantiles), atol=0.051)
    assert scorer.score_range == (quantiles[0] - 1, quantiles[-1] + 1)

    flipped = tmp_path / "lower_better"  # a lower-is-better model: the share of training images it is lower than
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(flipped)
    (flipped / "model.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes())
    values = json.loads((root / "model" / DISTRIBUTION_FILE).read_text())
    (flipped / DISTRIBUTION_FILE).write_text(json.dumps({**values, "lower_better": True}))
    low = Scorer(flipped, device="cpu", precision="fp32")
    assert low.lower_better
    np.testing.assert_allclose(low.score(files).percentiles, _expected(result.scores, quantiles, True), atol=0.051)


def test_the_dataset_name_comes_from_the_model_card_when_the_file_has_none(trained, tmp_path):
    root, files, quantiles = trained
    folder = tmp_path / "model"
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(folder)
    (folder / DISTRIBUTION_FILE).write_text(json.dumps({"mos_quantiles": quantiles.tolist()}))
    with open(folder / "README.md", "a") as card:  # as `agiqa train` writes its training record
        card.write("\n- dataset: aigiqa20k (root /data/AIGIQA-20K)\n- target: quality\n")
    assert "the share of the aigiqa20k training images each" in Scorer(folder, device="cpu").scale


def test_without_the_file_nothing_changes_but_the_summary_says_why(trained, tmp_path, capsys):
    root, files, _ = trained
    assert main(["score", str(root / "plain"), str(root / "images"), "--out", str(tmp_path / "s.csv"), *CPU]) == 0
    assert "percentile" not in pd.read_csv(tmp_path / "s.csv").columns
    assert f"no percentile: the model records no quantiles of its training labels ({DISTRIBUTION_FILE}" in \
        capsys.readouterr().out
    assert Scorer(root / "plain", device="cpu").score(files[:2]).percentiles is None


@pytest.mark.parametrize("values, reason", [
    ({"mos_quantiles": list(range(100))}, "must hold 101 values"),
    ({"mos_quantiles": list(range(101))[::-1]}, "must not decrease"),
    ({"mos_quantiles": list(range(101)), "mos_range": [0, 50]}, "outside mos_range"),
    ({"mos_range": [5, 1]}, "min <= max"),
    ("not an object", "expected a JSON object"),
])
def test_an_unusable_file_is_a_warning_naming_it_and_the_scores_come_without_percentile(values, reason, tmp_path,
                                                                                       caplog):
    folder = tmp_path / "model"
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(folder)
    (folder / DISTRIBUTION_FILE).write_text(json.dumps(values))
    with caplog.at_level(logging.WARNING, logger="agiqa.scoring.distribution"):
        scorer = Scorer(folder, device="cpu")
    assert not scorer.has_percentile and "percentile" not in scorer.column_names
    assert any(str(folder / DISTRIBUTION_FILE) in r.getMessage() and reason in r.getMessage()
               for r in caplog.records), caplog.text


def test_registered_weights_read_the_quantiles_from_their_pretrained_cfg():
    model = create_model("test_maniqa").eval()
    model.pretrained_cfg = types.SimpleNamespace(tag="demo", score_range=(0.0, 1.0), lower_better=False,
                                                 train_dataset="koniq10k", mos_quantiles=np.linspace(0, 1, 101),
                                                 mos_range=(0.0, 1.0))
    scorer = Scorer(model, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    result = scorer.score([image])
    np.testing.assert_allclose(result.percentiles, np.round(np.clip(result.scores, 0, 1) * 100, 1), atol=0.051)
    assert "koniq10k training images" in scorer.scale


def test_the_service_answers_percentile_score_range_and_scale(trained):
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    from fastapi.testclient import TestClient

    from agiqa.service.app import create_app

    root, files, quantiles = trained
    scorer = Scorer(root / "model", device="cpu", precision="fp32")
    http = TestClient(create_app(scorer, "tiny"))
    info = http.get("/info").json()
    assert info["score_range"] == pytest.approx([quantiles[0] - 1, quantiles[-1] + 1])
    assert info["percentile"]["dataset"] == "agiqa3k" and info["percentile"]["n_images"] == 2386
    assert "percentile" in info["scale"] and info["levels"] is None
    uploads = [("images", (Path(f).name, Path(f).read_bytes(), "image/png")) for f in files[:3]]
    uploads.append(("images", ("broken.png", b"not an image", "image/png")))
    rows = http.post("/score", files=uploads).json()["results"]
    direct = scorer.score(files[:3])
    assert [row["percentile"] for row in rows[:3]] == pytest.approx(direct.percentiles.tolist(), abs=0.051)
    assert rows[3]["percentile"] is None and rows[3]["score"] is None


def test_zero_shot_scores_say_their_level_scale_and_have_no_percentile(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "semantic"))
    from _tiny import tiny_llava

    folder = tmp_path / "tiny-llava"
    for part in tiny_llava(seed=5, level_words=True):
        part.save_pretrained(folder)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "a.png")
    assert main(["score", f"vlm:{folder}", str(tmp_path / "a.png"), "--out", str(tmp_path / "s.csv"), *CPU]) == 0
    assert "percentile" not in pd.read_csv(tmp_path / "s.csv").columns
    assert ("scores are the expected quality level, 1 (bad) .. 5 (excellent), zero-shot (Q-Align rule); no training "
            "data, so no percentile") in capsys.readouterr().out
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    from fastapi.testclient import TestClient

    from agiqa.service.app import create_app

    scorer = Scorer(f"vlm:{folder}", device="cpu", precision="fp32")
    info = TestClient(create_app(scorer, "vlm")).get("/info").json()
    assert info["levels"]["range"] == [1.0, 5.0] and info["levels"]["words"]["excellent"] == 5.0
    assert info["percentile"] is None and "1 (bad) .. 5 (excellent)" in info["scale"]
