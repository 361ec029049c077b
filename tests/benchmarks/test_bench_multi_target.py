"""The multi-target benchmark trains one two-target model and one model per target on the same data and split, and
tables and reports them side by side."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from _scripts import load_script


def test_multi_target_benchmark_trains_all_three_runs_on_one_split_and_tables_them(tmp_path):
    module = load_script("bench_multi_target")
    table = module.main(["--out", str(tmp_path), "--n", "60", "--set", "trainer.max_epochs=1",
                         "--set", "model.kwargs.test_crops=1"])
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "run |" not in line]
    assert [(run.strip(), target.strip()) for run, target, *_ in rows] == [
        ("multi", "quality"), ("multi", "alignment"), ("quality", "quality"), ("alignment", "alignment")]
    splits = {json.dumps(json.loads((tmp_path / run / "split.json").read_text()), sort_keys=True)
              for run in ("multi", "quality", "alignment")}
    assert len(splits) == 1  # the same test images for every run
    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())["per_target"]
    single = json.loads((tmp_path / "alignment" / "metrics.json").read_text())["overall"]
    assert float(rows[1][2]) == pytest.approx(multi["alignment"]["srcc"], abs=5e-5)
    assert float(rows[3][2]) == pytest.approx(single["srcc"], abs=5e-5)
    side_by_side = pd.read_csv(tmp_path / "report" / "tables" / "all-overall.csv", index_col=0)
    assert list(side_by_side["target"]) == ["quality", "alignment", "quality", "alignment"]
