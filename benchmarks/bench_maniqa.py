"""MANIQA throughput benchmark: images/s, achieved GFLOP/s against a measured matmul peak, and peak memory.

    python benchmarks/bench_maniqa.py --size full --batch 1 8 --iters 3
    python benchmarks/bench_maniqa.py --size tiny --batch 1 8 32 --precision fp32 auto --compile

FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and attention; elementwise work is not counted). "needed" FLOPs are what our forward executes; the "official" line
adds the dead work the official code also runs (ViT blocks after the last hooked one, final norm; its classifier head
is not executed there either). Peak memory (warm-up + timed runs) is CUDA ``max_memory_allocated`` on GPU, else the
peak resident set size above the pre-run baseline (after ``malloc_trim``), sampled every 5 ms. Other processes
sharing the CPU lower the numbers: check ``uptime``.

Times are the best of ``--iters`` runs. The matmul peak each row is divided by ('mm now') is measured in the row's
own precision (bf16/fp16 rows need their own limit) and sampled between the timed runs, best of all samples, so that
a busy spell on a shared machine lowers neither side of the ratio alone; the median time is printed too.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import threading
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from agiqa.models import create_model
from agiqa.runtime import autocast, resolve_device, resolve_precision, torch_dtype
from agiqa.scoring.inference import prepare_model


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_features() -> str:
    """The CPU flags that decide precision and kernels (``agiqa.runtime.cpu_flags``), for the header line."""
    from agiqa.runtime import cpu_flags

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(flag for flag in wanted if flag in cpu_flags()) or "none of " + "/".join(wanted)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory during the block: CUDA allocator peak, or sampled RSS above the starting RSS (Linux)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() - self._base)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() - self._base)


def _release_cpu_memory() -> None:
    """Return freed heap to the OS (glibc) so the next RSS baseline does not include an earlier run's cache."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MatmulPeak:
    """GFLOP/s of an ``n x n`` ``torch.mm`` in ``dtype`` on ``device`` (the reference "machine limit").

    Operands and output are allocated once, so that sampling between model runs adds nothing to their peak memory;
    ``best`` is the fastest sample taken so far.
    """

    def __init__(self, device: torch.device, n: int, dtype=torch.float32):
        self.device = device
        self.n = n
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.out = torch.mm(self.a, self.b)
        self.best = 0.0

    def sample(self, repeats: int = 1) -> float:
        with torch.autocast(self.device.type, enabled=False):  # the operands' own dtype, also inside a timed row
            for _ in range(repeats):
                _sync(self.device)
                start = time.perf_counter()
                torch.mm(self.a, self.b, out=self.out)
                _sync(self.device)
                self.best = max(self.best, 2 * self.n**3 / (time.perf_counter() - start) / 1e9)
        return self.best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the fused CPU one; count it like the others.
_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_flops(fn, *args) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        fn(*args)
    return counter.get_total_flops()


def official_extra_flops(model, x) -> int:
    """FLOPs the official forward runs on top of ours: ViT blocks after the last hooked one and the final norm."""
    vit = model.vit
    with torch.inference_mode():
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for block in vit.blocks[: max(model.hooked_blocks) + 1]:
            tokens = block(tokens)

    def tail(t):
        for block in vit.blocks[max(model.hooked_blocks) + 1 :]:
            t = block(t)
        return vit.norm(t)

    return count_flops(tail, tokens)


def run(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "maniqa" if args.size == "full" else "test_maniqa"
    torch.manual_seed(0)
    base = create_model(name).eval().to(device)
    size = base.config.img_size
    peak_n = matmul_n(args, device)
    peak = MatmulPeak(device, peak_n).sample(repeats=5)
    x1 = torch.rand(1, 3, size, size, device=device)
    flops = count_flops(base, base.normalize(x1))
    extra = official_extra_flops(base, base.normalize(x1))
    print(f"device: {device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"CPU flags: {cpu_features()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"model: {name} {size}px; counted GFLOP/image: needed {flops / 1e9:.1f}, official forward "
          f"{(flops + extra) / 1e9:.1f} (dead work skipped: {extra / 1e9:.1f})")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (n={peak_n}); 'mm now' = the row's own-precision matmul peak, "
          "sampled between its timed runs; %peak = GFLOP/s / mm now (best run / best sample)")
    print(f"{'variant':<14}{'batch':>6}{'prec':>6}{'img/s':>10}{'s/img':>9}{'median':>9}{'GFLOP/s':>10}{'mm now':>8}"
          f"{'%peak':>7}{'peak MB':>9}")

    # The same images for every variant, so that the score differences below compare like with like.
    inputs = {batch: base.normalize(torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)))
              for batch in args.batch}
    variants = [(p, False) for p in args.precision]
    if args.compile:
        variants += [(p, True) for p in args.precision]
    reference = {}
    for precision_arg, compiled in variants:
        precision = resolve_precision(precision_arg, device)
        # As the Scorer prepares it: bf16 / fp16 keep the trunk's matmul weights in that dtype (a copy each).
        model = prepare_model(copy.deepcopy(base), device=device, compile=compiled, compile_mode=args.compile_mode,
                              precision=precision)
        for batch in args.batch:
            x = inputs[batch].to(device)
            peak_probe = MatmulPeak(device, peak_n, dtype=torch_dtype(precision))
            peak_probe.sample(repeats=3)
            _release_cpu_memory()
            with torch.inference_mode(), autocast(precision, device), PeakMemory(device) as mem:
                for _ in range(args.warmup):
                    out = model(x)
                _sync(device)
                times = []
                for _ in range(args.iters):
                    peak_probe.sample()  # interleaved: a busy spell on a shared machine hits both sides of the ratio
                    start = time.perf_counter()
                    out = model(x)
                    _sync(device)
                    times.append(time.perf_counter() - start)
            seconds = min(times)
            peak_now = peak_probe.best
            ips = batch / seconds
            gflops = flops * batch / seconds / 1e9
            label = f"{precision_arg}{'+compile' if compiled else ''}"
            print(f"{label:<14}{batch:>6}{precision:>6}{ips:>10.3f}{seconds / batch:>9.3f}"
                  f"{statistics.median(times) / batch:>9.3f}{gflops:>10.1f}{peak_now:>8.1f}"
                  f"{100 * gflops / peak_now:>6.0f}%"
                  f"{mem.peak / 2**20:>9.0f}", flush=True)
            key = (batch, compiled)
            if precision == "fp32":
                reference[key] = out.float().clone()  # compiled CUDA-graph outputs are reused buffers
            elif key in reference:
                diff = (out.float() - reference[key]).abs().max().item()
                print(f"{'':<14}max |score - fp32 score| = {diff:.2e}")


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """Model size, device, threads and the peak probe's size: shared with maniqa_stages.py."""
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--matmul-n", type=int, default=0, help="matrix side of the peak measurement (0 = by device)")


def matmul_n(args, device: torch.device) -> int:
    """``--matmul-n``, or a size that reaches the device's peak (CUDA) or stays in cache (CPU, tiny model)."""
    return args.matmul_n or (8192 if device.type == "cuda" else 2048 if args.size == "full" else 512)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_machine_arguments(parser)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--precision", nargs="+", default=["fp32", "auto"], choices=("fp32", "auto", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per row (the best one is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
