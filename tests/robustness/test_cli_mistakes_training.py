"""User mistakes with train, evaluate, reproduce, pretrain-prior and demo: one line naming the problem and what is
accepted (exit code 2), never a traceback, and nothing written that a corrected retry would trip over (issue #33;
the pattern of test_cli_mistakes.py). Each is refused before a model trains or an output folder is made."""
from __future__ import annotations

import json

import pytest
import torch

from agiqa.cli import main
from tests.robustness._cli import one_error_line
from agiqa.data.synth import generate_synthetic
from agiqa.models import create_model


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Synthetic AGIQA-3K data (60 images of 32 px) and saved tiny models: MANIQA expert only, with semantic
    experts, and one whose config.json is damaged."""
    root = tmp_path_factory.mktemp("mistakes")
    generate_synthetic(root / "synth", n=60, seed=1, image_size=32)
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "plain")
    create_model("test_ma_agiqa").save_pretrained(root / "semantic")
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "damaged")
    (root / "damaged" / "config.json").write_text('{"img_size": 32, "patch_size": ')
    return root


@pytest.fixture()
def place(tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  name: test_ma_agiqa\n  kwargs: [unclosed\n")
    return tmp_path


TRAIN = ["train", "-c", "demo", "--set", "data.root={s}/synth", "--out", "{t}/o"]
NO_EXPERTS = ["--set", "model.kwargs.semantic_experts=[]"]
PRIOR = ["pretrain-prior", "--dataset", "agiqa3k", "--root", "{s}/synth", "--out", "{t}/o"]
EVALUATE = ["--dataset", "agiqa3k", "--root", "{s}/synth", "--out", "{t}/o"]

MISTAKES = {
    # train: the model section
    "misspelt model field": ([*TRAIN, "--set", "model.kwargs.patch_sise=4"],
                             "model.kwargs.patch_sise (did you mean model.kwargs.patch_size?)"),
    "misspelt model name": ([*TRAIN, "--set", "model.name=ma_agiqq"],
                            "model.name 'ma_agiqq' is not a registered model: did you mean ma_agiqa"),
    "MA-AGIQA without semantic features": (TRAIN, 'MANIQA-expert-only ablation (paper Table 3, row 1; what `agiqa '
                                           'demo` trains without a VLM): --set "model.kwargs.semantic_experts=[]"'),
    "model kwargs the model refuses": ([*TRAIN, *NO_EXPERTS, "--set", "model.kwargs.use_maniqa=false"],
                                       "test_ma_agiqa cannot be built from model.kwargs {'gate_activation': 'none', "
                                       "'patch_size': 4, 'semantic_experts': [], 'use_maniqa': False}: MA-AGIQA needs "
                                       "at least one expert"),
    "image size the model does not take": ([*TRAIN, *NO_EXPERTS, "--set", "data.image_size=48"],
                                           "data.image_size is 48 but the model takes 32 px images"),
    # train: values refused with what is accepted
    "unknown loss": ([*TRAIN, "--set", "optim.loss=huber"], "optim.loss must be one of mse, l1, smooth_l1; got "
                                                             "'huber'"),
    "unknown trainer precision": ([*TRAIN, "--set", "trainer.precision=fp64"],
                                  "trainer.precision must be one of 32-true, bf16-mixed"),
    "misspelt split method": ([*TRAIN, "--set", "data.split_method=prompt-disjoint"],
                              "data.split_method must be one of official, random, kfold, prompt_disjoint; got "
                              "'prompt-disjoint' (did you mean prompt_disjoint?)"),
    "no epochs": ([*TRAIN, "--set", "trainer.max_epochs=0"], "trainer.max_epochs must be at least 1, got 0"),
    "batch larger than the training part": ([*TRAIN, *NO_EXPERTS, "--set", "data.batch_size=64"],
                                            "the training part of the split has 42 images, fewer than one batch"),
    "unknown trainer strategy": ([*TRAIN, *NO_EXPERTS, "--set", "trainer.strategy=dpp"],
                                 "the trainer section cannot run here (accelerator=cpu, devices=1, strategy=dpp"),
    "misspelt config section key": ([*TRAIN, "--set", "trainer.max_epoch=3"],
                                    "unknown key(s) in config.trainer: max_epoch [max_epoch (did you mean "
                                    "max_epochs?)]"),
    "config file that is not YAML": (["train", "-c", "{t}/bad.yaml", "--out", "{t}/o"],
                                     "bad.yaml is not a YAML experiment config (line 4, column 1)"),
    "override that is not YAML": ([*TRAIN, "--set", "model.kwargs.semantic_experts=[0,"],
                                  "override 'model.kwargs.semantic_experts=[0,': the value is not YAML"),
    # evaluate
    "evaluate a semantic model without features": (["evaluate", "{s}/semantic", *EVALUATE],
                                                   "has semantic experts and needs features of a VLM: pass "
                                                   "--features DIR"),
    "evaluate with a misspelt split method": (["evaluate", "{s}/plain", *EVALUATE, "--split-method", "oficial"],
                                              "--split-method must be one of official, random"),
    "evaluate at a size the model does not take": (["evaluate", "{s}/plain", *EVALUATE, "--image-size", "48"],
                                                   "--image-size is 48 but the model takes 32 px images"),
    "evaluate a damaged model folder": (["evaluate", "{s}/damaged", *EVALUATE],
                                        "damaged/config.json is not valid JSON"),
    # reproduce
    "reproduce no seeds": (["reproduce", "ma-agiqa", "--dataset", "agiqa3k", "--root", "{s}/synth", "--seeds", "0",
                            "--out", "{t}/o"], "--seeds must be at least 1"),
    "reproduce a misspelt model": (["reproduce", "maniqa", "--dataset", "agiqa3k", "--root", "{s}/synth", "--seeds",
                                    "1", "--set", "model.name=test_maniqaa", "--out", "{t}/o"],
                                   "model.name 'test_maniqaa' is not a registered model: did you mean test_maniqa"),
    # pretrain-prior
    "prior of a model that is no prior": ([*PRIOR, "--set", "model.name=test_ma_agiqa"],
                                          "model.name 'test_ma_agiqa' is not a prior network: pretrain-prior trains "
                                          "moe_agiqa_prior"),
    "misspelt prior field": ([*PRIOR, "--set", "model.name=test_moe_agiqa_prior", "--set",
                              "model.kwargs.freeze_ratoi=0.5"],
                             "model.kwargs.freeze_ratoi (did you mean model.kwargs.freeze_ratio?)"),
    # demo
    "demo with too few images": (["demo", "--n", "10", "--out", "{t}/o"], "--n must be at least 30"),
    "demo with no epochs": (["demo", "--epochs", "0", "--out", "{t}/o"], "--epochs must be at least 1, got 0"),
    "demo mismatch rate above 1": (["demo", "--mismatch-rate", "1.5", "--out", "{t}/o"],
                                   "--mismatch-rate must be between 0 and 1, got 1.5"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_training_mistake_is_one_line_exit_code_2_and_writes_nothing(case, shared, place, capsys):
    argv, expected = MISTAKES[case]
    code = main([arg.format(t=place, s=shared) for arg in argv])
    err = capsys.readouterr().err
    assert expected in one_error_line(code, err), err
    assert not (place / "o").exists(), "a refused command left an output folder behind"


def test_a_refused_demo_leaves_nothing_that_blocks_the_corrected_one(place, capsys):
    """The demo reuses the data in OUT/data as it is: a refused `--n 10` must not leave a 10-image data set that
    the corrected command would then train on."""
    out = place / "demo"
    assert main(["demo", "--n", "10", "--out", str(out)]) == 2
    assert main(["demo", "--n", "60", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["n_test"] == 12  # 20 % of the 60 images asked for the second time
    assert "Test metrics (12 held-out images)" in capsys.readouterr().out
