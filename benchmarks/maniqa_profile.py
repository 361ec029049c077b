"""Where a MANIQA forward's time goes, by kind of work: GEMMs and convolutions, attention, softmax, dtype
conversions and layout copies, norms, GELU, residual adds, the rest.

    python benchmarks/maniqa_profile.py --precision auto            # full size, batch 1, CPU (~1 min)
    python benchmarks/maniqa_profile.py --precision fp32 --threads 1

The model is prepared as the Scorer prepares it (bf16 / fp16: the trunk's matmul weights kept in that dtype) and
profiled with ``torch.profiler`` over ``--iters`` forwards after a warm-up; each aten op's self time goes to one kind.
"GEMM rate" divides the counted matmul + convolution + attention FLOPs by the time of those ops alone: against the
matmul peak of the same precision it says how close the GEMMs are, and the other kinds say what keeps the whole
forward below it.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from bench_maniqa import MatmulPeak, add_machine_arguments, count_flops, cpu_features, cpu_name, matmul_n
from agiqa.models import create_model
from agiqa.runtime import resolve_device, resolve_precision, torch_dtype
from agiqa.scoring.inference import inference_context, prepare_model

# aten op name -> kind of work (ops not listed are "other").
KINDS = {
    "GEMM / conv": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                    "aten::_slow_conv2d_forward", "aten::convolution_overrideable"),
    "fused attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
                        "aten::_scaled_dot_product_cudnn_attention"),
    "softmax": ("aten::_softmax",),
    "conversions / copies": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::roll"),
    "norms": ("aten::native_layer_norm",),
    "GELU": ("aten::gelu",),
    "adds / muls": ("aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::clamp_min",
                    "aten::relu", "aten::sigmoid"),
}


def kind_of(op: str) -> str:
    return next((kind for kind, ops in KINDS.items() if op in ops), "other")


def run(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    model = prepare_model(create_model("maniqa" if args.size == "full" else "test_maniqa"), device,
                          precision=precision)
    size = model.config.img_size
    x = model.normalize(torch.rand(args.batch, 3, size, size, device=device))
    peak = MatmulPeak(device, matmul_n(args, device), dtype=torch_dtype(precision)).sample(repeats=5)
    with inference_context(precision, device):
        flops = count_flops(model, x)
        for _ in range(args.warmup):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                model(x)
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] = by_kind.get(kind_of(event.key), 0.0) + event.self_cpu_time_total
    total = sum(by_kind.values())
    per_forward_ms = total / args.iters / 1e3  # an op's self time is wall time on the calling thread
    print(f"device: {device} ({cpu_name()}), CPU flags: {cpu_features()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"maniqa {args.size}, batch {args.batch}, {precision}; {flops / args.batch / 1e9:.1f} GFLOP/image; "
          f"{precision} matmul peak {peak:.0f} GFLOP/s; profiled forward ~{per_forward_ms:.0f} ms "
          "(profiler overhead included)\n")
    print("| kind | share of the forward |\n|---|---|")
    for kind in (*KINDS, "other"):
        print(f"| {kind} | {100 * by_kind.get(kind, 0.0) / total:.1f} % |")
    gemm_share = (by_kind.get("GEMM / conv", 0.0) + by_kind.get("fused attention", 0.0)) / total
    gemm_rate = flops / (per_forward_ms * gemm_share / 1e3) / 1e9
    print(f"\nGEMM rate (counted FLOPs over the GEMM, conv and fused-attention time alone): {gemm_rate:.0f} GFLOP/s "
          f"= {100 * gemm_rate / peak:.0f} % of the matmul peak; whole forward "
          f"{flops / per_forward_ms * 1e3 / 1e9:.0f} GFLOP/s = {100 * flops / per_forward_ms * 1e3 / 1e9 / peak:.0f} %")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_machine_arguments(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=("fp32", "auto", "bf16", "fp16"))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
