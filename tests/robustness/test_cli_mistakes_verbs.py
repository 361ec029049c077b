"""User mistakes with the datasets, models, configs, synth, split, report and features commands: one line naming
the problem (exit code 2), never a traceback (issue #33; the pattern of test_cli_mistakes.py)."""
from __future__ import annotations

import pytest
from PIL import Image

from agiqa.cli import main
from tests.robustness._cli import one_error_line


@pytest.fixture()
def place(tmp_path):
    Image.new("RGB", (40, 40), (90, 120, 200)).save(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "labels.csv").write_text("image,mos\nx.png,1.5\ny.png,3.0\n")
    (tmp_path / "header_only.csv").write_text("image,mos\n")
    (tmp_path / "zero_bytes.csv").write_bytes(b"")
    (tmp_path / "scores.csv").write_text("image,score\nx.png,0.5\ny.png,0.2\n")
    (tmp_path / "no_scores.csv").write_text("image,score\n")
    (tmp_path / "word_scores.csv").write_text("image,score\nx.png,high\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "predictions.csv").write_text("name,mos,prediction\n")
    return tmp_path


MISTAKES = {
    # datasets
    "dataset name typo": (["datasets", "check", "agiqa3kk", "--root", "{t}/empty"], "Did you mean: agiqa3k"),
    "dataset root without labels": (["datasets", "check", "agiqa3k", "--root", "{t}/empty"], "label file not found"),
    "target typo": (["datasets", "check", "agiqa3k", "--root", "{t}/empty", "--target", "qualty"],
                    "agiqa3k has no target 'qualty'"),
    "score column typo": (["datasets", "check", "csv", "--csv", "{t}/labels.csv", "--score-col", "score"],
                          "missing column 'score'"),
    "label file that is no table": (["datasets", "check", "csv", "--csv", "{t}/notes.txt"], "missing column 'image'"),
    "label file with a header only": (["datasets", "check", "csv", "--csv", "{t}/header_only.csv",
                                       "--no-check-files"], "header_only.csv: no rows under the header"),
    "generic csv without --csv": (["datasets", "check", "csv"], "needs csv=PATH"),
    "generic option for an official dataset": (["datasets", "check", "agiqa3k", "--root", "{t}/empty", "--csv",
                                                "{t}/labels.csv"], "unknown option(s) csv"),
    # models
    "model name typo": (["models", "info", "maniqaa"], "Did you mean: maniqa"),
    "weights tag typo": (["models", "info", "maniqa.koniq"], "maniqa.koniq10k"),
    "list filter matching nothing": (["models", "list", "manqa*"], "no model name matches 'manqa*'"),
    "convert a folder": (["models", "convert", "{t}/empty", "{t}/o"], "empty is a folder; give the official"),
    "convert an image": (["models", "convert", "{t}/x.png", "{t}/o", "--model", "test_maniqa"], "x.png"),
    "prior for a model without one": (["models", "convert", "{t}/x.png", "{t}/o", "--model", "test_maniqa",
                                       "--prior", "{t}/prior.pth"], "--prior and --degradation-vit are for"),
    # configs
    "config name typo": (["configs", "show", "ma_agiqa/agiqa3kk"], "close matches: ma_agiqa/agiqa3k"),
    "config filter matching nothing": (["configs", "list", "nope"], "no packaged config matches 'nope'"),
    # synth
    "synth no images": (["synth", "--out", "{t}/s", "--n", "0"], "need n >= 1"),
    "synth mismatch rate above 1": (["synth", "--out", "{t}/s", "--mismatch-rate", "1.5"], "mismatch_rate=1.5"),
    "synth into a file": (["synth", "--out", "{t}/notes.txt", "--n", "4"], "notes.txt: File exists"),
    # split
    "split root without labels": (["split", "agiqa3k", "--root", "{t}/empty"], "label file not found"),
    "split one fold": (["split", "csv", "--csv", "{t}/labels.csv", "--method", "kfold", "--k", "1"], "need 2 <= k"),
    "split fold out of range": (["split", "csv", "--csv", "{t}/labels.csv", "--method", "kfold", "--k", "2",
                                 "--fold", "7"], "fold=7"),
    "split an empty label file": (["split", "csv", "--csv", "{t}/zero_bytes.csv"], "cannot be read as CSV"),
    "split out under a file": (["split", "csv", "--csv", "{t}/labels.csv", "--out", "{t}/x.png/split.json"],
                               "x.png"),
    # report
    "report a missing run": (["report", "{t}/nope", "--out", "{t}/r"], "no such run directory or file"),
    "report a folder that is no run": (["report", "{t}/empty", "--out", "{t}/r"], "not a run agiqa can report on"),
    "report labels as scores": (["report", "{t}/labels.csv", "--out", "{t}/r"], "no `score` column"),
    "report a zero-byte score file": (["report", "{t}/zero_bytes.csv", "--out", "{t}/r"], "not a readable table"),
    "report a score file without rows": (["report", "{t}/no_scores.csv", "--out", "{t}/r"], "no rows to report on"),
    "report words as scores": (["report", "{t}/word_scores.csv", "--out", "{t}/r"],
                               "column 'score' must hold numbers; row 1 holds 'high'"),
    "report predictions without rows": (["report", "{t}/eval", "--out", "{t}/r"], "no rows to report on"),
    "report into a file": (["report", "{t}/scores.csv", "--out", "{t}/notes.txt"], "notes.txt"),
    # features
    "feature cache that is none": (["features", "info", "{t}/empty"], "is not a feature cache"),
    "features of a dataset typo": (["features", "extract", "--dataset", "agiqa3kk", "--root", "{t}/empty",
                                    "--encoder", "{t}/empty", "--out", "{t}/c"], "Did you mean: agiqa3k"),
    "features of a missing image": (["features", "extract", "--images", "{t}/nope.png", "--encoder", "{t}/empty",
                                     "--out", "{t}/c"], "nope.png: no such file or folder"),
    "features of a folder without images": (["features", "extract", "--images", "{t}/empty", "--encoder",
                                             "{t}/empty", "--out", "{t}/c"], "no images found"),
    "official features for a root without labels": (["features", "import-official", "--features", "{t}/empty",
                                                      "--dataset", "agiqa3k", "--root", "{t}/empty", "--out",
                                                      "{t}/c"], "label file not found"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_user_mistake_is_one_line_and_exit_code_2(case, place, capsys):
    argv, expected = MISTAKES[case]
    code = main([arg.format(t=place) for arg in argv])
    err = capsys.readouterr().err
    one_error_line(code, err)
    assert err.startswith("error:"), err
    assert expected in err, err  # a dataset's problems are listed on the lines under its one error line


# Mistakes argparse catches (wrong choices, conflicting or missing flags): its usage, then one `PROG: error:` line.
ARGUMENT_MISTAKES = {
    "datasets action typo": (["datasets", "lsit"], "invalid choice: 'lsit'"),
    "split method typo": (["split", "csv", "--csv", "x.csv", "--method", "oficial"], "invalid choice: 'oficial'"),
    "synth without --out": (["synth", "--n", "4"], "the following arguments are required: --out"),
    "synth count in words": (["synth", "--out", "o", "--n", "ten"], "invalid int value: 'ten'"),
    "negative report galleries": (["report", "r", "--worst", "-1"], "--worst: expected a whole number >= 0"),
    "models action typo": (["models", "lst"], "invalid choice: 'lst'"),
    "features from a dataset and images at once": (["features", "extract", "--dataset", "agiqa3k", "--images", "x.png",
                                                    "--encoder", "e", "--out", "c"],
                                                   "argument --images: not allowed with argument --dataset"),
    "features pooling typo": (["features", "extract", "--images", "x.png", "--encoder", "e", "--out", "c",
                               "--pooling", "al"], "invalid choice: 'al'"),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_MISTAKES))
def test_argument_mistake_is_usage_and_one_error_line(case, capsys):
    argv, expected = ARGUMENT_MISTAKES[case]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "Traceback" not in err and err.startswith("usage: agiqa ")
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and expected in lines[0], err
