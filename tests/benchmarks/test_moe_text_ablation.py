"""The text-ablation benchmark trains both variants on its own synthetic data and reports one row per variant."""
from __future__ import annotations

import yaml

from _scripts import load_script


def test_text_ablation_trains_both_variants_and_reports_them(tmp_path):
    module = load_script("moe_text_ablation")
    table = module.main(["--out", str(tmp_path), "--n", "60", "--set", "trainer.max_epochs=1",
                         "--set", "model.kwargs.patch_size=8", "--set", "model.kwargs.test_crops=1"])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["with text (released)", "text ablated"]
    assert "target alignment" in table
    with_text = yaml.safe_load((tmp_path / "text" / "config.yaml").read_text())
    ablated = yaml.safe_load((tmp_path / "no_text" / "config.yaml").read_text())
    assert with_text["data"]["target"] == ablated["data"]["target"] == "alignment"
    assert ablated["model"]["kwargs"]["use_text"] is False and with_text["model"]["kwargs"].get("use_text", True)
    assert (tmp_path / "no_text" / "metrics.json").is_file() and (tmp_path / "text" / "metrics.json").is_file()
