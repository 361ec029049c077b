"""The mPLUG-Owl2 speed benchmark runs end to end on the tiny released-layout checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from _scripts import load_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "semantic"))


def test_bench_mplug_owl2_times_image_files_and_counts_flops(monkeypatch, tmp_path, capsys):
    from _owl2 import FIXTURE, write_checkpoint

    folder = write_checkpoint(tmp_path / "mplug-owl2-tiny")
    bench = load_script("bench_mplug_owl2", monkeypatch)
    result = bench.main(["--folder", str(folder), "--image-dir", str(FIXTURE / "images"), "--images", "3",
                         "--batch-size", "2", "--repeats", "2", "--threads", "1", "--json", str(tmp_path / "r.json")])
    assert result["images"] == 3 and len(result["seconds"]) == 2 and result["images_per_s"] > 0
    assert result["gflop_per_image"] > 0 and 0 < result["share_of_peak"] < 1
    assert json.loads((tmp_path / "r.json").read_text())["precision"] == "fp32"
    assert "images/s (2 questions)" in capsys.readouterr().out
