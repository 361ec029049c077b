"""`agiqa score` end to end against the model alone: is the data path (listing, decoding, resizing, writing shards)
ever the bottleneck?

    python benchmarks/bench_score.py --out /tmp/bench_score                       # tiny + full MANIQA, 0/1/2 workers
    python benchmarks/bench_score.py --out /tmp/b --models tiny --images 64 --rss 200 1000

For each model: "model only" scores pre-decoded, pre-processed tensors (`Scorer.predict` on batches made once
beforehand); "workers N" runs the whole streaming job (`ScoreJob.run`: list, decode, preprocess, score, write
Parquet shards) with N data-loader workers on the same JPEGs; the ratio is end-to-end / model-only images/s. The
paths run interleaved `--repeats` times and each keeps its best (other processes on the machine lower both sides).
Images are synthetic `--size`² JPEGs (smooth gradients + noise, quality 90: a few hundred KB like generated
images). `--rss A B` runs `agiqa score` on A and then B small images in fresh processes (`--workers 0`) and prints
the peak resident memory of each: it must not grow with the number of inputs.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agiqa.models import create_model
from agiqa.scoring.job import ScoreJob
from agiqa.scoring.scorer import Scorer
from agiqa.scoring.shards import ShardStore
from agiqa.scoring.sources import find_images
from agiqa.scoring.stream import item_source

MODELS = {"tiny": ("test_ma_agiqa", {"semantic_experts": ()}), "maniqa": ("maniqa", {})}


def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """`n` smooth-plus-noise JPEGs of `size`² (written once; reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if path.is_file():
            continue
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        base = ramp[:, None, None] * colours[0] + ramp[None, :, None] * (255 - colours[1])
        noise = rng.normal(0, 12, (size, size, 3)).astype(np.float32)
        Image.fromarray(np.clip(base / 2 + noise + 64, 0, 255).astype(np.uint8)).save(path, quality=90)
    return [str(p) for p in find_images([folder])[:n]]


def model_only(scorer: Scorer, files: list[str]) -> float:
    """images/s of `Scorer.predict` on batches decoded and preprocessed beforehand (one warm-up batch)."""
    from agiqa.data.images import decode_image

    batches = []
    for start in range(0, len(files), scorer.batch_size):
        images = [decode_image(f, f) for f in files[start:start + scorer.batch_size]]
        batches.append(scorer.preprocess(images, None))
    scorer.predict(batches[0])
    start = time.perf_counter()
    for batch in batches:
        scorer.predict(batch)
    return len(files) / (time.perf_counter() - start)


def end_to_end(scorer: Scorer, folder: Path, workers: int, work: Path) -> float:
    """images/s of the whole streaming job into fresh Parquet shards (one warm-up batch first)."""
    scorer.predict(scorer.preprocess([Image.new("RGB", (64, 64))], None))
    store = ShardStore(Path(tempfile.mkdtemp(dir=work)))
    job = ScoreJob(item_source([str(folder)]), store, {"bench": True}, block_size=256, log_every=1e9)
    start = time.perf_counter()
    job.prepare()
    job.run(scorer, num_workers=workers)
    job.finish()
    return job.total / (time.perf_counter() - start)


def peak_rss_mb(model_dir: Path, folder: Path, out: Path) -> float:
    """Peak resident memory (MB) of `agiqa score MODEL FOLDER --workers 0 --out OUT` in a fresh process."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    command = [sys.executable, "-c", code, sys.executable, "-m", "agiqa", "score", str(model_dir), str(folder),
               "--device", "cpu", "--workers", "0", "--out", str(out), "--log-every", "1e9"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder (images, shards)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--images", type=int, nargs="+", default=[256, 24],
                        help="images per model (one number for all, or one per --models entry)")
    parser.add_argument("--size", type=int, default=1024, help="JPEG side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all paths; the best of each is kept")
    parser.add_argument("--rss", type=int, nargs="*", default=[1000, 20000],
                        help="input counts for the peak-RSS runs (tiny model, 32 px PNGs); none: skip")
    args = parser.parse_args(argv)
    work = Path(args.out)
    counts = args.images * len(args.models) if len(args.images) == 1 else args.images
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {args.size}² JPEG, "
          f"batch {args.batch_size}")
    print(f"{'model':8} {'path':12} {'images':>6} {'img/s':>8} {'vs model':>9}")
    rows = []
    for name, n in zip(args.models, counts):
        folder = work / f"jpeg{args.size}"
        files = write_jpegs(folder / name, n, args.size)
        scorer = Scorer(saved_model(work, name), device="cpu", batch_size=args.batch_size, precision="auto")
        best: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, best of each: a busy spell does not favour one path
            best["model only"] = max(best.get("model only", 0.0), model_only(scorer, files))
            for workers in args.workers:
                rate = end_to_end(scorer, folder / name, workers, work)
                best[f"workers {workers}"] = max(best.get(f"workers {workers}", 0.0), rate)
        rows += [{"model": name, "path": path, "images": n, "rate": rate, "ratio": rate / best["model only"]}
                 for path, rate in best.items()]
        for row in rows[-1 - len(args.workers):]:
            print(f"{row['model']:8} {row['path']:12} {row['images']:>6} {row['rate']:>8.2f} {row['ratio']:>8.0%}")
    if args.rss:
        tiny = saved_model(work, "tiny")
        for n in args.rss:
            folder = work / f"png32x{n}"
            write_small(folder, n)
            out = Path(tempfile.mkdtemp(dir=work)) / "scores"
            mb = peak_rss_mb(tiny, folder, out)
            rows.append({"model": "tiny", "path": "peak RSS", "images": n, "rss_mb": mb})
            print(f"peak RSS scoring {n} images: {mb:.0f} MB")
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    return rows


def saved_model(work: Path, name: str) -> Path:
    """A seeded random-weight model of `MODELS[name]` saved under `work/models/` (weights do not change speed)."""
    folder = work / "models" / name
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        arch, overrides = MODELS[name]
        create_model(arch, **overrides).save_pretrained(folder)
    return folder


def write_small(folder: Path, n: int) -> None:
    """`n` 32 px PNGs for the memory runs (size does not matter there; the count does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        path = folder / f"{i:06d}.png"
        if not path.is_file():
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


if __name__ == "__main__":
    main()
