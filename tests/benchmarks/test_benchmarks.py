"""The MANIQA benchmark runs end to end on the tiny model and prints one row per precision and batch."""
from __future__ import annotations

import re

import pytest
import torch

from _scripts import load_script


def load_bench():
    return load_script("bench_maniqa")


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


def test_maniqa_stages_chain_to_the_model_output_and_print_a_row_each(monkeypatch, capsys):
    from agiqa.models import create_model

    stages_module = load_script("maniqa_stages", monkeypatch)
    torch.manual_seed(0)
    model = create_model("test_maniqa").eval()
    x = model.normalize(torch.rand(3, 3, 32, 32))
    stages = stages_module.maniqa_stages(model)
    outputs = stages_module.stage_inputs(stages, x, "fp32", torch.device("cpu"))
    with torch.inference_mode():
        torch.testing.assert_close(outputs[-1], model(x), rtol=0, atol=0)

    stages_module.main(["--size", "tiny", "--batch", "2", "--iters", "2", "--device", "cpu", "--precision", "bf16",
                        "--threads", "1", "--matmul-n", "128"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(\S.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%\s+([\d.e+-]+)$", out, flags=re.M)
    assert [r[0] for r in rows] == [name for name, _ in stages]
    errors = [float(r[5]) for r in rows]
    assert all(0 < e < 5e-2 for e in errors), errors  # bf16 differs from fp32, but not by much
    assert "whole forward" in out


def test_bench_score_prints_end_to_end_against_model_only_and_peak_rss(tmp_path, capsys):
    rows = load_script("bench_score").main(["--out", str(tmp_path), "--models", "tiny", "--images", "6", "--size",
                                            "96", "--workers", "0", "1", "--repeats", "1", "--rss", "10", "30"])
    assert [(r["path"], r["images"]) for r in rows] == [("model only", 6), ("workers 0", 6), ("workers 1", 6),
                                                        ("peak RSS", 10), ("peak RSS", 30)]
    assert all(r["rate"] > 0 and r["ratio"] > 0 for r in rows[:3]) and all(r["rss_mb"] > 50 for r in rows[3:])
    out = capsys.readouterr().out
    assert "tiny     workers 1" in out and "peak RSS scoring 30 images" in out
    shards = list(tmp_path.glob("*/part-*.parquet"))
    assert len(shards) == 2  # one per end-to-end run: the job really wrote its output


def test_bench_serve_loads_a_real_server_and_reports_latency_throughput_and_memory(tmp_path, capsys):
    rows = load_script("bench_serve").main(["--out", str(tmp_path), "--models", "tiny", "--requests", "24",
                                            "--clients", "6", "--sequential", "6", "--size", "64"])
    sequential, concurrent = rows
    assert (sequential["mode"], sequential["requests"], concurrent["clients"]) == ("sequential", 6, 6)
    assert sequential["failed"] == concurrent["failed"] == 0
    assert all(0 < p50 <= p99 for p50, _, p99 in (sequential["latency_ms"], concurrent["latency_ms"]))
    assert concurrent["mean_batch"] >= 1 and concurrent["ratio"] > 0 and min(concurrent["rss_mb"]) > 50
    assert "concurrent" in capsys.readouterr().out


def test_bench_levels_prints_each_path_beside_feature_extraction(capsys):
    rows = load_script("bench_levels").main(["--size", "tiny", "--images", "4", "--batch-size", "2", "--repeats", "1"])
    assert [row["path"] for row in rows] == ["features", "features + levels", "features, then a level pass",
                                             "zero-shot score"]
    assert rows[0]["vs_features"] == 1 and all(row["images_per_s"] > 0 for row in rows)
    assert "zero-shot score" in capsys.readouterr().out


def test_maniqa_profile_splits_the_forward_into_kinds_of_work(capsys, monkeypatch):
    load_script("maniqa_profile", monkeypatch).main(["--size", "tiny", "--threads", "1", "--precision", "bf16",
                                              "--matmul-n", "128", "--iters", "2"])
    out = capsys.readouterr().out
    shares = {kind: float(share) for kind, share in re.findall(r"^\| ([^|]+?) \| ([\d.]+) % \|$", out, re.M)}
    assert {"GEMM / conv", "fused attention", "conversions / copies", "norms", "GELU", "other"} <= set(shares)
    assert abs(sum(shares.values()) - 100) < 0.5 and shares["GEMM / conv"] > 0
    assert re.search(r"GEMM rate .*: \d+ GFLOP/s = \d+ % of the matmul peak", out)


@pytest.mark.parametrize("model", ["maniqa", "moe_agiqa"])
def test_bench_linears_times_onednn_against_addmm_on_the_same_scores(capsys, monkeypatch, model):
    from agiqa.scoring.inference import onednn_has_bf16_linear

    bench = load_script("bench_linears", monkeypatch)
    args = ["--size", "tiny", "--model", model, "--batch", "1", "2", "--crops", "2", "--iters", "2", "--threads", "1"]
    if not onednn_has_bf16_linear():
        with pytest.raises(SystemExit, match="no bf16 kernels"):
            bench.main(args)
        return
    bench.main(args)
    out = capsys.readouterr().out
    swapped = int(re.search(r"bf16, (\d+) linears through oneDNN", out).group(1))
    assert swapped > 0
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| ([\d.e+-]+) \|$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [1, 2]
    for _, addmm, onednn, ratio, diff in rows:
        assert float(addmm) > 0 and float(onednn) > 0 and float(ratio) > 0
        assert float(diff) == 0.0  # the same kernels: the same scores
