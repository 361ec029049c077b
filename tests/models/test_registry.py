"""Registry entries of MANIQA and the `agiqa models` CLI (no network, tiny models)."""
from __future__ import annotations

import argparse

import pytest
import torch

from agiqa.models import create_model, get_model_info, get_pretrained_cfg, list_models, list_pretrained
from agiqa.models import cli as models_cli
from agiqa.models._builder import WeightsNotFoundError


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agiqa")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_maniqa_is_registered_with_official_tags():
    assert {"maniqa", "test_maniqa"} <= set(list_models())
    assert list_models("maniqa*") == ["maniqa"]
    assert list_pretrained("maniqa.*") == ["maniqa.kadid10k", "maniqa.koniq10k", "maniqa.pipal22"]
    default = get_pretrained_cfg("maniqa")
    assert default.tag == "koniq10k" and default.official and default.hf_hub_filename == "ckpt_koniq10k.pt"
    assert get_pretrained_cfg("maniqa.pipal22").url.endswith("/PIPAL22-VALID-CKPT/ckpt_valid")
    assert get_pretrained_cfg("maniqa.kadid10k").url.endswith("/Kadid10k/ckpt_kadid10k.pt")


def test_model_info():
    info = get_model_info("maniqa")
    assert info["architecture"] == "maniqa" and info["tag"] == "koniq10k"
    assert tuple(info["score_range"]) == (0.0, 1.0) and info["lower_better"] is False
    assert info["origin_url"] == "https://github.com/IIGROUP/MANIQA"
    with pytest.raises(RuntimeError, match="Known tags for maniqa"):
        get_model_info("maniqa.nope")
    with pytest.raises(RuntimeError, match="Did you mean"):
        create_model("maniqaa")


def test_config_kwargs_and_none_dropping():
    model = create_model("test_maniqa", drop=0.0, window_size=None)
    assert model.config.drop == 0.0 and model.config.window_size == 2


def test_missing_local_weights_name_the_fix(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="pretrained=False"):
        create_model("maniqa", pretrained=True,
                     pretrained_cfg_overlay=dict(file=str(tmp_path / "absent.pt")))


def test_cli_list_and_info(capsys):
    assert run_cli(["models", "list", "maniqa*"]) == 0
    assert capsys.readouterr().out.split() == ["maniqa"]
    assert run_cli(["models", "list", "--pretrained", "maniqa*"]) == 0
    assert "maniqa.koniq10k" in capsys.readouterr().out
    assert run_cli(["models", "info", "maniqa.kadid10k"]) == 0
    out = capsys.readouterr().out
    assert "score range" in out and "(0.0, 1.0)" in out and "lower better" in out and "ckpt_kadid10k.pt" in out


def test_cli_convert_official_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    reference = create_model("test_maniqa").eval()
    src = tmp_path / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, src)
    assert run_cli(["models", "convert", str(src), str(tmp_path / "out"), "--model", "test_maniqa"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    loaded = create_model("test_maniqa", pretrained=str(tmp_path / "out"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
