"""Experiment configs packaged inside agiqa: names, `-c` resolution, `agiqa configs`, `agiqa reproduce`, the wheel."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from agiqa.cli import main
from agiqa.errors import AgiqaError
from agiqa.training import experiments
from agiqa.training.config import TrainConfig
from agiqa.training.experiments import (config_description, config_path, config_text, experiment_config, list_configs,
                                        resolve_config)

REPO = Path(__file__).resolve().parents[2]
PAPER_EXPERIMENTS = ("ma_agiqa/agiqa3k", "ma_agiqa/aigiqa20k", "ma_agiqa/ablations/agiqa3k_concat",
                     "ma_agiqa/ablations/agiqa3k_maniqa_only", "ma_agiqa/cross_dataset/agiqa3k_to_aigiqa20k",
                     "maniqa/agiqa3k", "maniqa/aigiqa20k", "demo")


def test_packaged_configs_are_listed_by_name_at_any_depth():
    names = list_configs()
    assert set(PAPER_EXPERIMENTS) <= set(names)
    assert names == sorted(names) and not any(name.endswith((".yaml", ".yml")) for name in names)
    assert list_configs("ablations") == [name for name in names if "ablations" in name]
    assert list_configs("ma_agiqa/cross_dataset/*") == ["ma_agiqa/cross_dataset/agiqa3k_to_aigiqa20k",
                                                        "ma_agiqa/cross_dataset/aigiqa20k_to_agiqa3k"]


def test_a_new_folder_of_configs_is_picked_up_without_registration(tmp_path, monkeypatch):
    (tmp_path / "new_model" / "sub").mkdir(parents=True)
    (tmp_path / "new_model" / "agiqa3k.yaml").write_text("# New model on AGIQA-3K\nmodel: {name: x}\n")
    (tmp_path / "new_model" / "sub" / "deep.yml").write_text("model: {name: y}\n")
    (tmp_path / "new_model" / "notes.txt").write_text("not a config")
    monkeypatch.setattr(experiments, "configs_root", lambda: tmp_path)
    assert list_configs() == ["new_model/agiqa3k", "new_model/sub/deep"]
    assert config_description("new_model/agiqa3k") == "New model on AGIQA-3K"
    assert resolve_config("new_model/sub/deep") == tmp_path / "new_model" / "sub" / "deep.yml"


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_every_paper_experiment_parses_into_a_train_config(name):
    config = TrainConfig.from_yaml(config_path(name))
    assert config.model.name
    assert f"-c {name} " in config_text(name) or name == "demo"  # the "Run:" comment names the packaged config


def test_every_packaged_config_is_a_valid_train_config():
    for name in list_configs():
        TrainConfig.from_dict(yaml.safe_load(config_text(name)))


def test_name_resolves_with_or_without_yaml_and_to_the_packaged_file():
    expected = config_path("ma_agiqa/agiqa3k")
    assert expected.is_file() and expected.parts[-3:] == ("configs", "ma_agiqa", "agiqa3k.yaml")
    assert resolve_config("ma_agiqa/agiqa3k") == expected
    assert resolve_config("ma_agiqa/agiqa3k.yaml") == expected
    assert resolve_config("configs/ma_agiqa/agiqa3k.yaml") == expected  # command lines written before packaging


def test_an_existing_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "ma_agiqa" / "agiqa3k.yaml"
    local.parent.mkdir()
    local.write_text("model: {name: maniqa}\n")
    assert resolve_config("ma_agiqa/agiqa3k.yaml").resolve() == local
    assert resolve_config(str(local)) == local
    assert resolve_config("ma_agiqa/agiqa3k") == config_path("ma_agiqa/agiqa3k")  # no such file here: packaged


def test_unknown_name_is_an_agiqa_error_with_close_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AgiqaError, match=r"ma_agiqa/agiqa3kk.*close matches: ma_agiqa/agiqa3k\b.*agiqa configs list"):
        resolve_config("ma_agiqa/agiqa3kk")
    with pytest.raises(AgiqaError, match=r"close matches: .*ma_agiqa/ablations/agiqa3k_concat"):
        resolve_config("ablations/agiqa3k_concat.yaml")
    with pytest.raises(AgiqaError, match="is a directory"):
        resolve_config(str(tmp_path))
    with pytest.raises(AgiqaError, match="no packaged experiment config"):
        config_text("nothing_like_it")


def test_cli_configs_list_shows_the_experiments(capsys):
    assert main(["configs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert set(PAPER_EXPERIMENTS) <= set(by_name)
    assert "MA-AGIQA on AGIQA-3K" in by_name["ma_agiqa/agiqa3k"]  # the first comment line describes it
    assert main(["configs", "list", "maniqa/", "--names-only"]) == 0
    assert capsys.readouterr().out.splitlines() == ["maniqa/agiqa3k", "maniqa/aigiqa20k"]
    assert main(["configs", "list", "no-such-thing"]) == 2


def test_cli_configs_show_prints_yaml_that_is_a_train_config(capsys):
    assert main(["configs", "show", "ma_agiqa/agiqa3k"]) == 0
    text = capsys.readouterr().out
    assert text == config_text("ma_agiqa/agiqa3k")
    config = TrainConfig.from_dict(yaml.safe_load(text))
    assert (config.model.name, config.data.dataset) == ("ma_agiqa", "agiqa3k")
    assert main(["configs", "show", "--path", "maniqa/agiqa3k.yaml"]) == 0
    assert Path(capsys.readouterr().out.strip()) == config_path("maniqa/agiqa3k")
    assert main(["configs", "show", "maniqa/agiqa3"]) == 2
    assert "close matches: maniqa/agiqa3k" in capsys.readouterr().err


def test_cli_train_takes_a_packaged_name_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-c", "ma_agiqa/agiqa3k", "--set", "data.root=/elsewhere", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "ma_agiqa" and printed["data"]["root"] == "/elsewhere"
    mine = tmp_path / "mine.yaml"
    mine.write_text(config_text("maniqa/agiqa3k"))
    assert main(["train", "-c", "mine.yaml", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "maniqa"
    assert main(["train", "-c", "ma_agiqa/agiqa3kk", "--print-config"]) == 2
    assert "close matches: ma_agiqa/agiqa3k" in capsys.readouterr().err


def test_reproduce_finds_the_packaged_experiment_or_one_in_configs_dir(tmp_path, monkeypatch):
    from agiqa.training.reproduce import reproduce

    with pytest.raises(AgiqaError, match=r"unknown kind\(s\) of split \['oficial'\].*official, prompt_disjoint"):
        reproduce(config_path("ma_agiqa/agiqa3k"), str(tmp_path), 1, tmp_path / "out", splits=("oficial",))
    calls = []
    monkeypatch.setattr("agiqa.training.reproduce.reproduce",
                        lambda config_path, *args, **kwargs: calls.append((Path(config_path), kwargs)) or "table")
    monkeypatch.chdir(tmp_path)
    common = ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--seeds", "1"]
    assert main(["reproduce", "ma-agiqa", "--dataset", "agiqa3k", *common]) == 0
    assert calls[-1] == (config_path("ma_agiqa/agiqa3k"), {"paper_model": "ma_agiqa",
                                                           "splits": ("official", "prompt_disjoint")})
    assert main(["reproduce", "ma-agiqa", "--dataset", "agiqa3k", "--splits", "official", *common]) == 0
    assert calls[-1][1]["splits"] == ("official",)
    assert main(["reproduce", "maniqa", "--dataset", "ablations/nothing", *common]) == 2

    own = tmp_path / "my_configs" / "ma_agiqa" / "agiqa3k.yaml"
    own.parent.mkdir(parents=True)
    own.write_text(config_text("ma_agiqa/agiqa3k"))
    assert main(["reproduce", "ma-agiqa", "--dataset", "agiqa3k", "--configs-dir", str(tmp_path / "my_configs"),
                 *common]) == 0
    assert calls[-1][0] == own
    with pytest.raises(AgiqaError, match="close matches: ma_agiqa/agiqa3k"):
        experiment_config("ma-agiqa", "agiqa3", tmp_path / "my_configs")
    with pytest.raises(AgiqaError, match="not a directory"):
        experiment_config("ma-agiqa", "agiqa3k", tmp_path / "missing")


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_the_installed_copy_lists_them(tmp_path):
    """Build a wheel from a copy of the sources (nothing is written in the checkout), install it into a folder and
    list the configs from there, from outside any checkout (~5 s)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src" / "agiqa", source / "src" / "agiqa",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp_path / "dist"
    if importlib.util.find_spec("build"):
        command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)]
    else:
        command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                   "--no-index", "-q", "-w", str(dist)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, timeout=120)
    (wheel,) = dist.glob("agiqa-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {"agiqa/configs/ma_agiqa/agiqa3k.yaml", "agiqa/configs/maniqa/agiqa3k.yaml", "agiqa/configs/demo.yaml",
            "agiqa/configs/ma_agiqa/ablations/agiqa3k_concat.yaml"} <= shipped
    packaged = {f"agiqa/configs/{name}.yaml" for name in list_configs()}
    assert packaged <= shipped, sorted(packaged - shipped)

    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    script = ("import agiqa, sys; from agiqa.cli import main; print(agiqa.__file__, file=sys.stderr); "
              "sys.exit(main(['configs', 'list', '--names-only']) or main(['configs', 'show', '--path', "
              "'ma_agiqa/agiqa3k']))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stderr.strip().splitlines()[-1]).is_relative_to(target)  # the installed copy, not src/
    lines = result.stdout.splitlines()
    assert set(PAPER_EXPERIMENTS) <= set(lines[:-1])
    assert Path(lines[-1]) == target / "agiqa" / "configs" / "ma_agiqa" / "agiqa3k.yaml"
