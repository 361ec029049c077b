"""Multi-target runs as a user drives them: config parsing, train / evaluate / score with one head per target."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.data.synth import generate_synthetic
from agiqa.data.transforms import normalize, resize_image
from agiqa.errors import ConfigError
from agiqa.metrics import compute_metrics
from agiqa.models import create_model
from agiqa.training.config import DataSection, TrainConfig
from agiqa.training.datamodule import AGIQADataModule
from agiqa.training.resolve import resolve_experiment, resolve_targets, target_names
from agiqa.training.run import build_module, train

TARGETS = ["quality", "alignment"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, n=60, seed=3, image_size=32)
    return root


def multi_config(root, out, target="quality,alignment", **optim) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"name": "test_ma_agiqa", "kwargs": {"semantic_experts": []}},
        "data": {"dataset": "agiqa3k", "root": str(root), "image_size": 32, "batch_size": 8, "eval_batch_size": 16,
                 "image_cache": str(out / "cache"), "target": target},
        "optim": {"lr": 1e-3, **optim},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
        "output_dir": str(out / "run"),
    })


@pytest.mark.parametrize("target, expected", [
    (None, None), ("quality", ["quality"]), ("quality,alignment", TARGETS), (" quality , alignment ", TARGETS),
    (["quality", "alignment"], TARGETS), ("all", TARGETS),
])
def test_data_target_takes_one_a_list_a_comma_string_or_all(target, expected):
    assert resolve_targets(DataSection(dataset="agiqa3k", target=target)) == expected


def test_all_is_every_declared_target_and_a_csv_s_score_columns():
    assert resolve_targets(DataSection(dataset="aigciqa2023", target="all")) == [
        "quality", "authenticity", "correspondence"]
    assert resolve_targets(DataSection(dataset="csv", csv="x.csv", score_col="q, a", target="all")) == ["q", "a"]


def test_an_unknown_target_names_it_and_the_dataset_s_targets():
    with pytest.raises(ConfigError, match=r"agiqa3k has no target 'aesthetics'; its targets: quality, alignment"):
        resolve_targets(DataSection(dataset="agiqa3k", target="quality,aesthetics"))


@pytest.mark.parametrize("target, message", [
    ("quality,,alignment", "empty target"), ("quality,quality", "quality more than once"),
    ("all,quality", "cannot be combined"),
])
def test_malformed_target_lists_are_refused(target, message):
    with pytest.raises(ConfigError, match=message):
        target_names(target)


def test_target_weights_must_name_the_run_s_targets(synth_root, tmp_path):
    with pytest.raises(ConfigError, match="optim.target_weights names colour"):
        build_module(resolve_experiment(multi_config(synth_root, tmp_path, target_weights={"colour": 1.0})))
    with pytest.raises(ConfigError, match="multi-target runs"):
        build_module(resolve_experiment(multi_config(synth_root, tmp_path, target="quality",
                                                     target_weights={"quality": 2.0})))
    with pytest.raises(ConfigError, match="single output"):
        build_module(resolve_experiment(TrainConfig.from_dict({**multi_config(synth_root, tmp_path).to_dict(),
                                                               "model": {"name": "test_maniqa"}})))


def test_batches_carry_one_mos_column_per_target(synth_root, tmp_path):
    datamodule = AGIQADataModule(resolve_experiment(multi_config(synth_root, tmp_path)))
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    labels = pd.read_csv(synth_root / "data.csv")
    rows = batch["row"].numpy()
    assert batch["mos"].shape == (len(rows), 2)
    np.testing.assert_allclose(batch["mos"].numpy(), labels[["mos_quality", "mos_align"]].to_numpy()[rows], rtol=1e-6)


def test_weighted_loss_is_the_weighted_sum_of_per_target_losses(synth_root, tmp_path):
    module = build_module(resolve_experiment(multi_config(synth_root, tmp_path, loss="l1",
                                                          target_weights={"alignment": 0.25})))
    prediction, mos = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[2.0, 0.0], [3.0, 0.0]])
    assert float(module.weighted_loss(module.target_losses(prediction, mos))) == pytest.approx(0.5 + 0.25 * 3.0)


def test_train_evaluate_and_score_a_two_target_model(synth_root, tmp_path):
    metrics = train(multi_config(synth_root, tmp_path), progress=False)
    run = tmp_path / "run"
    assert list(metrics["per_target"]) == metrics["targets"] == TARGETS
    assert set(metrics["per_target"]["quality"]) == set(metrics["overall"])
    assert metrics["overall"] == metrics["per_target"]["quality"]
    predictions = pd.read_csv(run / "predictions.csv")
    assert {"mos_quality", "prediction_quality", "mos_alignment", "prediction_alignment"} <= set(predictions.columns)
    assert not {"mos", "prediction"} & set(predictions.columns)
    labels = pd.read_csv(synth_root / "data.csv").set_index("name").loc[predictions["name"]]
    np.testing.assert_allclose(predictions["mos_alignment"], labels["mos_align"], rtol=1e-6)
    report = (run / "report.md").read_text()
    assert "| quality | 12 |" in report and "| alignment | 12 |" in report
    assert {"prediction_quality", "prediction_alignment"} <= set(pd.read_csv(run / "val_predictions.csv").columns)
    assert json.loads((run / "model" / "config.json").read_text())["targets"] == TARGETS

    assert main(["evaluate", str(run / "model"), "--dataset", "agiqa3k", "--root", str(synth_root),
                 "--split-file", str(run / "split.json"), "--out", str(tmp_path / "eval"), "--precision", "fp32"]) == 0
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    for target in TARGETS:
        np.testing.assert_allclose(evaluated[f"prediction_{target}"], predictions[f"prediction_{target}"], atol=1e-5)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_target"] == metrics["per_target"]

    names = list(predictions["name"][:5])
    out_csv = tmp_path / "scores.csv"
    assert main(["score", str(run / "model"), *[str(synth_root / name) for name in names], "--out", str(out_csv),
                 "--precision", "fp32"]) == 0
    scores = pd.read_csv(out_csv)
    model = create_model("ma_agiqa", pretrained=str(run / "model")).eval()
    images = normalize(torch.stack([resize_image(Image.open(synth_root / name).convert("RGB"), 32) for name in names]))
    with torch.no_grad():
        direct = model(images).numpy()
    assert direct.shape == (5, 2)
    np.testing.assert_allclose(scores["score_quality"], direct[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores["score_alignment"], direct[:, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores["score"], scores["score_quality"])


def test_moe_agiqa_trains_one_expert_output_per_target(synth_root, tmp_path):
    config = TrainConfig.from_dict({
        "model": {"name": "test_moe_agiqa", "kwargs": {"train_crops": 1, "test_crops": 2}},
        "data": {"dataset": "agiqa3k", "root": str(synth_root), "batch_size": 8, "eval_batch_size": 8,
                 "target": "all"},
        "optim": {"lr": 1e-3, "loss": "l1", "target_weights": {"alignment": 2.0}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
        "output_dir": str(tmp_path / "run"),
    })
    metrics = train(config, progress=False)
    assert list(metrics["per_target"]) == TARGETS
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    labels = pd.read_csv(synth_root / "data.csv")
    assert saved["targets"] == TARGETS
    assert saved["label_scale"] == pytest.approx(max(labels["mos_quality"].max(), labels["mos_align"].max()), rel=1e-6)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert {"expert_expert0_quality", "expert_expert0_alignment", "prediction_alignment"} <= set(predictions.columns)


def test_reproduce_and_report_show_every_target_beside_single_target_runs(synth_root, tmp_path, capsys):
    """`agiqa reproduce` of a two-target config tables each target over seeds; `agiqa report` of that reproduction,
    one of its runs and two single-target runs shows every target, side by side with the single-target models."""
    configs = tmp_path / "configs" / "tiny"
    configs.mkdir(parents=True)
    multi_config(synth_root, tmp_path, target="quality").to_yaml(configs / "agiqa3k.yaml")
    repro = tmp_path / "repro"
    assert main(["reproduce", "tiny", "--dataset", "agiqa3k", "--configs-dir", str(tmp_path / "configs"),
                 "--root", str(synth_root), "--seeds", "2", "--splits", "official",
                 "--set", "data.target=quality,alignment", "--out", str(repro)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((repro / "runs.json").read_text())["splits"]["official"]
    seeds = [json.loads((repro / "official" / f"seed{seed}" / "metrics.json").read_text()) for seed in (20, 21)]
    assert list(summary["per_target"]) == TARGETS
    for target in TARGETS:
        srcc = [seed["per_target"][target]["srcc"] for seed in seeds]
        assert summary["per_target"][target]["summary"]["srcc"]["mean"] == pytest.approx(np.mean(srcc))
        assert summary["per_target"][target]["summary"]["srcc"]["std"] == pytest.approx(np.std(srcc, ddof=1))
        assert f"| {target} | {np.mean(srcc):.4f} ± {np.std(srcc, ddof=1):.4f} |" in printed
    assert "Target `quality` (the model's first)" in printed
    assert "| target | official split SRCC | official split PLCC |" in printed

    singles = {}
    for target in TARGETS:
        config = multi_config(synth_root, tmp_path / target, target=target)
        config.data.split_file = str(repro / "official" / "seed20" / "split.json")  # the same test images
        train(config, progress=False)
        singles[target] = tmp_path / target / "run"
    multi = repro / "official" / "seed20"
    out = tmp_path / "report"
    assert main(["report", str(multi), str(singles["quality"]), str(singles["alignment"]), str(repro),
                 "--out", str(out), "--worst", "2"]) == 0
    side_by_side = pd.read_csv(out / "tables" / "all-overall.csv", index_col=0)
    assert list(side_by_side.index) == ["seed20 · quality", "seed20 · alignment", "run · quality", "run · alignment"]
    assert list(side_by_side["target"]) == TARGETS * 2
    predictions = pd.read_csv(multi / "predictions.csv")
    for target in TARGETS:
        expected = compute_metrics(predictions[f"prediction_{target}"], predictions[f"mos_{target}"])
        assert side_by_side.loc[f"seed20 · {target}", "srcc"] == pytest.approx(expected["srcc"])
        single = pd.read_csv(singles[target] / "predictions.csv")
        assert sorted(single["name"]) == sorted(predictions["name"])
        assert side_by_side.loc[f"run · {target}", "rmse"] == pytest.approx(
            compute_metrics(single["prediction"], single["mos"])["rmse"])
    page = (out / "report.html").read_text()
    assert 'id="run2-scatter"' in page and "Target: <code>alignment</code>" in page  # each target has its sections
    per_target = pd.read_csv(out / "tables" / "run5-per-target.csv", index_col=0)
    assert list(per_target.index) == TARGETS
    assert per_target.loc["alignment", "official split SRCC"] == (
        f"{summary['per_target']['alignment']['summary']['srcc']['mean']:.4f} ± "
        f"{summary['per_target']['alignment']['summary']['srcc']['std']:.4f}")
