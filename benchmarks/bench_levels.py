"""Zero-shot level scores: what the level answers cost on top of MA-AGIQA's feature extraction, and zero-shot speed.

Side by side, interleaved (best of --repeats), on the same images and the same random-weight Qwen2-VL:

features           the paper's two questions, pooled hidden states (what `agiqa features extract` computes)
features + levels  the same questions with answer prefixes: level probabilities ride on the same forward
features, then a level pass   the same two outputs the naive way (a second forward for the level questions)
zero-shot score    `Scorer("vlm:<folder>")` end to end (decode + one quality question + expectation)

`--size tiny` is the tests' VLM (32-d, 56 px images); `--size small` a 512-d, 4-layer LM with a 4-block ViT on
224 px images (64 image tokens), where the sequence lengths resemble a real VLM's proportions. Random weights:
speed does not depend on the values.

    python benchmarks/bench_levels.py --size small --images 32
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "semantic"))


def small_qwen2_vl(seed: int = 0):
    """A Qwen2-VL with a 512-d, 4-layer LM and a 4-block ViT; its tokenizer knows the level words."""
    from _tiny import CORPUS, LEVEL_CORPUS, qwen2_vl

    text = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=4, embed_dim=256, hidden_size=512, num_heads=4, mlp_ratio=4)
    return qwen2_vl(text, vision, pixels=224 * 224, corpus=CORPUS + LEVEL_CORPUS, seed=seed)


def build(size: str):
    from _tiny import tiny_qwen2_vl

    return tiny_qwen2_vl(seed=0, level_words=True) if size == "tiny" else small_qwen2_vl()


def best_rate(run, images: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return images / min(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from agiqa.scoring.scorer import Scorer
    from agiqa.semantic import HFVLMEncoder
    from agiqa.semantic.base import PAPER_PROMPTS
    from agiqa.semantic.levels import LEVEL_QUESTIONS

    model, processor = build(args.size)
    side = 56 if args.size == "tiny" else 224
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(args.images)]
    answer = LEVEL_QUESTIONS["quality"][1]
    common = dict(precision="fp32", device="cpu")
    plain = HFVLMEncoder(model, processor, prompts=PAPER_PROMPTS, **common)
    levels = HFVLMEncoder(model, processor, prompts=PAPER_PROMPTS, answers=(answer, answer), **common)
    level_pass = HFVLMEncoder(model, processor, prompts=PAPER_PROMPTS, answers=(answer, answer), **common)

    def batched(encoder):
        return lambda: [encoder.encode(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]

    with tempfile.TemporaryDirectory() as folder:
        for part in (model, processor):
            part.save_pretrained(folder)
        paths = []
        for index, image in enumerate(images):
            paths.append(str(Path(folder) / f"{index}.png"))
            image.save(paths[-1])
        scorer = Scorer(f"vlm:{folder}", device="cpu", precision="fp32", batch_size=args.batch_size)
        runs = {
            "features": batched(plain),
            "features + levels": batched(levels),
            "features, then a level pass": lambda: (batched(plain)(), batched(level_pass)()),
            "zero-shot score": lambda: scorer.score(paths),
        }
        for run in runs.values():  # warm-up
            run()
        rates = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved, so that machine load hits every path alike
            for name, run in runs.items():
                rates[name].append(best_rate(run, args.images, 1))
    baseline = max(rates["features"])
    rows = []
    print(f"{args.size} Qwen2-VL, {args.images} images of {side}px, batch {args.batch_size}, CPU fp32, "
          f"{torch.get_num_threads()} threads (best of {args.repeats})")
    for name, values in rates.items():
        rate = max(values)
        rows.append({"path": name, "images_per_s": rate, "vs_features": rate / baseline})
        print(f"{name:30s} {rate:9.2f} img/s   {rate / baseline:5.2f}x features")
    return rows


if __name__ == "__main__":
    main()
