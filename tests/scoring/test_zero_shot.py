"""Zero-shot VLM scores (`vlm:<VLM>`) through `agiqa score`, the service and `agiqa evaluate`, each checked against the
Q-Align rule computed by hand on the tiny VLM (tests/semantic/_tiny.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agiqa.cli import main
from agiqa.data.synth import generate_synthetic
from agiqa.metrics import compute_metrics
from agiqa.scoring.scorer import Scorer
from agiqa.semantic import FeatureCache
from agiqa.semantic.levels import LEVEL_QUESTIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "semantic"))
from _tiny import hand_levels, tiny_llava  # noqa: E402

QUALITY, ALIGNMENT = LEVEL_QUESTIONS["quality"], LEVEL_QUESTIONS["alignment"]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """A tiny random LLaVA whose tokenizer has the level words, saved as a local model folder."""
    pair = tiny_llava(seed=5, level_words=True)
    folder = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    for part in pair:
        part.save_pretrained(folder)
    return pair, str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index, size in enumerate([(40, 56), (48, 48), (64, 32), (30, 70), (50, 50)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
    return sorted(folder.glob("*.png"))


def by_hand(pair, paths, question, answer, prompts=None) -> np.ndarray:
    return np.array([hand_levels(pair, Image.open(path).convert("RGB"),
                                 question.replace("{prompt}", prompts[i]) if prompts else question, answer)[1]
                     for i, path in enumerate(paths)])


def test_score_cli_streams_zero_shot_quality_with_a_row_per_input(vlm, images, tmp_path):
    pair, folder = vlm
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "scores.csv"
    code = main(["score", f"vlm:{folder}", str(images[0].parent), str(broken), "--device", "cpu", "--precision",
                 "fp32", "--workers", "1", "--batch-size", "2", "--out", str(out)])
    assert code == 1  # one input failed
    table = pd.read_csv(out).set_index("image")
    assert "cannot" in table.loc[str(broken), "error"] or "identify" in table.loc[str(broken), "error"]
    good = table.loc[[str(path) for path in images]]
    np.testing.assert_allclose(good["score"], by_hand(pair, images, *QUALITY), atol=1e-4)


def test_alignment_asks_about_each_images_prompt(vlm, images, tmp_path):
    pair, folder = vlm
    prompts = ["a cat", "a red car on a street", "mountains", "a cat", "a painting of mountains"]
    listing = tmp_path / "list.csv"
    pd.DataFrame({"image": [str(p) for p in images], "prompt": prompts}).to_csv(listing, index=False)
    out = tmp_path / "alignment.csv"
    assert main(["score", f"vlm-alignment:{folder}", str(listing), "--device", "cpu", "--precision", "fp32",
                 "--workers", "0", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("image").loc[[str(p) for p in images]]
    np.testing.assert_allclose(table["score"], by_hand(pair, images, *ALIGNMENT, prompts=prompts), atol=1e-4)
    assert len(set(np.round(table["score"], 6))) > 1


def test_service_answers_with_zero_shot_scores(vlm, images):
    from fastapi.testclient import TestClient

    from agiqa.service.app import create_app

    pair, folder = vlm
    http = TestClient(create_app(Scorer(f"vlm:{folder}", device="cpu", precision="fp32"), "vlm"))
    info = http.get("/info").json()
    assert info["score_range"] == [1.0, 5.0] and info["image_size"] is None
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in images[:3]]
    answer = http.post("/score", files=files)
    assert answer.status_code == 200, answer.text
    scores = [item["score"] for item in answer.json()["results"]]
    np.testing.assert_allclose(scores, by_hand(pair, images[:3], *QUALITY), atol=1e-4)


def test_evaluate_reports_the_zero_shot_baseline_on_a_dataset_split(vlm, tmp_path):
    pair, folder = vlm
    data = tmp_path / "data"
    generate_synthetic(data, n=30, seed=2, image_size=32)
    out = tmp_path / "eval"
    assert main(["evaluate", f"vlm:{folder}", "--dataset", "agiqa3k", "--root", str(data), "--device", "cpu",
                 "--precision", "fp32", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert metrics["overall"]["n"] == len(predictions) == 6 and metrics["model_dir"] == f"vlm:{folder}"
    assert (out / "features").is_dir()  # the level answers were cached for the next run
    paths = [Path(p) for p in predictions["path"]]
    np.testing.assert_allclose(predictions["prediction"], by_hand(pair, paths, *QUALITY), atol=1e-4)
    recomputed = compute_metrics(predictions["prediction"], predictions["mos"])
    assert recomputed["srcc"] == pytest.approx(metrics["overall"]["srcc"])


def test_reproduce_tables_the_zero_shot_baseline_on_both_kinds_of_split(vlm, tmp_path):
    _, folder = vlm
    data = tmp_path / "data"
    generate_synthetic(data, n=40, seed=4, image_size=32)
    out = tmp_path / "repro"
    assert main(["reproduce", f"vlm:{folder}", "--dataset", "agiqa3k", "--root", str(data), "--seeds", "2",
                 "--precision", "fp32", "--out", str(out)]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert (runs["model"], runs["seeds"], list(runs["splits"])) == (f"vlm:{folder}", [20, 21],
                                                                     ["official", "prompt_disjoint"])
    assert all(shared == 0 for shared, _ in runs["splits"]["prompt_disjoint"]["test_prompts_seen_in_training"])
    assert "prompt-disjoint (mean ± std)" in (out / "results.md").read_text()
    scorer = Scorer(f"vlm:{folder}", device="cpu", precision="fp32")
    tested = {}
    for kind in ("official", "prompt_disjoint"):
        for seed in (20, 21):
            predictions = pd.read_csv(out / kind / f"seed{seed}" / "predictions.csv")
            np.testing.assert_allclose(predictions["prediction"], scorer.score(list(predictions["path"])).scores,
                                       atol=1e-5)
            tested[kind, seed] = set(predictions["name"])
    assert tested["official", 20] != tested["official", 21]  # seed 20's official split, seed 21's random one
    assert len(FeatureCache(out / "features")) == 40  # one extraction of every image, read by all four runs


def test_level_features_extracted_by_the_cli_serve_the_zero_shot_scorer(vlm, images, tmp_path):
    """`agiqa features extract --prompt Q --answer A` caches exactly what `vlm:` computes: scoring with --features
    reads them (same scores as computing afresh), and a cache of other questions is refused."""
    pair, folder = vlm
    cache = tmp_path / "levels"
    assert main(["features", "extract", "--images", str(images[0].parent), "--encoder", folder, "--out", str(cache),
                 "--prompt", QUALITY[0], "--answer", QUALITY[1], "--precision", "fp32", "--device", "cpu",
                 "--no-progress"]) == 0
    assert FeatureCache(cache).fingerprint["feature_dim"] == 32 + 5
    cached = Scorer(f"vlm:{folder}", device="cpu", precision="fp32", features=cache)
    cached.encoder.encode = None  # every image is cached: the VLM must not run
    fresh = Scorer(f"vlm:{folder}", device="cpu", precision="fp32")
    np.testing.assert_allclose(cached.score(list(map(str, images))).scores, by_hand(pair, images, *QUALITY),
                               atol=1e-4)
    np.testing.assert_allclose(cached.score(list(map(str, images))).scores,
                               fresh.score(list(map(str, images))).scores, atol=1e-6)
    with pytest.raises(Exception, match="another encoder setup"):
        Scorer(f"vlm-alignment:{folder}", device="cpu", precision="fp32", features=cache)


def test_a_vlm_spec_without_a_model_is_refused():
    with pytest.raises(ValueError, match="name the VLM after 'vlm:'"):
        Scorer("vlm:", device="cpu")
    assert main(["score", "vlm:", "a.png"]) == 2  # the CLI says so in one line, no traceback
