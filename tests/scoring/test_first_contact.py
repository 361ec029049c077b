"""Issue #33, first contact with `agiqa score`, as a user runs it (`agiqa.cli.main`) or calls it from Python: a failed
start leaves nothing that blocks the corrected command, a training run folder stands for its model/, a resumed run
says how much was done, the last progress line is printed once, and the default decode workers follow the cores."""
from __future__ import annotations

import logging
import os

import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.errors import AgiqaError
from agiqa.models import create_model

CPU = ["--device", "cpu", "--precision", "fp32", "--workers", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training run folder as `agiqa train` leaves it (model/ inside), five images and an empty folder."""
    root = tmp_path_factory.mktemp("first_contact")
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "runs" / "tiny" / "model")
    (root / "runs" / "tiny" / "metrics.json").write_text("{}")
    (root / "images").mkdir()
    for i in range(5):
        Image.new("RGB", (40, 48), (50 * i, 120, 200 - 30 * i)).save(root / "images" / f"{i}.png")
    (root / "empty").mkdir()
    return root


def test_the_issue_33_session_typo_then_run_folder_then_empty_folder(run, tmp_path, capsys):
    """The session of the issue, same --out each time: the typo fails in one line and leaves nothing, the run
    folder is used through its model/ with a note, an empty folder fails and leaves nothing, and the corrected
    command succeeds (today: the second and third commands were refused as "another setup")."""
    out = str(tmp_path / "scores.csv")
    models = run / "runs" / "tiny"
    assert main(["score", str(models / "modle"), str(run / "images"), "--out", out, *CPU]) == 2
    err = capsys.readouterr().err
    assert f"error: model folder {models / 'modle'} does not exist (did you mean {models / 'model'}?)" in err
    assert os.listdir(tmp_path) == []

    assert main(["score", str(models), str(run / "images"), "--out", out, *CPU]) == 0
    captured = capsys.readouterr()
    assert f"note: {models} is a training run folder; scoring its model folder {models / 'model'}" in captured.err
    assert "another setup" not in captured.err and len(pd.read_csv(out)) == 5

    empty_out = str(tmp_path / "empty.csv")
    assert main(["score", str(models / "model"), str(run / "empty"), "--out", empty_out, *CPU]) == 2
    assert "error: no images found in" in capsys.readouterr().err
    assert not os.path.exists(empty_out + ".parts") and not os.path.exists(empty_out)
    assert main(["score", str(models / "model"), str(run / "images"), "--out", empty_out, *CPU]) == 0
    assert len(pd.read_csv(empty_out)) == 5


def test_a_run_stopped_before_its_first_shard_leaves_no_output_to_refuse_the_next(run, tmp_path, capsys,
                                                                                  monkeypatch):
    """Ctrl-C (or any failure) before the first block is written: the output the run started holds no scores, so it
    is removed; the next command, even with another setup, is not refused."""
    from agiqa.scoring.scorer import Scorer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "scores"
    with monkeypatch.context() as patch:
        patch.setattr(Scorer, "predict_columns", interrupted)
        assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", str(out),
                     *CPU]) == 130
    assert not out.exists()
    assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", str(out), *CPU,
                 "--precision", "bf16"]) == 0
    assert "another setup" not in capsys.readouterr().err and (out / "_SUCCESS.json").is_file()


def test_the_python_scorer_names_a_missing_model_path_and_takes_a_run_folder(run):
    import agiqa.scoring.scorer as scoring

    with pytest.raises(AgiqaError, match="model folder .*modle does not exist .did you mean .*tiny/model"):
        scoring.create_scorer(str(run / "runs" / "tiny" / "modle"))
    with pytest.raises(AgiqaError, match="unknown model 'manqa'.*did you mean maniqa"):
        scoring.create_scorer("manqa")
    from_run = scoring.create_scorer(run / "runs" / "tiny", device="cpu", precision="fp32")
    from_model = scoring.create_scorer(run / "runs" / "tiny" / "model", device="cpu", precision="fp32")
    files = sorted(str(p) for p in (run / "images").glob("*.png"))
    assert from_run.score(files).scores.tolist() == from_model.score(files).scores.tolist()


@pytest.mark.parametrize("name", ["scores", "scores.v2/", "existing.v3"])
def test_out_without_a_table_suffix_is_a_folder_of_shards(name, run, tmp_path):
    """A name without a suffix, ending in / or an existing folder is a shard folder; `scores.txt` is refused
    (tests/robustness/test_cli_mistakes_scoring.py)."""
    (tmp_path / "existing.v3").mkdir()
    out = os.path.join(tmp_path, name)
    assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", out, *CPU]) == 0
    assert os.path.isfile(os.path.join(out, "_SUCCESS.json"))


def test_a_resumed_run_says_that_it_resumed_and_how_much_was_done(run, tmp_path, capsys):
    out = tmp_path / "scores"
    argv = ["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", str(out), "--block-size",
            "2", *CPU]
    assert main(argv) == 0
    assert "resuming" not in capsys.readouterr().err  # a new run is no resumption
    last = sorted(out.glob("part-*"))[-1]  # the block of the fifth image: as if killed before it was written
    last.unlink()
    (out / "_SUCCESS.json").unlink()
    assert main(argv) == 0
    assert f"resuming: 4 of 5 images already scored in {out} (2 of 3 blocks already scored, 1 to go)" in \
        capsys.readouterr().err
    assert len(pd.read_parquet(out)) == 5


def test_the_final_progress_line_is_printed_once(run, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="agiqa.score"):
        assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out",
                     str(tmp_path / "s.csv"), "--log-every", "0", "--block-size", "2", *CPU]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "agiqa.score"]
    assert sum(line.startswith("scored 5/5 images") for line in lines) == 1, lines
    assert lines[-1].startswith("scored 5/5 images")


def test_on_a_terminal_the_bar_holds_the_final_state_and_no_log_line_repeats_it(caplog, capsys):
    from agiqa.scoring.progress import Progress

    with caplog.at_level(logging.INFO, logger="agiqa.score"):
        progress = Progress(4, bar=True, every=0)
        progress.update(3, 1)
        progress.close()
    assert [r for r in caplog.records if r.name == "agiqa.score"] == []
    assert "4/4" in capsys.readouterr().err  # the bar's last state


def test_default_decode_workers_follow_the_cores(run, tmp_path, monkeypatch):
    """Measured on 2 cores (docs/scoring.md): 0 workers was never slower than 1 or 2, so 1-2 CPUs decode in the main
    process; more CPUs get half of them (at most 4); a GPU run min(4, CPUs - 1)."""
    from agiqa.scoring import stream
    from agiqa.scoring.job import ScoreJob

    assert [stream.default_workers("cpu", cpus) for cpus in (1, 2, 3, 4, 8, 16)] == [0, 0, 1, 2, 4, 4]
    assert [stream.default_workers("cuda", cpus) for cpus in (1, 2, 8)] == [0, 1, 4]
    seen = []
    real_run = ScoreJob.run

    def record(self, scorer, num_workers=0, *args, **kwargs):
        seen.append(num_workers)
        return real_run(self, scorer, num_workers, *args, **kwargs)

    monkeypatch.setattr(ScoreJob, "run", record)
    monkeypatch.setattr(stream, "available_cpus", lambda: 2)
    assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", str(tmp_path / "a.csv"),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    monkeypatch.setattr(stream, "available_cpus", lambda: 4)
    assert main(["score", str(run / "runs" / "tiny" / "model"), str(run / "images"), "--out", str(tmp_path / "b.csv"),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    assert seen == [0, 2]
