"""The MANIQA benchmark runs end to end on the tiny model and prints one row per precision and batch."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_maniqa.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_maniqa", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_maniqa_prints_a_row_per_precision_and_batch(capsys):
    load_bench().main(["--size", "tiny", "--batch", "1", "3", "--iters", "2", "--precision", "fp32", "bf16",
                       "--threads", "1", "--matmul-n", "128"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(fp32|bf16)\s+(\d+)\s+(fp32|bf16)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                      r"(\d+)%", out, flags=re.M)
    assert [(r[0], int(r[1])) for r in rows] == [("fp32", 1), ("fp32", 3), ("bf16", 1), ("bf16", 3)]
    for row in rows:
        images_per_s, best, median, gflops, peak = map(float, row[3:8])
        assert images_per_s > 0 and 0 < best <= median and gflops > 0 and peak > 0
    assert "counted GFLOP/image: needed" in out
    assert len(re.findall(r"max \|score - fp32 score\| = ", out)) == 2
