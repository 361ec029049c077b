"""Untrusted files: a pickle whose `__reduce__` would run code is refused by every loader of the package (official
MANIQA / MA-AGIQA / MoE-AGIQA checkpoints, official feature files, training checkpoints, resume), and the payload
provably never runs (its marker folder is never created, though a plain `torch.load` does create it)."""
from __future__ import annotations

import os

import pytest
import torch

from agiqa.cli import main
from agiqa.errors import AgiqaError
from agiqa.models import create_model
from agiqa.models.maniqa import load_official_checkpoint
from agiqa.semantic.official import import_official_features
from agiqa.training.run import load_trained_module, train
from tests.training.test_training import tiny_config


class Payload:
    """Unpickling this calls os.mkdir(marker): harmless, visible proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def evil_file(path, marker, wrap=lambda payload: {"state_dict": {"w": torch.zeros(1)}, "extra": payload}):
    torch.save(wrap(Payload(marker)), path)
    return path


def test_the_payload_is_live(tmp_path):
    """Control: the same file loaded without weights_only runs the payload, so the refusals below mean something."""
    marker = tmp_path / "ran"
    torch.load(evil_file(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.is_dir()


def _refused(call, marker):
    with pytest.raises(AgiqaError, match="refused to load"):
        call()
    assert not marker.exists(), "the pickle's code ran"


def test_official_maniqa_and_ma_agiqa_checkpoints(tmp_path):
    marker = tmp_path / "ran"
    path = evil_file(tmp_path / "ckpt_koniq10k.pt", marker)
    _refused(lambda: load_official_checkpoint(str(path), model=create_model("test_maniqa")), marker)
    _refused(lambda: create_model("test_ma_agiqa", pretrained=str(path)), marker)


@pytest.mark.parametrize("evil_one", ["best", "prior", "vit"])
def test_cli_convert_refuses_each_official_file_in_one_line(evil_one, tmp_path, capsys):
    """`agiqa models convert best.pth OUT --prior prior.pth --degradation-vit vit.pth`: whichever of the three files
    carries the payload is refused in one line (the other two are valid official files), and nothing ran."""
    from tests.models._moe_official import TINY, official_files

    marker = tmp_path / "ran"
    paths = {name: tmp_path / f"{name}.pth" for name in ("best", "prior", "vit")}
    for name, obj in zip(paths, official_files(TINY, seed=3)):
        torch.save(obj, paths[name])
    evil_file(paths[evil_one], marker)
    code = main(["models", "convert", str(paths["best"]), str(tmp_path / "out"), "--model", "test_moe_agiqa",
                 "--prior", str(paths["prior"]), "--degradation-vit", str(paths["vit"])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "refused to load" in lines[0] and f"{evil_one}.pth" in lines[0], err
    assert not marker.exists()


def test_cli_convert_maniqa_refuses_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = evil_file(tmp_path / "ckpt.pth", marker)
    code = main(["models", "convert", str(evil), str(tmp_path / "out"), "--model", "maniqa"])
    err = capsys.readouterr().err
    assert code == 2 and "refused to load" in err and "Traceback" not in err
    assert not marker.exists()


def test_official_feature_files(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"image bytes")
    (tmp_path / "features").mkdir()
    for suffix in ("_semantic_content.pt", "_coherence.pt"):
        evil_file(tmp_path / "features" / f"a{suffix}", marker, wrap=lambda payload: payload)
    report = import_official_features(tmp_path / "features", ["a.png"], tmp_path / "cache", tmp_path / "images")
    assert report.n_failed == 1 and "refused to load" in report.failed[0][1]
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from agiqa.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("untrusted")
    generate_synthetic(root / "data", n=30, seed=0, image_size=32)
    config = tiny_config(root / "data", root)
    train(config, progress=False)
    return config


def test_training_checkpoints_and_resume(trained, tmp_path):
    marker = tmp_path / "ran"
    checkpoints = os.path.join(trained.output_dir, "checkpoints")
    genuine = torch.load(os.path.join(checkpoints, "last.ckpt"), weights_only=True)
    evil_file(os.path.join(checkpoints, "last.ckpt"), marker, wrap=lambda payload: {**genuine, "extra": payload})
    _refused(lambda: load_trained_module(os.path.join(checkpoints, "last.ckpt")), marker)
    _refused(lambda: train(trained, resume=True, progress=False), marker)
