"""`agiqa score` and `agiqa serve` answer first-contact mistakes (issue #33) with one `error:` line naming the problem
and the fix, exit code 2, no traceback, and leave nothing behind: a mistake writes no output folder, manifest or
table, so the corrected command is never refused as "another setup"."""
from __future__ import annotations

import os
import socket

import pytest
import torch
from PIL import Image

from agiqa.cli import main
from tests.robustness._cli import one_error_line
from agiqa.models import create_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A training run folder holding its model/, a model with semantic experts (needs an encoder), a MoE-AGIQA
    (no per-patch scores), a Lightning checkpoint file and a run folder without a model."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "run" / "model")
    create_model("test_ma_agiqa").save_pretrained(root / "semantic")
    create_model("test_moe_agiqa").save_pretrained(root / "moe")
    (root / "best.ckpt").write_bytes(b"not really a checkpoint")
    (root / "unfinished_run" / "checkpoints").mkdir(parents=True)
    return root


@pytest.fixture()
def place(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 120, 200)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a scoring output")
    return tmp_path


def _no_server(*args, **kwargs):
    raise AssertionError("the mistake was not caught: uvicorn.run was reached")


SCORE = ["score", "--device", "cpu", "--precision", "fp32", "--workers", "0"]
MISTAKES = {
    # the model
    "model path with a typo": (["{m}/run/modle", "{t}/images", "--out", "{t}/s.csv"],
                               "model folder {m}/run/modle does not exist (did you mean {m}/run/model?)"),
    "misspelt registered name": (["manqa", "{t}/images", "--out", "{t}/s.csv"],
                                 "unknown model 'manqa': no such folder here and not a registered name; did you "
                                 "mean maniqa"),
    "unknown weights tag": (["maniqa.konq10k", "{t}/images", "--out", "{t}/s.csv"],
                            "unknown weights 'maniqa.konq10k'; maniqa has: maniqa.kadid10k, maniqa.koniq10k"),
    "run folder without a model": (["{m}/unfinished_run", "{t}/images", "--out", "{t}/s.csv"],
                                   "unfinished_run has no config.json"),
    "training checkpoint as the model": (["{m}/best.ckpt", "{t}/images", "--out", "{t}/s.csv"],
                                         "a Lightning training checkpoint: score the run's model/ folder"),
    "--weights with a model folder": (["{m}/run/model", "{t}/images", "--weights", "{m}/best.ckpt", "--out",
                                       "{t}/s.csv"], "--weights is for a registered model name"),
    "semantic model without an encoder": (["{m}/semantic", "{t}/images", "--out", "{t}/s.csv"],
                                          "pass encoder=<VLM id or directory> (CLI: --encoder)"),
    # the inputs
    "empty input folder": (["{m}/run/model", "{t}/empty", "--out", "{t}/s.csv"],
                           "no images found in {t}/empty (folders are searched recursively for .bmp"),
    "input folder with a typo": (["{m}/run/model", "{t}/imagse", "--out", "{t}/s.csv"],
                                 "input {t}/imagse does not exist (did you mean {t}/images?)"),
    # the output and the options
    "--out with an unknown suffix": (["{m}/run/model", "{t}/images", "--out", "{t}/scores.txt"],
                                     "--out {t}/scores.txt: unknown output type '.txt'; write a .csv, .parquet or "
                                     ".jsonl file"),
    "--out .json": (["{m}/run/model", "{t}/images", "--out", "{t}/scores.json"], ".jsonl: one JSON object per line"),
    "--out a folder of other files": (["{m}/run/model", "{t}/images", "--out", "{t}/notes"],
                                      "notes is not empty and is not a scoring output"),
    "--batch-size 0": (["{m}/run/model", "{t}/images", "--batch-size", "0", "--out", "{t}/s.csv"],
                       "--batch-size must be at least 1, got 0"),
    "--block-size 0": (["{m}/run/model", "{t}/images", "--block-size", "0", "--out", "{t}/s.csv"],
                       "--block-size must be at least 1, got 0"),
    "--workers -1": (["{m}/run/model", "{t}/images", "--workers", "-1", "--out", "{t}/s.csv"],
                     "--workers must be 0"),
    "--device gpu": (["{m}/run/model", "{t}/images", "--device", "gpu", "--out", "{t}/s.csv"],
                     "--device gpu: not a device; use auto, cpu, cuda or cuda:N"),
    "--group-by an unknown column": (["{m}/run/model", "{t}/images", "--group-by", "promt", "--out", "{t}/s.csv"],
                                     "--group-by 'promt': no such column (columns: image, prompt, score"),
    "--explain without per-patch scores": (["{m}/moe", "{t}/images", "--prompt", "a cat", "--explain", "{t}/heat",
                                            "--out", "{t}/s.csv"], "has no per-patch scores to draw"),
}
if not torch.cuda.is_available():
    MISTAKES["--device cuda without a GPU"] = (["{m}/run/model", "{t}/images", "--device", "cuda", "--out",
                                                "{t}/s.csv"], "--device cuda: no CUDA GPU is available here")

SERVE_MISTAKES = {
    "serve: model path with a typo": (["{m}/run/modle"], "model folder {m}/run/modle does not exist"),
    "serve: misspelt registered name": (["maniqa.koniq"], "unknown weights 'maniqa.koniq'"),
    "serve: queue smaller than one request": (["{m}/run/model", "--max-queue", "8"],
                                              "--max-queue (8) must hold one full request (--max-images 64)"),
    "serve: port out of range": (["{m}/run/model", "--port", "80000"], "--port must be 1..65535, got 80000"),
    "serve: zero upload limit": (["{m}/run/model", "--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    "serve: --device gpu": (["{m}/run/model", "--device", "gpu"], "--device gpu: not a device"),
}


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), folder) for root, dirs, files in os.walk(folder)
            for name in dirs + files}


def _one_error_line(code: int, err: str, expected: str) -> None:
    assert expected in one_error_line(code, err), err


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_score_mistake_is_one_line_exit_2_and_writes_nothing(case, models, place, capsys):
    argv, expected = MISTAKES[case]
    before = _files(place)
    code = main(SCORE + [arg.format(m=models, t=place) for arg in argv])  # the case's options win
    _one_error_line(code, capsys.readouterr().err, expected.format(m=models, t=place))
    assert _files(place) == before  # no output folder, .parts, manifest, table or heat-map folder


@pytest.mark.parametrize("case", sorted(SERVE_MISTAKES))
def test_serve_mistake_is_one_line_before_the_model_loads(case, models, capsys, monkeypatch):
    import uvicorn

    from agiqa.scoring import scorer as scorer_module

    monkeypatch.setattr(uvicorn, "run", _no_server)
    monkeypatch.setattr(scorer_module.Scorer, "__init__", _no_server)  # caught before any model is loaded
    argv, expected = SERVE_MISTAKES[case]
    code = main(["serve"] + [arg.format(m=models) for arg in argv])
    _one_error_line(code, capsys.readouterr().err, expected.format(m=models))


def test_serve_on_a_port_in_use_says_so_before_loading_the_model(models, capsys, monkeypatch):
    import uvicorn

    from agiqa.scoring import scorer as scorer_module

    monkeypatch.setattr(uvicorn, "run", _no_server)
    monkeypatch.setattr(scorer_module.Scorer, "__init__", _no_server)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", str(models / "run" / "model"), "--port", str(port)])
    _one_error_line(code, capsys.readouterr().err, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("mistake", ["model path with a typo", "empty input folder", "input folder with a typo",
                                     "semantic model without an encoder", "--explain without per-patch scores"])
def test_the_corrected_command_with_the_same_out_succeeds(mistake, models, place, capsys):
    """The retry of issue #33: the failed command left nothing, so the fixed one with the same --out is not refused
    as "another setup"."""
    fixed = {"model path with a typo": ["{m}/run/model", "{t}/images"],
             "empty input folder": ["{m}/run/model", "{t}/images"],
             "input folder with a typo": ["{m}/run/model", "{t}/images"],
             "semantic model without an encoder": ["{m}/run/model", "{t}/images"],
             "--explain without per-patch scores": ["{m}/moe", "{t}/images", "--prompt", "a cat"]}[mistake]
    argv, _ = MISTAKES[mistake]
    assert main(SCORE + [arg.format(m=models, t=place) for arg in argv]) == 2
    out = str(place / "s.csv")
    assert main(SCORE + [arg.format(m=models, t=place) for arg in fixed] + ["--out", out]) == 0
    err = capsys.readouterr().err
    assert "another setup" not in err and os.path.isfile(out) and not os.path.exists(out + ".parts")
