"""DDP: a 2-process gloo run gathers exactly the validation predictions of a 1-process run (no duplicates from the
distributed sampler's padding, none missing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from agiqa.data.synth import generate_synthetic


@pytest.mark.slow
def test_two_process_ddp_gathers_the_same_validation_predictions(tmp_path):
    # 45 images -> an odd validation part, so DistributedSampler pads one process with a repeated row.
    generate_synthetic(tmp_path / "data", n=45, seed=0, image_size=32)
    config = {
        "model": {"name": "test_ma_agiqa", "kwargs": {"semantic_experts": []}},
        "data": {"dataset": "agiqa3k", "root": str(tmp_path / "data"), "image_size": 32, "batch_size": 4,
                 "eval_batch_size": 4, "image_cache": str(tmp_path / "cache")},
        # lr 0: weights stay at the seeded start, so both runs predict with identical models.
        "optim": {"lr": 0.0},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "precision": "32-true", "seed": 0},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tables = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tmp_path / f"devices{devices}"
        subprocess.run([sys.executable, "-m", "agiqa.cli", "train", "-c", str(tmp_path / "config.yaml"), "--out",
                        str(out), "--set", f"trainer.devices={devices}", "--set", f"trainer.strategy={strategy}"],
                       check=True, capture_output=True, env=env, timeout=600)
        tables[devices] = pd.read_csv(out / "val_predictions.csv").sort_values("row").reset_index(drop=True)
    val_rows = json.loads((tmp_path / "devices1" / "split.json").read_text())["val"]
    assert len(val_rows) % 2 == 1
    for table in tables.values():
        assert sorted(table["row"]) == sorted(val_rows)  # each validation image once
    pd.testing.assert_series_equal(tables[1]["prediction"], tables[2]["prediction"], atol=1e-6, rtol=0)
