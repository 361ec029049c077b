"""The MoE-AGIQA benchmark runs end to end on the tiny model and prints its three tables with positive numbers."""
from __future__ import annotations

import re

import pytest
import torch

from _scripts import load_script


@pytest.fixture
def bench(monkeypatch):
    return load_script("bench_moe_agiqa", monkeypatch)  # it imports its sibling bench_maniqa


def tables(out: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the `### ` heading above them: rows of cells, header first, separator rows left out."""
    found, heading = {}, None
    for line in out.splitlines():
        if line.startswith("### "):
            heading = line[4:]
            found[heading] = []
        elif line.startswith("|") and not line.startswith("| ---"):
            found[heading].append([cell.strip() for cell in line.strip("|").split("|")])
    return found


def number(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_bench_moe_agiqa_tiny_prints_rows_per_precision_crops_and_batch(bench, capsys):
    bench.main(["--size", "tiny", "--crops", "15", "5", "1", "--batch", "1", "2", "--iters", "1",
                "--precision", "fp32", "bf16", "--threads", "1", "--matmul-n", "128"])
    out = capsys.readouterr().out
    found = tables(out)
    flops, speed, pruning = (next(rows for name, rows in found.items() if name.startswith(prefix))
                             for prefix in ("GFLOP by branch", "Throughput", "Degradation ViT"))

    assert flops[0] == ["branch", "runs per image", "GFLOP per run", "GFLOP/image, K=15", "GFLOP/image, K=5",
                        "GFLOP/image, K=1"]
    by_branch = {row[0]: [number(c) for c in row[2:]] for row in flops[1:-1]}
    assert list(by_branch) == ["degradation ViT (blocks 0-2)", "prior ViT", "BLIP semantic", "regressor"]
    assert all(v > 0 for values in by_branch.values() for v in values)
    total = [number(c) for c in flops[-1][3:]]
    assert flops[-1][0] == "total" and total[0] > total[1] > total[2] > 0
    semantic = by_branch["BLIP semantic"][0]
    per_crop = sum(values[0] for name, values in by_branch.items() if name != "BLIP semantic")
    for k, value in zip((15, 5, 1), total):
        assert value == pytest.approx(semantic + k * per_crop, rel=1e-3)

    header = speed[0]
    assert header[:5] == ["prec", "crops", "batch", "s/image", "images/s"]
    assert header[-4:] == ["% peak", "peak MB", "CPU %", "load"]
    assert [(r[0], int(r[1]), int(r[2])) for r in speed[1:]] == [
        (p, k, b) for p in ("fp32", "bf16") for k in (15, 5, 1) for b in (1, 2)]
    for row in speed[1:]:
        cells = dict(zip(header, row))
        seconds, per_s = number(cells["s/image"]), number(cells["images/s"])
        assert seconds > 0 and per_s == pytest.approx(1 / seconds, rel=1e-3)
        assert seconds <= number(cells["median s/image"])
        assert number(cells["GFLOP/image"]) == pytest.approx(total[(15, 5, 1).index(int(cells["crops"]))], rel=1e-3)
        assert number(cells["GFLOP/s"]) > 0 and number(cells["mm GFLOP/s"]) > 0 and number(cells["% peak"]) > 0
        assert number(cells["prep s/image"]) > 0 and 0 < number(cells["CPU %"]) <= 250  # 1 thread; timer slack

    assert pruning[0] == ["prec", "forward", "s (best)", "median s", "GFLOP", "GFLOP/s", "mm GFLOP/s", "% peak",
                          "CPU %"]
    assert [(r[0], r[1]) for r in pruning[1:]] == [(p, f) for p in ("fp32", "bf16")
                                                    for f in ("pruned", "official", "whole model")]
    assert all(number(c) > 0 for row in pruning[1:] for c in row[2:])
    pruned, official, whole = (number(row[4]) for row in pruning[1:4])
    assert whole == pytest.approx(total[0], rel=1e-3)  # the whole model on the same image's 15 crops
    assert pruned == pytest.approx(15 * by_branch["degradation ViT (blocks 0-2)"][0], rel=1e-3)
    assert official > pruned  # the tiny ViT hooks all its blocks: only the final norm and the head are skipped
    assert out.count("max |pruned - official features| = 0.00e+00") == 2  # same weights, same features
    assert len(re.findall(r"official / pruned = x[\d.]+ time, x[\d.]+ GFLOP; skipping final norm \+ head saves "
                          r"\S+ s and [\d.e-]+ GFLOP per image = -?[\d.]+% of the whole model's time", out)) == 2
    assert "load avg at the end" in out


def test_flops_per_image_scale_with_crops_except_the_semantic_branch(bench):
    """The script counts one crop and multiplies: check that against a direct count of a 5-crop image."""
    from agiqa.models import create_model

    torch.manual_seed(0)
    model = create_model("test_moe_agiqa").eval()
    images = [bench.Image.new("RGB", (40, 36), "red")]
    one, five = (model.processor(num_crops=k)(images, ["a red circle"]) for k in (1, 5))
    direct = bench.count_flops(model, *(five[name] for name in model.input_names))
    assert bench.per_image(bench.branch_flops(model, one), 5) == direct
