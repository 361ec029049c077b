"""bf16 CPU scoring with the kept linears through oneDNN (``OneDNNLinear``, the bias fused into the GEMM) against
``addmm`` (the bias copied into the output, then accumulated onto), side by side in one process.

    python benchmarks/bench_linears.py --model maniqa --batch 1 4 8 --iters 5            # CPU: ~3 min
    python benchmarks/bench_linears.py --model moe_agiqa --crops 15 --batch 1 --iters 3   # CPU: ~2 min

Both sides are the same seeded random-weight model prepared as the Scorer prepares it in bf16 (trunk weights kept in
bf16), the oneDNN side with ``prefers_onednn_bf16_linear`` switched on (the Scorer switches it on only on AMX CPUs:
run this on another CPU with bf16 kernels, e.g. Zen 4, to see whether it should), the addmm side with it switched
off. Each timed run does one forward of each side back to back (the order alternates), so a busy spell on a shared
machine hits both: the ratio is the median of the per-run ratios, times are best-of. The scores of both sides are
compared element by element.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: a hub call would be a bug, fail instead of waiting

import numpy as np
import torch
from PIL import Image

from bench_maniqa import add_machine_arguments, cpu_features, cpu_name
from bench_moe_agiqa import OFFLINE as MOE_OFFLINE
from agiqa.data.synth import prompt_vocabulary
from agiqa.models import create_model
from agiqa.runtime import resolve_device
from agiqa.scoring import inference
from agiqa.scoring.inference import inference_context, prepare_model

MODELS = {"maniqa": "test_maniqa", "moe_agiqa": "test_moe_agiqa"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **(MOE_OFFLINE if "moe_agiqa" in name else {})).eval()


def both_sides(name: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(oneDNN linears, addmm linears): the same weights, each prepared for bf16 as the Scorer prepares it."""
    with mock.patch.object(inference, "prefers_onednn_bf16_linear", return_value=True):
        onednn = prepare_model(build(name), device=device, precision="bf16")
    with mock.patch.object(inference, "prefers_onednn_bf16_linear", return_value=False):
        addmm = prepare_model(build(name), device=device, precision="bf16")
    return onednn, addmm


def make_inputs(model: torch.nn.Module, batch: int, crops: int) -> dict:
    """Seeded noise images (MoE-AGIQA: through its processor with ``crops`` crops and a prompt each)."""
    size = model.config.img_size
    if not hasattr(model, "processor"):
        return {"x": model.normalize(torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)))}
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (2 * size, 2 * size, 3), dtype=np.uint8)) for _ in range(batch)]
    prompts = [" ".join(prompt_vocabulary()[5 + i: 17 + i]) for i in range(batch)]
    return dict(model.processor(num_crops=crops)(images, prompts))


def side_by_side(onednn, addmm, inputs: dict, iters: int) -> dict:
    """Interleaved timed forwards of both sides; their best times, median per-run ratio and max score difference."""
    times = {"onednn": [], "addmm": []}
    sides = {"onednn": onednn, "addmm": addmm}
    with inference_context("bf16", "cpu"):
        scores = {side: model(**inputs) for side, model in sides.items()}  # also the warm-up
        for run in range(iters):
            for side in (("onednn", "addmm") if run % 2 == 0 else ("addmm", "onednn")):
                start = time.perf_counter()
                sides[side](**inputs)
                times[side].append(time.perf_counter() - start)
    ratios = [a / o for a, o in zip(times["addmm"], times["onednn"])]
    return {"onednn": min(times["onednn"]), "addmm": min(times["addmm"]), "ratio": statistics.median(ratios),
            "max_diff": (scores["onednn"].float() - scores["addmm"].float()).abs().max().item()}


def run(args) -> None:
    device = resolve_device(args.device)
    if device.type != "cpu":
        raise SystemExit("bench_linears compares CPU kernels: use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model if args.size == "full" else MODELS[args.model]
    print(f"device: cpu ({cpu_name()}), CPU flags: {cpu_features()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}")
    if not inference.onednn_has_bf16_linear():
        raise SystemExit("this CPU's oneDNN has no bf16 kernels: the Scorer keeps addmm here, nothing to compare")
    onednn, addmm = both_sides(name, device)
    swapped = sum(isinstance(m, inference.OneDNNLinear) for m in onednn.modules())
    choice = "oneDNN" if inference.prefers_onednn_bf16_linear() else "addmm"
    print(f"model: {name}, bf16, {swapped} linears through oneDNN (the Scorer's choice on this CPU: {choice}); "
          f"best of {args.iters} interleaved runs\n")
    print("| batch | addmm s/image | oneDNN s/image | speed-up (median of run ratios) | max |score diff| |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        result = side_by_side(onednn, addmm, make_inputs(onednn, batch, args.crops), args.iters)
        print(f"| {batch} | {result['addmm'] / batch:.4f} | {result['onednn'] / batch:.4f} | "
              f"{result['ratio']:.3f}x | {result['max_diff']:.1e} |")
    print(f"\nload avg at the end {os.getloadavg()[0]:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_machine_arguments(parser)
    parser.add_argument("--model", choices=tuple(MODELS), default="maniqa")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--crops", type=int, default=15, help="MoE-AGIQA crops per image")
    parser.add_argument("--iters", type=int, default=5)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
