"""The bf16 accuracy benchmark runs end to end on the tiny models and reports the agreement it measures."""
from __future__ import annotations

import re

import pytest

from _scripts import load_script


@pytest.mark.parametrize("model", ["test_maniqa", "test_moe_agiqa"])
def test_bench_bf16_accuracy_reports_the_difference_and_rank_agreement(model, capsys, monkeypatch):
    bench = load_script("bench_bf16_accuracy", monkeypatch)  # it imports its sibling bench_maniqa
    bench.main(["--model", model, "--n", "24", "--image-size", "32", "--threads", "1", "--best-of", "4"])
    out = capsys.readouterr().out
    assert "CPU flags:" in out
    max_diff = float(re.search(r"max \\\|Δscore\\\| \| ([\d.e+-]+)", out).group(1))
    srcc, plcc, krcc = map(float, re.search(r"SRCC / PLCC / KRCC \| ([\d.]+) / ([\d.]+) / ([\d.]+)", out).groups())
    assert 0 < max_diff < 1e-2  # bf16 did run (scores differ) and stays close
    assert 0.99 <= srcc <= 1 and 0.99 <= plcc <= 1 and 0.9 <= krcc <= 1
    assert re.search(r"best-of-4: groups whose pick changes \| \d+ of 6", out)
