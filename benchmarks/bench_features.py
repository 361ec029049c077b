"""Semantic-feature throughput: the official recipe ported naively vs `agiqa.semantic.HFVLMEncoder`.

naive  = what MA-AGIQA's getFeature.py does, per question: one forward for the logits, a second forward with
         `output_hidden_states=True`, mean of `hidden_states[-1]` (so 2 passes x P questions per image batch, the
         vision tower run each time, LM head computed).
ours   = one forward per image batch for all questions (B x P right-padded sequences, base model without the LM
         head, masked mean), vision tower once per image (`mm_encoder_outputs`).
ours_no_reuse = ours without sharing the vision outputs (to show what each part buys).

Random weights throughout: speed does not depend on the values. Default: the tiny Qwen2-VL of the tests on CPU.
`--real-size` builds a Qwen2-VL-7B-sized config (hidden 3584, 28 layers, ViT 32 x 1280, 448 px images) on the GPU.

    python benchmarks/bench_features.py                       # tiny, CPU
    python benchmarks/bench_features.py --real-size --images 32 --batch-size 8   # GPU
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "semantic"))


def real_size_qwen2_vl(device: torch.device, dtype: torch.dtype, layers: int | None = None):
    """Qwen2-VL-7B dimensions with random weights, built directly on `device` in `dtype`."""
    from _tiny import qwen2_vl

    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers or 28, num_attention_heads=28,
                num_key_value_heads=4, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)
    model, processor = qwen2_vl(text, vision, pixels=448 * 448, vocab_size=152064, device=device, dtype=dtype)
    return model, processor, 448


def _images(n: int, side: int) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (side, side + (i % 3) * 8, 3), dtype=np.uint8)) for i in range(n)]


@torch.inference_mode()
def naive_encode(encoder, images: list[Image.Image]) -> torch.Tensor:
    """The official recipe: per question, a logits pass and a hidden-states pass over the image batch."""
    model, processor = encoder.model, encoder.processor
    dtype = next(model.parameters()).dtype
    per_prompt = []
    for question in encoder.prompts:
        text = encoder.render(question)
        inputs = processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
        inputs = {k: (v.to(encoder.device, dtype) if v.is_floating_point() else v.to(encoder.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        model(**inputs)  # the official script's first pass (logits, unused for the features)
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        per_prompt.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu())
    return torch.stack(per_prompt, dim=1)


def _time_all(fns: dict, images, batch_size, repeats, sync) -> dict[str, float]:
    """Images/s per method, best of `repeats` rounds; methods interleave within each round so that load from
    other processes on a shared machine hits them alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up
        fn(images[:batch_size])
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                fn(images[i:i + batch_size])
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(images) / seconds for name, seconds in best.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-size", action="store_true", help="Qwen2-VL-7B-sized random model (needs a GPU)")
    parser.add_argument("--layers", type=int, default=None, help="override the LLM depth of --real-size")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    from agiqa.runtime import resolve_device, resolve_precision, torch_dtype
    from agiqa.semantic import HFVLMEncoder

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if args.real_size:
        model, processor, side = real_size_qwen2_vl(device, torch_dtype(precision), args.layers)
    else:
        from _tiny import tiny_qwen2_vl

        model, processor = tiny_qwen2_vl(seed=0)
        side = 56
    images = _images(args.images, side)
    ours = HFVLMEncoder(model, processor, name="bench", device=device, precision=precision)
    plain = HFVLMEncoder(model, processor, name="bench", device=device, precision=precision, reuse_vision=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # Same numbers from all three (up to the precision), then time them.
    a, b = naive_encode(ours, images[:2]), ours.encode(images[:2])
    max_diff = float((a - b).abs().max())
    results = {"device": str(device), "precision": precision, "real_size": args.real_size,
               "n_prompts": len(ours.prompts), "images": args.images, "batch_size": args.batch_size,
               "max_abs_diff_naive_vs_ours": max_diff}
    speeds = _time_all({"naive": lambda x: naive_encode(ours, x), "ours_no_reuse": plain.encode, "ours": ours.encode},
                       images, args.batch_size, args.repeats, sync)
    results.update({f"{name}_img_per_s": value for name, value in speeds.items()})
    results["speedup_ours_vs_naive"] = results["ours_img_per_s"] / results["naive_img_per_s"]
    results["speedup_no_reuse_vs_naive"] = results["ours_no_reuse_img_per_s"] / results["naive_img_per_s"]
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
        results["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
