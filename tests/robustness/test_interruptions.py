"""Interrupted jobs resume exactly: `agiqa train` killed with SIGKILL in the middle of an epoch (a real subprocess),
then `--resume`d, ends with the same weights and test metrics as an uninterrupted run; its checkpoint is whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from agiqa.data.synth import generate_synthetic

# Resumed and uninterrupted runs do the same float operations in the same order: equal to float32 rounding.
TOLERANCE = 1e-6
EPOCHS = 4
KILL_AFTER_CHECKPOINT_S = 0.5


def _agiqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "agiqa.cli", *args]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    generate_synthetic(root / "data", n=1000, seed=0, image_size=32)
    config = {
        "model": {"name": "test_ma_agiqa", "kwargs": {"semantic_experts": []}},
        "data": {"dataset": "agiqa3k", "root": str(root / "data"), "image_size": 32, "batch_size": 8,
                 "eval_batch_size": 64, "image_cache": str(root / "cache"), "augment": True},
        "optim": {"lr": 1e-3, "t_max": 100},
        "trainer": {"max_epochs": EPOCHS, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(_agiqa("train", "-c", str(root / "config.yaml"), "--out", str(root / "whole")), check=True,
                   capture_output=True)
    return root


def _kill_mid_epoch(root: Path) -> int:
    """Start a run, wait for its first checkpoint (written at the end of epoch 0), SIGKILL it a moment later, in
    epoch 1 (90 batches: seconds); return the epoch its checkpoint holds."""
    last = root / "killed" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_agiqa("train", "-c", str(root / "config.yaml"), "--out", str(root / "killed")),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not last.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(KILL_AFTER_CHECKPOINT_S)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return torch.load(last, map_location="cpu", weights_only=True)["epoch"]  # whole, loadable, weights only


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(experiment):
    root = experiment
    saved_epoch = _kill_mid_epoch(root)
    assert saved_epoch < EPOCHS - 1 and not (root / "killed" / "metrics.json").exists()
    subprocess.run(_agiqa("train", "-c", str(root / "config.yaml"), "--out", str(root / "killed"), "--resume"),
                   check=True, capture_output=True)
    whole = json.loads((root / "whole" / "metrics.json").read_text())["overall"]
    resumed = json.loads((root / "killed" / "metrics.json").read_text())["overall"]
    for key in ("srcc", "plcc", "rmse"):
        assert resumed[key] == pytest.approx(whole[key], abs=TOLERANCE), key
    a = load_file(root / "whole" / "model" / "model.safetensors")
    b = load_file(root / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= TOLERANCE


def _wait_for_shards(folder: Path, process: subprocess.Popen, n: int, timeout_s: float = 300) -> None:
    """Until `folder` holds `n` finished shards of the running `agiqa score`; fails (and kills it) after `timeout_s`
    instead of hanging when no shard comes."""
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob("part-*"))) < n and process.poll() is None:
        if time.monotonic() > deadline:
            found = len(list(folder.glob("part-*")))
            process.kill()
            process.wait()
            pytest.fail(f"`agiqa score` wrote {found} of the {n} shards awaited in {folder} within {timeout_s:g} s "
                        "(stuck, or far slower than expected); killed it")
        time.sleep(0.02)
    assert process.poll() is None, "scoring ended before it could be interrupted"


@pytest.mark.slow
def test_agiqa_score_interrupted_by_ctrl_c_and_kill_9_resumes_to_one_row_per_input(tmp_path):
    """A real `agiqa score --out DIR`: Ctrl-C mid-run exits 130 without a traceback; the re-run is killed with
    SIGKILL mid-run; the third run skips the finished shards and ends with exactly one row per input, equal to an
    uninterrupted run (broken.png: an error row, exit code 1)."""
    import numpy as np
    from PIL import Image

    from agiqa.models import create_model
    from agiqa.scoring.shards import ShardStore

    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:04d}.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "scores"
    command = _agiqa("score", str(tmp_path / "model"), str(tmp_path / "images"), "--device", "cpu",
                     "--batch-size", "1", "--block-size", "8", "--workers", "1", "--out", str(out))
    # SIGINT back to its default in the child: a shell without job control starts background jobs (such as a CI
    # script run with `&`) with SIGINT ignored, and Python keeps an inherited SIG_IGN.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_shards(out, process, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    after_ctrl_c = len(list(out.glob("part-*")))

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_shards(out, process, after_ctrl_c + 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    after_kill = len(list(out.glob("part-*")))
    assert after_ctrl_c < after_kill < 51 and not (out / "_SUCCESS.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 1 and "broken.png" in resumed.stderr  # reported, not fatal
    assert f"{after_kill} of 51 blocks already scored" in resumed.stderr
    assert not list(out.glob(".*.tmp"))
    subprocess.run([*command[:-1], str(tmp_path / "whole")], capture_output=True)
    scores, whole = ShardStore(out).read(), ShardStore(tmp_path / "whole").read()
    assert len(scores) == 401 and scores["image"].is_unique
    assert scores["error"].notna().sum() == 1
    pd.testing.assert_frame_equal(scores, whole)


def test_an_output_folder_of_another_setup_is_never_mixed_in(tmp_path, capsys):
    from PIL import Image

    from agiqa.cli import main
    from agiqa.models import create_model

    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "model")
    Image.new("RGB", (24, 24)).save(tmp_path / "a.png")
    args = ["score", str(tmp_path / "model"), str(tmp_path / "a.png"), "--out", str(tmp_path / "s.csv")]
    assert main(args) == 0
    (tmp_path / "s.csv.parts").mkdir()
    (tmp_path / "s.csv.parts" / "_manifest.json").write_text(json.dumps({"model": "another"}))
    assert main(args) == 2
    assert "holds scores of another setup" in capsys.readouterr().err
    assert main(args[:-1] + [str(tmp_path / "other")]) == 0
    assert main(args[:-1] + [str(tmp_path / "other"), "--precision", "fp32"]) == 2
    assert "differs in ['precision']" in capsys.readouterr().err


def test_ctrl_c_leaves_the_agiqa_command_at_once_even_with_a_thread_that_never_ends():
    """An interrupted `agiqa` exits 130 without waiting for what Python's exit joins (here a thread that never ends,
    as a data-loader queue thread stuck on a full pipe: `agiqa score` once hung there after printing "interrupted");
    `main([...])` called from Python still returns 130."""
    script = textwrap.dedent("""
        import argparse, sys, threading
        import agiqa.cli as cli

        def interrupted(args):
            threading.Thread(target=threading.Event().wait).start()  # never ends, not a daemon
            raise KeyboardInterrupt

        parser = argparse.ArgumentParser()
        parser.add_argument("--verbose", action="store_true")
        parser.set_defaults(func=interrupted)
        cli.build_parser = lambda command: parser
        if sys.argv[1] == "python":
            print("returned", cli.main([]), flush=True)
            import os
            os._exit(0)
        sys.argv = ["agiqa"]
        sys.exit(cli.main())
    """)
    done = subprocess.run([sys.executable, "-c", script, "console"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "interrupted" in done.stderr and "Traceback" not in done.stderr, done.stderr
    called = subprocess.run([sys.executable, "-c", script, "python"], capture_output=True, text=True, timeout=60)
    assert "returned 130" in called.stdout, called.stderr
