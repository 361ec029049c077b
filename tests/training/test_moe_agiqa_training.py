"""MoE-AGIQA as a user drives it: train / evaluate / score on synthetic data, the prior pre-training, quirks."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.data.synth import generate_synthetic
from agiqa.models import create_model
from agiqa.training.config import TrainConfig
from agiqa.training.datamodule import AGIQADataModule
from agiqa.training.resolve import resolve_experiment
from agiqa.training.run import processing, train


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, n=50, seed=4, image_size=40)
    return root


def moe_config(root, out, **kwargs) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"name": "test_moe_agiqa", "kwargs": {"train_crops": 2, "test_crops": 3, **kwargs}},
        "data": {"dataset": "agiqa3k", "root": str(root), "batch_size": 8, "eval_batch_size": 8},
        "optim": {"lr": 1e-3, "loss": "l1"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
        "output_dir": str(out / "run"),
    })


def test_samples_carry_crops_prompt_image_and_tokens_and_eval_crops_repeat(synth_root, tmp_path):
    config = moe_config(synth_root, tmp_path)
    model = create_model("test_moe_agiqa", train_crops=2, test_crops=3)
    datamodule = AGIQADataModule(resolve_experiment(config), **processing(model))  # trainer.seed 0
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["crops"].shape == (8, 2, 3, 32, 32) and batch["prompt_image"].shape == (8, 3, 224, 224)[:2] + (32, 32)
    assert batch["input_ids"].shape == (8, 16) and batch["crops"].min() >= 0 and batch["crops"].max() <= 1
    first, again = (next(iter(datamodule.val_dataloader())) for _ in range(2))
    assert first["crops"].shape[1] == 3 and torch.equal(first["crops"], again["crops"])  # seeded per row


def test_train_evaluate_and_score_moe_agiqa_like_a_user(synth_root, tmp_path, capsys):
    config = moe_config(synth_root, tmp_path)
    config_path = tmp_path / "moe.yaml"
    config.to_yaml(config_path)
    assert main(["train", "-c", str(config_path), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_scored"] == metrics["n_test"] == 10 and metrics["epoch_selected_on"] == "val"
    saved = json.loads((run / "model" / "config.json").read_text())
    mos = pd.read_csv(synth_root / "data.csv")["mos_quality"]
    assert saved["label_scale"] == pytest.approx(mos.max(), rel=1e-6)  # MOS / max MOS, as released
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions["prediction"].abs().max() < 3 * mos.max()  # back on the MOS scale, not in [0, 1] units

    assert main(["evaluate", str(run / "model"), "--dataset", "agiqa3k", "--root", str(synth_root),
                 "--split-file", str(run / "split.json"), "--out", str(tmp_path / "eval"), "--precision", "fp32"]) == 0
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    merged = evaluated.merge(predictions, on="name", suffixes=("_eval", "_train"))
    np.testing.assert_allclose(merged["prediction_eval"], merged["prediction_train"], rtol=1e-5, atol=1e-5)

    prompts = tmp_path / "prompts.csv"
    frame = pd.read_csv(synth_root / "data.csv").head(6)
    listed = pd.concat([frame[["name", "prompt"]], pd.DataFrame({"name": ["broken.png"], "prompt": ["one red star"]})])
    listed.rename(columns={"name": "image"}).to_csv(prompts, index=False)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in frame["name"]:
        (folder / name).write_bytes((synth_root / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    out_csv = tmp_path / "scores.csv"
    code = main(["score", str(run / "model"), str(folder), "--prompts", str(prompts), "--out", str(out_csv),
                 "--precision", "fp32"])
    scores = pd.read_csv(out_csv)
    assert code == 1 and scores["score"].notna().sum() == 6 and len(scores) == 7  # the broken file is reported
    by_name = dict(zip(scores["image"].map(lambda p: p.split("/")[-1]), scores["score"]))
    # One image, one score: `agiqa score`, `agiqa evaluate` and the Python API take the same seeded test crops.
    model = create_model("moe_agiqa", pretrained=str(run / "model"))
    images = [Image.open(folder / n).convert("RGB") for n in frame["name"]]
    direct = model.score(images, list(frame["prompt"])).numpy()
    np.testing.assert_allclose([by_name[n] for n in frame["name"]], direct, rtol=1e-5, atol=1e-5)
    in_eval = evaluated.set_index("name")["prediction"]
    shared = [n for n in frame["name"] if n in in_eval.index]
    np.testing.assert_allclose([in_eval[n] for n in shared], [by_name[n] for n in shared], rtol=1e-5, atol=1e-5)


def test_official_quirks_select_the_epoch_on_test_and_say_so(synth_root, tmp_path):
    config = moe_config(synth_root, tmp_path)
    config.official_quirks = True
    metrics = train(config, progress=False)
    assert metrics["epoch_selected_on"].startswith("test")


def test_score_without_prompts_is_a_clear_error(synth_root, tmp_path):
    model = create_model("test_moe_agiqa")
    from agiqa.errors import AgiqaError
    from agiqa.scoring.scorer import Scorer

    with pytest.raises(AgiqaError, match="prompts"):
        Scorer(model, precision="fp32").score([Image.new("RGB", (40, 40))])


def test_pretrain_prior_writes_the_file_moe_agiqa_loads(tmp_path):
    root = tmp_path / "koniq"
    (root / "1024x768").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        name = f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(root / "1024x768" / name)
        rows.append({"image_name": name, "MOS": float(rng.uniform(1, 5)), "MOS_zscore": 0.0})
    pd.DataFrame(rows).to_csv(root / "koniq10k_scores_and_distributions.csv", index=False)
    out = tmp_path / "prior"
    code = main(["pretrain-prior", "--root", str(root), "--out", str(out), "--set", "model.name=test_moe_agiqa_prior",
                 "--set", "model.kwargs.backbone_pretrained=false", "--set", "trainer.max_epochs=1",
                 "--set", "trainer.accelerator=cpu", "--set", "data.batch_size=8", "--set", "data.num_workers=0",
                 "--set", "trainer.precision=32-true"])
    assert code == 0
    prior = torch.load(out / "prior.pth", weights_only=True)
    assert set(prior) == {"vit_model_state_dict", "regressor_model_state_dict"}
    assert "blocks.0.attn.qkv.weight" in prior["vit_model_state_dict"]
    model = create_model("test_moe_agiqa", prior_checkpoint=str(out / "prior.pth"))
    torch.testing.assert_close(model.prior_vit.cls_token, prior["vit_model_state_dict"]["cls_token"])


def test_reproduce_table_says_moe_agiqa_has_no_published_numbers():
    from agiqa.training.reproduce import results_table

    summary = {key: {"mean": 0.5, "std": 0.01} for key in ("srcc", "plcc", "krcc", "rmse")}
    table = results_table("moe_agiqa", "agiqa3k", {"official": {"summary": summary}}, 3)
    rows = [line for line in table.splitlines() if line.startswith("| SRCC") or line.startswith("| RMSE")]
    assert rows and all(line.endswith("| — |") for line in rows)
    assert "publishes none" in table and "arXiv" not in table


@pytest.mark.slow
def test_tiny_moe_agiqa_learns_quality_and_alignment_at_once(tmp_path):
    """The packaged `moe_agiqa/synth_tiny` experiment as a user runs it, with two targets: the whole tiny architecture
    (degradation and prior ViTs, BLIP text encoder on the prompt image, cross-attention, top-3 of 4 experts, one
    output per target) from scratch on 6,000 synthetic images, ~5 min on 2 cores (16 epochs). No prompt mismatches
    here, so both targets are driven by what is in the pixels: quality by every degradation, alignment by blur and
    noise alone (docs/data.md), with rater noise 0.2 so that its many ties at the top are not ordered by chance."""
    data = tmp_path / "synth"
    agiqa = [sys.executable, "-m", "agiqa"]  # fresh processes: nothing another test set (threads, seeds) leaks in
    subprocess.run([*agiqa, "synth", "--out", str(data), "--n", "6000", "--image-size", "40", "--mismatch-rate", "0",
                    "--rater-noise", "0.2"], check=True, capture_output=True)
    subprocess.run([*agiqa, "train", "-c", "moe_agiqa/synth_tiny", "--set", f"data.root={data}",
                    "--set", "data.target=quality,alignment", "--out", str(tmp_path / "run")],
                   check=True, capture_output=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_scored"] == metrics["n_test"] == 1200
    per_target = metrics["per_target"]
    # Measured (docs/moe_agiqa.md): quality 0.880, alignment 0.727; single-target models of the same recipe 0.864
    # and 0.734. Alignment stays lower because an image model that mistakes the median filter's smoothing for blur
    # is capped near 0.73 on this target (docs/data.md): the 0.8 the issue asked for is not reached.
    assert per_target["quality"]["srcc"] >= 0.85
    assert per_target["alignment"]["srcc"] >= 0.65
