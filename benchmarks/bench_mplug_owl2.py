"""mPLUG-Owl2 feature extraction speed: our encoder (agiqa.semantic.owl2) on a checkpoint folder.

    python benchmarks/bench_mplug_owl2.py --folder /tmp/owl_parity/out/small --images 16 --batch-size 8 --threads 2

Runs `MplugOwl2Encoder.encode` (the paper's two questions, vision encoder + abstractor once per image, one batched
decoder forward) on generated images and prints images/s (best of `--repeats`), GFLOP per image counted with
`FlopCounterMode`, and the share of the fp32 (or the run's precision) matmul peak measured beside it. The official
code's figure for the same folder comes from benchmarks/parity_mplug_owl2/official_side.py --bench (its own
environment); the README there puts both side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_maniqa import MatmulPeak, count_flops, cpu_name  # noqa: E402

from agiqa.runtime import torch_dtype  # noqa: E402
from agiqa.semantic.mplug_owl2 import MplugOwl2Encoder  # noqa: E402


def generated_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Smooth colour ramps with noise, of three aspect ratios (padding to square is part of the work)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        width, height = ((512, 384), (384, 512), (448, 448))[i % 3]
        ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.3, 1.0, size=(1, 1, 3))
        noise = rng.normal(0, 20, size=(height, width, 3))
        images.append(Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)))
    return images


def measure(folder: str, n_images: int, batch_size: int, repeats: int, precision: str,
            image_dir: str | None = None) -> dict:
    """Best-of-`repeats` wall time of encoding `n_images` in batches; with `image_dir` the files are decoded
    inside the timed loop (as the release's getFeature.py loop does), else generated images are used."""
    encoder = MplugOwl2Encoder(folder, device="cpu", precision=precision)
    if image_dir:
        files = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))[:n_images]
        load = lambda batch: [Image.open(f).convert("RGB") for f in batch]  # noqa: E731
    else:
        files, load = generated_images(n_images), list
    n_images = len(files)
    encoder.encode(load(files[:batch_size]))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n_images, batch_size):
            encoder.encode(load(files[i:i + batch_size]))
        times.append(time.perf_counter() - start)
    flops = count_flops(encoder.encode, load(files[:1]))
    peak = MatmulPeak(torch.device("cpu"), 2048, torch_dtype(encoder.precision)).sample(repeats=5)
    best = min(times)
    achieved = flops * n_images / best / 1e9
    return {"folder": folder, "cpu": cpu_name(), "threads": torch.get_num_threads(), "precision": encoder.precision,
            "images": n_images, "batch_size": batch_size, "seconds": times, "images_per_s": n_images / best,
            "gflop_per_image": flops / 1e9, "gflop_per_s": achieved, "matmul_peak_gflop_per_s": peak,
            "share_of_peak": achieved / peak}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="an mPLUG-Owl2 checkpoint folder")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--image-dir", default=None, help="time on these image files (decoded in the loop)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.folder, args.images, args.batch_size, args.repeats, args.precision, args.image_dir)
    print(f"{result['cpu']}, {result['threads']} threads, {result['precision']}: {result['images_per_s']:.2f} "
          f"images/s (2 questions), {result['gflop_per_image']:.2f} GFLOP/image, {result['gflop_per_s']:.1f} "
          f"GFLOP/s = {100 * result['share_of_peak']:.0f} % of the {result['matmul_peak_gflop_per_s']:.0f} GFLOP/s "
          "matmul peak")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
