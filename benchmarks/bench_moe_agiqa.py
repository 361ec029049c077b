"""MoE-AGIQA inference cost: seconds per image by number of crops, GFLOP per image by branch, share of a measured
matmul peak, and what cutting the degradation ViT after its last hooked block saves.

    python benchmarks/bench_moe_agiqa.py --size full --crops 15 5 1 --iters 2       # CPU: several minutes
    python benchmarks/bench_moe_agiqa.py --size full --crops 15 3 --batch 1 4 --precision fp32 auto
    python benchmarks/bench_moe_agiqa.py --size tiny --crops 15 5 1 --iters 3          # seconds (the smoke test)

``--size full`` is the released v2 (``moe_agiqa``) with random weights: nothing is downloaded (no checkpoint, no
ImageNet weights, the offline ``synth`` tokenizer; prompts are padded to 35 tokens, so their words change no cost).
``--size tiny`` is ``test_moe_agiqa``. Inputs: 512 x 512 noise images through ``model.processor(num_crops=K)``
(K seeded 224 px crops, the prompt image, tokens); "prep" is the processor's time, every other time is
``model(**batch)`` alone, in eval mode under ``torch.inference_mode()`` (+ autocast for bf16 / fp16; the model prepared
as the Scorer prepares it: in bf16 / fp16 its trunk's matmul weights are kept in that dtype). Times are the
best of ``--iters`` runs after ``--warmup`` (median too).

Cost per image = BLIP semantic branch (ViT-L/16 on the prompt image + BERT text encoder: once per image) + K x
(degradation ViT-B/16 blocks 0..7 + prior ViT-B/16 + regressor: once per crop). FLOPs are counted with
``FlopCounterMode`` as in bench_maniqa.py (matmuls, convolutions, attention; no elementwise work) on one crop, and
scaled by K.

The last table times, on the same crops, our pruned degradation ViT (``forward_intermediates(stop_early=True)``)
against what the official code runs: timm's whole ``vit_base_patch16_224`` forward (all 12 blocks, final norm,
1000-class head; same weights for the shared blocks, same attention kernel) with forward hooks on blocks 4..7. The
two and our whole model on the same image are interleaved in one run, so a busy spell hits all three and the
saved share of the whole model's time compares like with like.

"mm GFLOP/s" is the row's own-precision ``n x n`` matmul, sampled between its timed runs (best sample), and % peak =
GFLOP/s of the best run / that. A best-of sample stays high under contention, so also read "CPU %" (the process's CPU
time / (wall time x threads): it drops when other processes take our cores) and the load average (as ``uptime``),
printed at the start, per row and at the end: other processes sharing the CPU lower every number.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: a hub call would be a bug, fail instead of waiting

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from bench_maniqa import (MatmulPeak, PeakMemory, _release_cpu_memory, _sync, add_machine_arguments, count_flops,
                          cpu_features, cpu_name, matmul_n)
from agiqa.data.synth import prompt_vocabulary
from agiqa.models import create_model
from agiqa.models.maniqa import ManiqaViTAttention
from agiqa.runtime import autocast, resolve_device, resolve_precision, torch_dtype
from agiqa.scoring.inference import prepare_model

# Every config field that would read or fetch weights (or a tokenizer) while the model is built, switched off.
OFFLINE = dict(backbone_pretrained=False, prior_checkpoint=None, semantic_checkpoint=None, tokenizer="synth")


class OfficialDegradationViT(nn.Module):
    """The official degradation branch: timm's whole ViT-B/16 forward (every block, final norm, head), the hooked
    blocks' outputs caught by forward hooks, CLS dropped, concatenated -> (N, feature_dim, g, g) like
    ``MoeAgiqa.forward_degradation``. The shared blocks get the model's weights, so the outputs must agree."""

    def __init__(self, model):
        super().__init__()
        c = model.config
        self.grid = c.grid_size
        self.vit = timm.create_model(c.backbone_name, pretrained=False, attn_layer=ManiqaViTAttention,
                                     img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
                                     depth=c.vit_depth, num_heads=c.vit_num_heads)
        missing, unexpected = self.vit.load_state_dict(model.degradation_vit.state_dict(), strict=False)
        dead = tuple(f"blocks.{i}." for i in range(max(c.hooked_blocks) + 1, c.vit_depth)) + ("norm.", "head.")
        assert not unexpected and all(key.startswith(dead) for key in missing), (missing, unexpected)
        self._caught: list[torch.Tensor] = []
        for i in c.hooked_blocks:
            self.vit.blocks[i].register_forward_hook(lambda module, inputs, output: self._caught.append(output))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        self._caught.clear()
        self.vit(crops)
        feats = torch.cat([out[:, 1:] for out in self._caught], dim=2)
        self._caught.clear()
        return feats.transpose(1, 2).unflatten(2, (self.grid, self.grid))


def branch_flops(model, batch: dict) -> dict[str, int]:
    """FLOPs of each branch for one image with one crop (``batch`` from ``processor(num_crops=1)``)."""
    crop = batch["crops"][:, 0]
    flops = {
        f"degradation ViT (blocks 0-{max(model.config.hooked_blocks)})": count_flops(model.forward_degradation, crop),
        "prior ViT": count_flops(model.forward_prior, crop),
        "BLIP semantic": count_flops(model.forward_semantic, batch["prompt_image"], batch["input_ids"],
                                     batch["attention_mask"]),
    }
    flops["regressor"] = count_flops(model, *(batch[name] for name in model.input_names)) - sum(flops.values())
    return flops


def per_image(flops: dict[str, int], crops: int) -> int:
    """Everything but the semantic branch runs once per crop."""
    return sum(v if name == "BLIP semantic" else crops * v for name, v in flops.items())


def timed(fns: dict, iters: int, warmup: int, probe: MatmulPeak, device) -> tuple[dict, dict]:
    """Seconds of each ``fns`` call per run (the functions interleaved, a matmul-peak sample before each run) and
    each one's CPU use: process CPU time / (wall time x torch threads), below 100% when others took our cores."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times, cpu = {name: [] for name in fns}, dict.fromkeys(fns, 0.0)
    for _ in range(iters):
        probe.sample()
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - start_cpu
    return times, {name: cpu[name] / sum(times[name]) / torch.get_num_threads() for name in fns}


def md_row(cells) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def md_header(cells) -> None:
    md_row(cells)
    md_row("---" for _ in cells)


def g(x: float) -> str:
    return f"{x:.4g}"


def as_scored(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """A copy of ``model`` prepared as the Scorer prepares it for ``precision`` (bf16 / fp16: trunk weights kept in
    that dtype)."""
    return prepare_model(copy.deepcopy(model), device=device, precision=precision)


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def run(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "moe_agiqa" if args.size == "full" else "test_moe_agiqa"
    torch.manual_seed(0)
    start = time.perf_counter()
    model = prepare_model(create_model(name, pretrained=False, **OFFLINE), device=device)
    official = OfficialDegradationViT(model).to(device).eval()
    built = time.perf_counter() - start
    c = model.config
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
              for _ in range(max(args.batch))]
    prompts = [" ".join(prompt_vocabulary()[5 + i: 17 + i]) for i in range(len(images))]

    def inputs(crops: int, batch: int) -> dict:
        out = model.processor(num_crops=crops)(images[:batch], prompts[:batch])
        return {key: value.to(device) for key, value in out.items()}

    peak_n = matmul_n(args, device)
    peak = MatmulPeak(device, peak_n).sample(repeats=5)
    one = inputs(1, 1)
    flops = branch_flops(model, one)
    print(f"device: {device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"CPU flags: {cpu_features()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load avg (1/5/15 min) {load()}")
    print(f"model: {name} (random weights, built in {built:.1f} s), crops {c.img_size}px, prompt image "
          f"{c.blip_image_size}px, {c.max_prompt_tokens} prompt tokens; fp32 matmul peak {peak:.1f} GFLOP/s "
          f"(n={peak_n})")

    print("\n### GFLOP by branch (counted on one crop; the semantic branch runs once per image)\n")
    md_header(["branch", "runs per image", "GFLOP per run", *(f"GFLOP/image, K={k}" for k in args.crops)])
    for branch, value in flops.items():
        runs = "1" if branch == "BLIP semantic" else "K (crops)"
        md_row([branch, runs, g(value / 1e9),
                *(g((value if runs == "1" else k * value) / 1e9) for k in args.crops)])
    md_row(["total", "", "", *(g(per_image(flops, k) / 1e9) for k in args.crops)])

    print(f"\n### Throughput (eval, inference_mode; best of {args.iters}, warm-up {args.warmup})\n")
    md_header(["prec", "crops", "batch", "s/image", "images/s", "median s/image", "prep s/image", "GFLOP/image",
               "GFLOP/s", "mm GFLOP/s", "% peak", "peak MB", "CPU %", "load"])
    seconds_per_image = {}
    for precision_arg in args.precision:
        precision = resolve_precision(precision_arg, device)
        label = precision if precision == precision_arg else f"{precision_arg}={precision}"
        scorer_model = as_scored(model, precision, device)
        for crops in args.crops:
            for batch_size in args.batch:
                start = time.perf_counter()
                batch = inputs(crops, batch_size)
                prep = (time.perf_counter() - start) / batch_size
                probe = MatmulPeak(device, peak_n, dtype=torch_dtype(precision))
                probe.sample(repeats=3)
                _release_cpu_memory()
                with torch.inference_mode(), autocast(precision, device), PeakMemory(device) as mem:
                    times, cpu = timed({"model": lambda: scorer_model(**batch)}, args.iters, args.warmup, probe,
                                       device)
                times = times["model"]
                best = min(times) / batch_size
                seconds_per_image[precision_arg, crops, batch_size] = best
                gflops = per_image(flops, crops) / best / 1e9
                md_row([label, crops, batch_size, g(best), g(1 / best), g(statistics.median(times) / batch_size),
                        g(prep), g(per_image(flops, crops) / 1e9), g(gflops), g(probe.best),
                        f"{g(100 * gflops / probe.best)}%", f"{mem.peak / 2**20:.0f}", f"{100 * cpu['model']:.0f}%",
                        f"{os.getloadavg()[0]:.2f}"])

    crops = max(args.crops)
    cut = crops * next(iter(flops.values()))  # the degradation ViT's
    whole = crops * count_flops(official, one["crops"][:, 0])
    dead = f"blocks {max(c.hooked_blocks) + 1}-{c.vit_depth - 1} + final norm + head" \
        if max(c.hooked_blocks) + 1 < c.vit_depth else "final norm + head"
    print(f"\n### Degradation ViT on the {crops} crops of one image: pruned (ours) vs whole timm forward + hooks "
          f"(official), interleaved with our whole model on the same image\n")
    md_header(["prec", "forward", "s (best)", "median s", "GFLOP", "GFLOP/s", "mm GFLOP/s", "% peak", "CPU %"])
    summary = []
    for precision_arg in args.precision:
        precision = resolve_precision(precision_arg, device)
        label = precision if precision == precision_arg else f"{precision_arg}={precision}"
        batch = inputs(crops, 1)
        flat = batch["crops"].flatten(0, 1)
        scorer_model = as_scored(model, precision, device)
        probe = MatmulPeak(device, peak_n, dtype=torch_dtype(precision))
        probe.sample(repeats=3)
        with torch.inference_mode(), autocast(precision, device):
            # pruned and official share weights (fp32, cast by autocast): the pair differs by the pruning alone
            times, cpu = timed({"pruned": lambda: model.forward_degradation(flat),
                                "official": lambda: official(flat), "whole model": lambda: scorer_model(**batch)},
                               args.iters, args.warmup, probe, device)
            diff = (model.forward_degradation(flat).float() - official(flat).float()).abs().max().item()
        for forward, counted in (("pruned", cut), ("official", whole), ("whole model", per_image(flops, crops))):
            best = min(times[forward])
            md_row([label, forward, g(best), g(statistics.median(times[forward])), g(counted / 1e9),
                    g(counted / best / 1e9), g(probe.best), f"{g(100 * counted / best / 1e9 / probe.best)}%",
                    f"{100 * cpu[forward]:.0f}%"])
        saved = min(times["official"]) - min(times["pruned"])
        summary.append(f"{label}: official / pruned = x{min(times['official']) / min(times['pruned']):.2f} time, "
                       f"x{whole / cut:.2f} GFLOP; skipping {dead} saves {saved:.3g} s and {(whole - cut) / 1e9:.4g} "
                       f"GFLOP per image = {100 * saved / min(times['whole model']):.1f}% of the whole model's time "
                       f"({100 * (whole - cut) / per_image(flops, crops):.1f}% of its GFLOP) at {crops} crops; "
                       f"max |pruned - official features| = {diff:.2e}")
    print("", *summary, sep="\n")
    print(f"load avg at the end (1/5/15 min): {load()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_machine_arguments(parser)
    parser.add_argument("--crops", type=int, nargs="+", default=[15, 5, 1], help="crops per image (15 as released)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="images per forward")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "auto", "bf16", "fp16"))
    parser.add_argument("--iters", type=int, default=2, help="timed runs per row (the best one is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=512, help="side of the square noise images")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
