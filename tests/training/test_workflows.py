"""User workflows on top of training: the demo with a local VLM, multi-seed reproduction, cross-dataset testing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agiqa.data.synth import generate_synthetic
from agiqa.demo import DEMO_CONFIG, cosine_steps, run_demo
from agiqa.metrics import compute_metrics
from agiqa.scoring.scorer import Scorer
from agiqa.semantic import FeatureCache
from agiqa.semantic.levels import LEVEL_QUESTIONS
from agiqa.training.config import TrainConfig
from agiqa.training.run import train

from test_training import tiny_config

SEMANTIC_TESTS = Path(__file__).resolve().parents[1] / "semantic"
REPO = Path(__file__).resolve().parents[2]
DEMO_RUN, SOURCE = REPO / "agiqa-demo" / "run", REPO / "src" / "agiqa"


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    """A tiny random LLaVA saved like a downloaded model folder (built by the semantic tests' helper)."""
    sys.path.insert(0, str(SEMANTIC_TESTS))
    from _tiny import tiny_llava

    model, processor = tiny_llava(seed=0)
    path = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_demo_with_a_local_vlm_extracts_features_on_demand_and_trains_all_experts(tiny_vlm_dir, tmp_path):
    results = run_demo(tmp_path / "demo", n=40, seed=1, epochs=1, encoder=tiny_vlm_dir, progress=False)
    assert "2 semantic experts" in results["variant"]
    cache = FeatureCache(tmp_path / "demo" / "features")
    assert len(cache.fingerprint["prompts"]) == 2 and cache.fingerprint["encoder"]
    saved = json.loads((Path(results["run_dir"]) / "model" / "config.json").read_text())
    assert saved["semantic_experts"] == [0, 1] and saved["use_maniqa"] is True
    assert saved["semantic_dim"] == cache.fingerprint["feature_dim"]
    assert results["metrics"]["n_scored"] == 8


def test_level_expert_trains_from_level_features_extracted_on_demand(tmp_path):
    """MA-AGIQA with the extra `levels` expert: a config asks the encoder for answer prefixes, the features are
    extracted with level probabilities appended, and the expert is gated beside the paper's experts."""
    sys.path.insert(0, str(SEMANTIC_TESTS))
    from _tiny import tiny_llava

    vlm = tmp_path / "vlm"
    for part in tiny_llava(seed=1, level_words=True):
        part.save_pretrained(vlm)
    data = tmp_path / "data"
    generate_synthetic(data, n=40, seed=3, image_size=32)
    answer = LEVEL_QUESTIONS["quality"][1]
    config = tiny_config(data, tmp_path, model={"name": "test_ma_agiqa", "kwargs": {"level_prompts": [0, 1]}},
                         data={"features": {"cache": str(tmp_path / "features"), "encoder": str(vlm),
                                            "answers": [answer, answer], "precision": "fp32"}})
    metrics = train(config, progress=False)
    assert metrics["n_scored"] == 8
    assert FeatureCache(tmp_path / "features").fingerprint["answers"] == [answer, answer]
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    gates = [column for column in predictions if column.startswith("gate_")]
    assert gates == ["gate_semantic0", "gate_semantic1", "gate_levels", "gate_maniqa"]
    assert predictions[gates].notna().all().all()


def test_ma_agiqa_trains_and_scores_with_mplug_owl2_features_on_demand(tmp_path):
    """The paper's encoder in agiqa's own environment: a tiny mPLUG-Owl2 folder in the released layout gives the
    features on demand for training, and `Scorer(model, encoder=folder)` re-computes them to score the same numbers."""
    sys.path.insert(0, str(SEMANTIC_TESTS))
    from _owl2 import write_checkpoint

    owl = write_checkpoint(tmp_path / "mplug-owl2-tiny")
    data = tmp_path / "data"
    generate_synthetic(data, n=40, seed=3, image_size=32)
    config = tiny_config(data, tmp_path, model={"name": "test_ma_agiqa", "kwargs": {"semantic_experts": [0, 1]}},
                         data={"features": {"cache": str(tmp_path / "features"), "encoder": str(owl),
                                            "precision": "fp32"}})
    metrics = train(config, progress=False)
    assert metrics["n_scored"] == 8
    fingerprint = FeatureCache(tmp_path / "features").fingerprint
    assert fingerprint["backend"] == "mplug-owl2" and fingerprint["feature_dim"] == 64
    assert fingerprint["template"] == "USER: {question}\n<|image|> ASSISTANT:"
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    scorer = Scorer(str(tmp_path / "run" / "model"), encoder=str(owl), device="cpu", precision="fp32")
    paths = [str(data / name) for name in predictions["name"][:4]]
    np.testing.assert_allclose(scorer.score(paths).scores, predictions["prediction"][:4], atol=1e-4)


def test_reproduce_runs_each_seed_on_both_splits_and_tables_mean_and_std(reproduced):
    _, out, table = reproduced
    runs = json.loads((out / "runs.json").read_text())
    assert (runs["model"], runs["experiment"], runs["seeds"]) == ("ma_agiqa", "agiqa3k", [20, 21])
    assert list(runs["splits"]) == ["official", "prompt_disjoint"]
    for result in runs["splits"].values():
        assert len(result["runs"]) == 2 and result["summary"]["srcc"]["runs"] == 2
    configs = {(kind, seed): TrainConfig.from_yaml(out / kind / f"seed{seed}" / "config.yaml")
               for kind in ("official", "prompt_disjoint") for seed in (20, 21)}
    assert [(c.data.split_method, c.data.split_seed) for c in configs.values()] == [
        ("official", 20), ("random", 21), ("prompt_disjoint", 20), ("prompt_disjoint", 21)]
    # synth renders every prompt once per generator: random splits test seen prompts, prompt-disjoint ones never
    official, disjoint = (runs["splits"][k]["test_prompts_seen_in_training"] for k in ("official", "prompt_disjoint"))
    assert all(shared > 0 for shared, _ in official) and all(shared == 0 and total > 0 for shared, total in disjoint)
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert "official split (mean ± std)" in header and "prompt-disjoint (mean ± std)" in header
    assert "| SRCC |" in table and "±" in table and "0.8939" in table  # the paper's AGIQA-3K number beside ours
    assert "Test prompts also seen in training" in table and "prompt-disjoint 0 of" in table


def test_cross_dataset_tests_on_every_row_of_the_other_dataset(tmp_path):
    train_root, test_root = tmp_path / "a", tmp_path / "b"
    generate_synthetic(train_root, n=40, seed=6, image_size=32)
    generate_synthetic(test_root, n=25, seed=7, image_size=32)
    config = tiny_config(train_root, tmp_path, test={"dataset": "agiqa3k", "root": str(test_root), "subset": "all"})
    metrics = train(config, progress=False)
    assert metrics["n_test"] == metrics["n_scored"] == 25
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(predictions["name"]) == set(pd.read_csv(test_root / "data.csv")["name"])


def _fresh_demo_run() -> Path | None:
    """README command 1's output (`agiqa demo` in the repository root), when it is newer than every source file.

    CI runs `agiqa demo` just before the tests; training the same model again here would cost ~13 minutes. A run
    older than the code (edited since) is not evidence about the code, so then the test trains its own.
    """
    metrics = DEMO_RUN / "metrics.json"
    if not metrics.is_file():
        return None
    sources = [p for p in SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return DEMO_RUN if metrics.stat().st_mtime > max(p.stat().st_mtime for p in sources) else None


@pytest.mark.slow
def test_demo_model_reaches_srcc_0_85(tmp_path):
    """The whole demo pipeline (synthetic data -> tiny MANIQA-expert MA-AGIQA from scratch -> test), ~7-12 min on
    2 cores: README command 1's own run when it is fresh, else trained here with the same defaults.

    The default data draws 30 % of images unlike their prompt, a loss only semantic experts can see; the image-only
    demo model reaches SRCC ~0.89 on it (docs/ma_agiqa.md). The metrics are recomputed from the predictions, and the
    saved model must give those predictions again, so a stale or hand-edited run cannot pass.
    """
    run = _fresh_demo_run() or Path(run_demo(tmp_path / "demo", progress=False)["run_dir"])
    predictions = pd.read_csv(run / "predictions.csv")
    overall = compute_metrics(predictions["prediction"], predictions["mos"])
    assert overall["n"] == 2000 and overall["srcc"] >= 0.85
    recorded = json.loads((run / "metrics.json").read_text())["overall"]
    assert overall["srcc"] == pytest.approx(recorded["srcc"], abs=1e-9)
    sample = predictions.sample(24, random_state=0)
    # the run was tested in fp32 (trainer.precision 32-true); Scorer's "auto" would take bf16 on a bf16 CPU
    rescored = Scorer(run / "model", device="cpu", precision="fp32").score(list(sample["path"]))
    np.testing.assert_allclose(rescored.scores, sample["prediction"], atol=1e-4)
    assert (run / "scatter.png").is_file()


def test_demo_cosine_schedule_ends_with_the_run(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(data, n=50, seed=0, image_size=32)
    config = TrainConfig.from_yaml(DEMO_CONFIG, [f"data.root={data}", "trainer.max_epochs=3"])
    # 35 training images (official 70 %) in batches of 16 -> 3 steps per epoch.
    assert cosine_steps(data, config) == 3 * 3
