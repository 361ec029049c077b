"""The CLI answers user mistakes with one line naming the problem (exit code 2), never a traceback; -v adds it."""
from __future__ import annotations

import sys
import urllib.error

import pytest
import torch
from PIL import Image

from agiqa.cli import main
from tests.robustness._cli import one_error_line


@pytest.fixture()
def place(tmp_path):
    Image.new("RGB", (40, 40), (90, 120, 200)).save(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    return tmp_path


def _offline_download(*args, **kwargs):
    raise urllib.error.URLError("offline (test)")


MISTAKES = {
    "missing config file": (["train", "-c", "{t}/nope.yaml", "--out", "{t}/o"], "nope.yaml"),
    "unknown config key": (["train", "-c", "moe_agiqa/synth_tiny", "--set", "data.nope=1", "--out", "{t}/o"],
                           "unknown key(s) in config.data: nope"),
    "wrong config type": (["train", "-c", "moe_agiqa/synth_tiny", "--set", "data.batch_size=abc", "--out", "{t}/o"],
                          "config.data.batch_size must be int"),
    "dataset root without labels": (["train", "-c", "ma_agiqa/agiqa3k", "--set", "data.root={t}/empty",
                                     "--out", "{t}/o"], "label file not found"),
    "prior root without labels": (["pretrain-prior", "--root", "{t}/empty", "--out", "{t}/o"], "label file not found"),
    "weights offline": (["score", "maniqa.koniq10k", "{t}/x.png", "--device", "cpu"], "Could not get weights"),
    "weights file missing": (["score", "maniqa.koniq10k", "{t}/x.png", "--weights", "{t}/w.pt"], "w.pt"),
    "not a model directory": (["score", "{t}/empty", "{t}/x.png"], "has no config.json"),
    "evaluate without a model": (["evaluate", "{t}/nomodel", "--dataset", "agiqa3k", "--root", "{t}/empty",
                                  "--out", "{t}/o"], "nomodel"),
    "serve without the extra": (["serve", "{t}/empty"], "pip install 'agiqa[serve]'"),
    "unwritable output": (["synth", "--out", "{t}/x.png/sub", "--n", "4"], "x.png"),
    "missing checkpoint": (["models", "convert", "{t}/best.pth", "{t}/o", "--model", "moe_agiqa"], "best.pth"),
    "unknown packaged config": (["configs", "show", "nope"], "no packaged experiment config 'nope'"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_user_mistake_is_one_line_and_exit_code_2(case, place, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline_download)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the [serve] extra is not installed
    argv, expected = MISTAKES[case]
    code = main([arg.format(t=place) for arg in argv])
    err = capsys.readouterr().err
    assert expected in one_error_line(code, err), err


def test_verbose_shows_the_traceback(place, capsys):
    assert main(["-v", "score", str(place / "empty"), str(place / "x.png")]) == 2
    assert "Traceback" in capsys.readouterr().err
