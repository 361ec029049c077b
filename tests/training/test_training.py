"""Training, evaluation and reporting end to end on tiny synthetic data (the way `agiqa train` is used)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from agiqa.cli import main
from agiqa.data.synth import generate_synthetic
from agiqa.semantic.cache import FeatureCache, feature_key, sha256_file
from agiqa.semantic.official import official_fingerprint
from agiqa.training.config import TrainConfig
from agiqa.training.datamodule import AGIQADataModule
from agiqa.training.resolve import inference_precision, resolve_experiment
from agiqa.training.run import train

N_IMAGES = 60
METRIC_KEYS = {"srcc", "plcc", "krcc", "rmse", "plcc_raw", "rmse_raw", "n"}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, n=N_IMAGES, seed=3, image_size=32)
    return root


def tiny_config(root, out, **sections) -> TrainConfig:
    data = {"dataset": "agiqa3k", "root": str(root), "image_size": 32, "batch_size": 8, "eval_batch_size": 16,
            "image_cache": str(out / "cache")}
    data.update(sections.pop("data", {}))
    config = {
        "model": {"name": "test_ma_agiqa", "kwargs": {"semantic_experts": []}},
        "data": data,
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
        "output_dir": str(out / "run"),
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(config)


def test_datamodule_never_leaks_test_images_into_train_or_val(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path)
    datamodule = AGIQADataModule(resolve_experiment(config))
    datamodule.setup("fit")
    split = datamodule.fit_data.split
    seen = {part: {int(r) for batch in loader for r in batch["row"]} for part, loader in (
        ("train", datamodule.train_dataloader()), ("val", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader()))}
    assert seen["test"] == set(split.test)  # every test image scored, none dropped
    assert seen["train"] <= set(split.train) and seen["val"] == set(split.val)
    assert not (seen["train"] | seen["val"]) & seen["test"]


def test_train_writes_predictions_metrics_report_and_a_reloadable_model(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path)
    metrics = train(config, progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "split.json", "predictions.csv", "metrics.json", "report.md", "scatter.png",
                 "training_curves.png",
                 "model/model.safetensors", "model/config.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    predictions = pd.read_csv(run / "predictions.csv")
    split = json.loads((run / "split.json").read_text())
    assert len(predictions) == len(split["test"]) == metrics["n_scored"] == metrics["n_test"] == 12
    assert set(predictions["name"]).isdisjoint(set(pd.read_csv(synth_root / "data.csv").iloc[split["train"]]["name"]))
    assert METRIC_KEYS <= set(metrics["overall"])
    assert set(metrics["per_generator"]) <= {"synthA", "synthB", "synthC", "synthD", "synthE"}
    assert "| overall |" in (run / "report.md").read_text()

    exit_code = main(["evaluate", str(run / "model"), "--dataset", "agiqa3k", "--root", str(synth_root),
                      "--split-file", str(run / "split.json"), "--out", str(tmp_path / "eval"), "--precision", "fp32"])
    assert exit_code == 0
    again = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(again["name"]) == list(predictions["name"])
    assert torch.allclose(torch.tensor(again["prediction"].values), torch.tensor(predictions["prediction"].values),
                          atol=1e-5)


def test_official_quirks_drop_the_last_partial_test_batch(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path, official_quirks=True, data={"batch_size": 5})
    metrics = train(config, progress=False)
    assert metrics["n_test"] == 12 and metrics["n_scored"] == 10


def test_resume_continues_the_same_run(synth_root, tmp_path):
    first = tiny_config(synth_root, tmp_path)
    train(first, progress=False)
    steps_per_epoch = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"]
    resumed = tiny_config(synth_root, tmp_path, trainer={"max_epochs": 3})
    train(resumed, resume=True, progress=False)
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == 3 * steps_per_epoch
    # one log folder per session; together they hold epochs 0, 1, 2 once each
    logged = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "run/logs").glob("version_*/metrics.csv")))
    assert sorted(logged.dropna(subset=["val/srcc"])["epoch"].astype(int)) == [0, 1, 2]


def write_feature_cache(root, cache_dir, dim=32, informative=True):
    """A feature cache as `agiqa features` writes it; features encode the true quality when `informative`."""
    frame = pd.read_csv(root / "data.csv")
    meta = pd.read_csv(root / "synth_meta.csv").set_index("name")
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(dim, generator=generator)
    quality = torch.tensor(meta.loc[frame["name"], "true_quality"].values, dtype=torch.float32)
    noise = torch.randn(len(frame), 2, dim, generator=generator)
    features = noise + (quality[:, None, None] * direction if informative else 0)
    cache = FeatureCache.create_or_open(cache_dir, official_fingerprint(dim))
    keys = [feature_key(sha256_file(root / name)) for name in frame["name"]]
    cache.write_shard(keys, list(frame["name"]), features)


def test_ma_agiqa_trains_with_semantic_features_from_the_cache(synth_root, tmp_path):
    write_feature_cache(synth_root, tmp_path / "features", dim=24)
    config = tiny_config(synth_root, tmp_path, model={"name": "test_ma_agiqa", "kwargs": {}},
                         data={"features": {"cache": str(tmp_path / "features")}}, trainer={"max_epochs": 4})
    metrics = train(config, progress=False)
    assert config.model.kwargs["semantic_dim"] == 24  # sized from the cache
    assert metrics["overall"]["srcc"] > 0.5  # the informative LMM feature is used


def test_missing_features_without_an_encoder_is_a_clear_error(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path, model={"name": "test_ma_agiqa", "kwargs": {}},
                         data={"features": {"cache": str(tmp_path / "nowhere")}})
    assert main(["train", "-c", _write_yaml(config, tmp_path)]) == 2


def _write_yaml(config: TrainConfig, tmp_path) -> str:
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    return str(path)


def test_cli_train_with_overrides_and_print_config(synth_root, tmp_path, capsys):
    path = _write_yaml(tiny_config(synth_root, tmp_path), tmp_path)
    assert main(["train", "-c", path, "--set", "optim.lr=0.002", "--print-config"]) == 0
    assert "lr: 0.002" in capsys.readouterr().out
    assert main(["train", "-c", path, "--out", str(tmp_path / "cli_run")]) == 0
    out = capsys.readouterr().out
    assert "SRCC" in out and str(tmp_path / "cli_run") in out


def test_unknown_config_key_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*optim.*lrr"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})


def test_config_values_are_type_checked_and_numeric_strings_read_as_numbers():
    config = TrainConfig.from_dict({"optim": {"lr": "5e-4", "t_max": 10}, "trainer": {"devices": 2},
                                    "data": {"root": 2023}})
    assert config.optim.lr == 5e-4 and config.trainer.devices == 2 and config.data.root == "2023"
    for section, key, value, expected in (("data", "batch_size", "abc", "must be int"),
                                          ("optim", "lr", "fast", "must be float"),
                                          ("trainer", "deterministic", "yes", "must be bool"),
                                          ("data", "batch_size", 2.5, "must be int")):
        with pytest.raises(ValueError, match=f"config.{section}.{key} {expected}, got"):
            TrainConfig.from_dict({section: {key: value}})


@pytest.mark.slow
def test_ddp_with_two_processes_gives_the_same_metrics_format(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path, trainer={"devices": 2, "strategy": "ddp_spawn"})
    metrics = train(config, progress=False)
    assert METRIC_KEYS <= set(metrics["overall"])
    assert metrics["n_scored"] == metrics["n_test"] == 12


@pytest.mark.parametrize("trained, tested", [("32-true", "fp32"), ("32", "fp32"), ("bf16-mixed", "bf16"),
                                             ("bf16-true", "bf16"), ("16-mixed", "fp16")])
def test_a_run_is_tested_in_its_training_precision(trained, tested):
    assert inference_precision(trained) == tested
