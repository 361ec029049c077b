import json

import pandas as pd
import pytest
from _datahelp import make_root

from agiqa.cli import main


def test_datasets_list(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "agiqa3k" in out and "quality, alignment" in out and "2982" in out and "data.csv" in out
    assert "Image/allimg/<name>" in out


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), "--n", "30", "--seed", "1", "--image-size", "32"]) == 0
    return root


def test_synth_then_check(synth_root, capsys):
    capsys.readouterr()
    assert main(["datasets", "check", "agiqa3k", "--root", str(synth_root)]) == 0
    out = capsys.readouterr().out
    assert "30 rows (the official file has 2982)" in out and "image files: all present" in out
    assert "MOS: min" in out and "synthA 6" in out and "MOS histogram:" in out and out.rstrip().endswith("OK")


def test_check_failure_names_row(synth_root, tmp_path, capsys):
    labels = pd.read_csv(synth_root / "data.csv", dtype=str)
    labels.loc[2, "mos_quality"] = "oops"
    labels.to_csv(tmp_path / "data.csv", index=False)
    for png in synth_root.glob("*.png"):
        (tmp_path / png.name).write_bytes(png.read_bytes())
    assert main(["datasets", "check", "agiqa3k", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "row 3 (line 4): 'mos_quality' = 'oops' is not a finite number" in err


def test_check_generic_csv_unknown_column(synth_root, capsys):
    code = main(["datasets", "check", "csv", "--csv", str(synth_root / "data.csv"), "--image-col", "img"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing column 'img' (image_col / --image-col)" in err and "missing column 'mos'" in err


def test_split_official_on_real_labels(shared_data, tmp_path, capsys):
    root = make_root(shared_data, "agiqa3k", tmp_path / "agiqa3k")
    out = tmp_path / "split.json"
    assert main(["split", "agiqa3k", "--root", str(root), "--seed", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train 2087, val 298, test 597" in printed and "prompts shared between parts: " in printed
    saved = json.loads(out.read_text())
    assert saved["method"] == "official" and saved["n"] == 2982 and len(saved["test"]) == 597


def test_split_prompt_disjoint_and_kfold(synth_root, capsys):
    assert main(["split", "agiqa3k", "--root", str(synth_root), "--method", "prompt_disjoint"]) == 0
    assert "prompts shared between parts: 0" in capsys.readouterr().out
    assert main(["split", "agiqa3k", "--root", str(synth_root), "--method", "kfold", "--k", "3", "--fold", "2"]) == 0
    assert "fold 2 of 3" in capsys.readouterr().out
    assert main(["split", "agiqa3k", "--root", str(synth_root), "--method", "kfold", "--fold", "9"]) == 2
    assert "fold" in capsys.readouterr().err


def test_synth_bad_argument(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--mismatch-rate", "3"]) == 2
    assert "mismatch_rate" in capsys.readouterr().err
