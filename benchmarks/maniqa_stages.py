"""Where MANIQA's time goes: per stage, time, FLOPs, share of the matmul peak, and error against true fp32.

    python benchmarks/maniqa_stages.py --batch 32                  # GPU if present, auto precision
    python benchmarks/maniqa_stages.py --device cpu --batch 1 --precision bf16

Stages are the pieces of ``Maniqa._patch_tokens`` plus the heads, each timed on the output of the one before (best of
``--iters``; CUDA events on GPU) on the whole batch (no CPU micro-batching: compare with the "whole forward" row).
"% peak" divides each stage's FLOP rate by an n x n ``torch.mm`` in the same
precision, measured just before. The error column compares each stage's output with an fp32 run of the whole chain
in which TF32 is off (cuBLAS and cuDNN): ``||low - fp32|| / ||fp32||``.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bench_maniqa import MatmulPeak, add_machine_arguments, count_flops, cpu_name, matmul_n
from agiqa.models import create_model
from agiqa.runtime import autocast, resolve_device, resolve_precision, torch_dtype


def maniqa_stages(model) -> list[tuple[str, callable]]:
    """``(name, fn)`` pairs whose chained outputs equal ``model(x)`` (mirrors ``Maniqa._patch_tokens`` + heads)."""

    def tabs(blocks):
        def run(x):
            for block in blocks:
                x = block(x)
            return x

        return run

    return [
        ("ViT blocks", model.forward_vit),
        ("TABs 1", tabs(model.tablock1)),
        ("conv1 + Swin 1", lambda x: model.swintransformer1(model.conv1(model._grid(x)))),
        ("TABs 2", lambda x: tabs(model.tablock2)(x.transpose(1, 2).contiguous())),
        ("conv2 + Swin 2", lambda x: model.swintransformer2(model.conv2(model._grid(x)))),
        ("heads", model.forward_head),
    ]


@contextlib.contextmanager
def true_fp32():
    """TF32 off in cuBLAS and cuDNN for the block (PyTorch allows it in cuDNN convolutions by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def stage_inputs(stages, x, precision: str, device: torch.device) -> list[torch.Tensor]:
    """The input of every stage and the final output: ``[x, out_1, ..., out_n]``."""
    outputs = [x]
    with torch.inference_mode(), autocast(precision, device):
        for _, fn in stages:
            outputs.append(fn(outputs[-1]))
    return outputs


def best_ms(fn, arg, device: torch.device, iters: int) -> float:
    fn(arg)  # warm-up
    best = float("inf")
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(arg)
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn(arg)
            best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def relative_error(low: torch.Tensor, ref: torch.Tensor) -> float:
    return ((low.float() - ref.float()).norm() / ref.float().norm()).item()


def run(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    model = create_model("maniqa" if args.size == "full" else "test_maniqa").eval().to(device)
    size = model.config.img_size
    x = model.normalize(torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))).to(device)
    stages = maniqa_stages(model)
    with true_fp32():
        reference = stage_inputs(stages, x, "fp32", device)
    inputs = stage_inputs(stages, x, precision, device)
    peak_n = matmul_n(args, device)
    peak = MatmulPeak(device, peak_n, dtype=torch_dtype(precision)).sample(repeats=5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"batch {args.batch}, {precision}; matmul peak {peak:.1f} GFLOP/s (n={peak_n})")
    print(f"{'stage':<16}{'ms':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}{'%peak':>7}{'rel err':>10}")
    total_ms = total_flops = 0.0
    with torch.inference_mode(), autocast(precision, device):
        for (label, fn), stage_input, output, ref in zip(stages, inputs, inputs[1:], reference[1:]):
            ms = best_ms(fn, stage_input, device, args.iters)
            flops = count_flops(fn, stage_input)
            total_ms, total_flops = total_ms + ms, total_flops + flops
            print(f"{label:<16}{ms:>10.3f}{flops / args.batch / 1e9:>11.2f}{flops / ms / 1e6:>10.1f}"
                  f"{100 * flops / ms / 1e6 / peak:>6.0f}%{relative_error(output, ref):>10.2e}")
        whole_ms = best_ms(model, x, device, args.iters)
    print(f"{'sum of stages':<16}{total_ms:>10.3f}{total_flops / args.batch / 1e9:>11.2f}"
          f"{total_flops / total_ms / 1e6:>10.1f}"
          f"{100 * total_flops / total_ms / 1e6 / peak:>6.0f}%")
    print(f"{'whole forward':<16}{whole_ms:>10.3f}{'':>11}{total_flops / whole_ms / 1e6:>10.1f}"
          f"{100 * total_flops / whole_ms / 1e6 / peak:>6.0f}%")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_machine_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="auto", choices=("fp32", "auto", "bf16", "fp16"))
    parser.add_argument("--iters", type=int, default=10, help="timed runs per stage (the best one is reported)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
