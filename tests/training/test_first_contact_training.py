"""First contact with training (issue #33), the way a user meets it: the README's two synthetic lines train, the
trained folder loads under the architecture name the log prints, `agiqa evaluate` gives the run's own numbers, a
log gets one line per epoch, and the model folder records its training MOS distribution for percentiles."""
from __future__ import annotations

import json
import re
import types

import numpy as np
import pandas as pd
import pytest
import torch

from agiqa.cli import main
from agiqa.data import load_dataset
from agiqa.errors import AgiqaError
from agiqa.models import create_model
from agiqa.models._card import MOS_DISTRIBUTION_FILE
from agiqa.training.resolve import recorded_precision
from agiqa.training.run import training_mos_distribution

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss \d+\.\d{4}  val SRCC -?\d\.\d{4}  elapsed \S+( \S+)?  "
                        r"ETA \S+( \S+)?$")


def _synth(out, n: int = 120) -> None:
    assert main(["synth", "--out", str(out), "--n", str(n), "--image-size", "32", "--seed", "0"]) == 0


def test_readme_synthetic_lines_train_and_evaluate_reproduces_the_runs_numbers(tmp_path, capsys):
    """README: `agiqa synth ...` then `agiqa train -c demo --set data.root=... --set "model.kwargs.semantic_experts=[]"`
    (here 120 images, 1 epoch). `agiqa evaluate` of that model on the run's split gives the same metrics and, to
    1e-6, the same predictions: it scores in the precision the run tested in (fp32 here), where "auto" used to
    pick bf16 on CPUs with AMX / AVX512-BF16 (SRCC 0.2002 vs 0.1987). Both metrics.json say which precision."""
    data, run, evaluated = tmp_path / "synth", tmp_path / "run", tmp_path / "eval"
    _synth(data)
    assert main(["train", "-c", "demo", "--set", f"data.root={data}", "--set", "model.kwargs.semantic_experts=[]",
                 "--set", "trainer.max_epochs=1", "--out", str(run)]) == 0
    assert main(["evaluate", str(run / "model"), "--dataset", "agiqa3k", "--root", str(data), "--split-file",
                 str(run / "split.json"), "--out", str(evaluated)]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    again = json.loads((evaluated / "metrics.json").read_text())
    assert trained["precision"] == again["precision"] == "fp32"  # the demo config trains in 32-true
    assert again["overall"] == trained["overall"] and again["per_generator"] == trained["per_generator"]
    ours, theirs = pd.read_csv(run / "predictions.csv"), pd.read_csv(evaluated / "predictions.csv")
    assert list(ours["name"]) == list(theirs["name"])
    np.testing.assert_allclose(theirs["prediction"], ours["prediction"], rtol=0, atol=1e-6)

    # `--subset all` scores every row of the data (it used to score the split's test part all the same).
    assert main(["evaluate", str(run / "model"), "--dataset", "agiqa3k", "--root", str(data), "--subset", "all",
                 "--out", str(tmp_path / "eval_all")]) == 0
    every = json.loads((tmp_path / "eval_all" / "metrics.json").read_text())
    assert every["n_scored"] == every["n_test"] == 120
    every_row = pd.read_csv(tmp_path / "eval_all" / "predictions.csv")
    assert sorted(every_row["name"]) == sorted(load_dataset("agiqa3k", data)["name"])
    np.testing.assert_allclose(every_row.set_index("name").loc[ours["name"], "prediction"], ours["prediction"],
                               rtol=0, atol=1e-6)  # the test part's rows keep their scores

    # The folder loads under the name the training log prints, with its own config (4 px patches, not the
    # registered tiny model's 8), where it used to fail with a shape mismatch.
    model = create_model("test_ma_agiqa", pretrained=str(run / "model"))
    assert model.config.patch_size == 4

    # The training MOS distribution travels with the model: 101 quantiles of the training part's labels.
    distribution = json.loads((run / "model" / MOS_DISTRIBUTION_FILE).read_text())
    labels = load_dataset("agiqa3k", data)["mos"].to_numpy()
    train_rows = json.loads((run / "split.json").read_text())["train"]
    np.testing.assert_allclose(distribution["mos_quantiles"], np.quantile(labels[train_rows], np.linspace(0, 1, 101)),
                               rtol=1e-12, atol=0)
    assert len(distribution["mos_quantiles"]) == 101
    assert distribution["mos_range"] == [labels[train_rows].min(), labels[train_rows].max()]
    assert distribution["n_images"] == len(train_rows) == 84 and distribution["dataset"] == "agiqa3k"
    assert distribution["target"] == "quality" and "per_target" not in distribution
    card = (run / "model" / "README.md").read_text()
    assert f"- training MOS (quality): min {labels[train_rows].min():.4g}" in card
    try:  # the scorer's reader, where it is installed, takes the file as it is
        from agiqa.scoring.distribution import DISTRIBUTION_FILE, ScoreDistribution
    except ImportError:
        return
    assert DISTRIBUTION_FILE == MOS_DISTRIBUTION_FILE
    assert ScoreDistribution.from_dict(distribution, MOS_DISTRIBUTION_FILE).has_percentile


def test_train_and_demo_write_one_line_per_epoch_to_a_log_and_no_leafspec_warning(tmp_path, capsys, recwarn):
    """stdout that is not a terminal (CI, nohup, a cluster job's log) gets one line per epoch (epoch, mean training
    loss, validation SRCC, elapsed, ETA) and no progress bar; Lightning's `isinstance(treespec, LeafSpec)`
    deprecation warning no longer shows on every run."""
    data = tmp_path / "synth"
    _synth(data)
    capsys.readouterr()
    assert main(["train", "-c", "demo", "--set", f"data.root={data}", "--set", "model.kwargs.semantic_experts=[]",
                 "--set", "trainer.max_epochs=2", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(line).group(1, 2) for line in lines] == [("1", "2"), ("2", "2")], out
    assert lines[-1].endswith("ETA 0s") and "━" not in out
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]

    assert main(["demo", "--n", "60", "--epochs", "2", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(line).group(1, 2) for line in lines] == [("1", "2"), ("2", "2")], out
    assert out.index("Training MA-AGIQA") < out.index("epoch 1/2") < out.index("Test metrics")
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]


def test_create_model_loads_a_saved_folder_with_its_own_config(tmp_path):
    """`create_model("test_moe_agiqa", pretrained=run/model)` of a model trained with moe_agiqa/synth_tiny (4 px
    patches, not test_moe_agiqa's 8) builds the folder's model, not the registered defaults (a shape-mismatch
    traceback before); explicit kwargs still override; another family's folder is one clear error."""
    torch.manual_seed(0)
    saved = create_model("test_moe_agiqa", patch_size=4, freeze_vits=False, vit_input_normalize=True,
                         semantic_freeze_ratio=0.0, train_crops=1, test_crops=5)
    folder = tmp_path / "model"
    saved.save_pretrained(folder)
    loaded = create_model("test_moe_agiqa", pretrained=str(folder))
    assert loaded.config == saved.config
    state, expected = loaded.state_dict(), saved.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[key], expected[key]) for key in expected)
    assert create_model("test_moe_agiqa", pretrained=str(folder), test_crops=2).config.test_crops == 2
    with pytest.raises(AgiqaError, match=r"holds a moe_agiqa model .*not test_maniqa; load it with "
                                         r"create_model\(saved_architecture"):
        create_model("test_maniqa", pretrained=str(folder))


def test_a_multi_target_model_records_every_targets_distribution():
    """Several targets: `mos_quantiles` / `mos_range` are the first target's (the `score` column the scorer gives
    a percentile), `per_target` holds each target's 101 quantiles and range."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"mos_quality": rng.normal(3, 1, 50), "mos_alignment": rng.uniform(1, 5, 50)})
    frame["mos"] = frame["mos_quality"]
    frame.attrs.update(targets=["quality", "alignment"], dataset="agiqa3k")
    train_rows = list(range(5, 40))
    datamodule = types.SimpleNamespace(fit_data=types.SimpleNamespace(frame=frame, split=types.SimpleNamespace(
        train=train_rows)), config=types.SimpleNamespace(dataset="agiqa3k"))
    distribution = training_mos_distribution(datamodule, ["quality", "alignment"])
    for target in ("quality", "alignment"):
        labels = frame[f"mos_{target}"].to_numpy()[train_rows]
        part = distribution["per_target"][target]
        np.testing.assert_allclose(part["mos_quantiles"], np.quantile(labels, np.linspace(0, 1, 101)), rtol=1e-12)
        assert part["mos_range"] == [labels.min(), labels.max()]
    assert distribution["mos_quantiles"] == distribution["per_target"]["quality"]["mos_quantiles"]
    assert distribution["target"] == "quality" and distribution["n_images"] == 35


def test_evaluate_finds_the_precision_of_runs_from_before_it_was_recorded(tmp_path):
    """A run's model/: the run's metrics.json `precision`, else its config.yaml `trainer.precision` ("32-true" ->
    fp32); a folder outside a run, or a run that says nothing: None ("auto" then decides)."""
    folder = tmp_path / "run" / "model"
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(folder)
    assert recorded_precision(folder) is None
    (tmp_path / "run" / "config.yaml").write_text("trainer:\n  precision: auto\n")
    assert recorded_precision(folder) is None
    (tmp_path / "run" / "config.yaml").write_text("trainer:\n  precision: 32-true\n")
    assert recorded_precision(folder) == "fp32"
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"precision": "bf16"}))
    assert recorded_precision(folder) == "bf16"
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "elsewhere")
    (tmp_path / "metrics.json").write_text(json.dumps({"precision": "bf16"}))  # not a run: not read
    assert recorded_precision(tmp_path / "elsewhere") is None
