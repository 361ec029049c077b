"""How far bf16 scores are from fp32 scores: the accuracy bound of ``precision="auto"`` on bf16 CPUs and GPUs.

    python benchmarks/bench_bf16_accuracy.py --model maniqa --n 2000                  # ~45 min on 2 Xeon cores
    python benchmarks/bench_bf16_accuracy.py --model moe_agiqa --n 500 --crops 1      # MoE-AGIQA, one crop
    python benchmarks/bench_bf16_accuracy.py --model test_maniqa --n 64 --image-size 32   # seconds (smoke test)

Images are a synthetic AGIQA set drawn by ``agiqa.data.synth`` (``--image-size`` px, seeded; prompts from its
vocabulary). The model is built twice from the same seed with random weights (no released weights here) and run the
way ``agiqa score`` runs it: ``prepare_model(..., precision=p)`` (in bf16 the trunk's matmul weights are kept in
bf16) under ``inference_context(p)``, MANIQA on the image resized to its input size, MoE-AGIQA through its
processor with ``--crops`` seeded crops (one crop is the hardest case: averaging crops averages the rounding too).

Printed: max and mean |bf16 - fp32| against the spread of the fp32 scores, SRCC / PLCC / KRCC between the two score
lists, and best-of-N: the images cut into groups of N in order (as N generations of one prompt would be), how many
groups pick a different best image in bf16, and the fp32 gap between the two images that swapped.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: a hub call would be a bug, fail instead of waiting

import numpy as np
import torch
from PIL import Image
from scipy import stats

from bench_maniqa import cpu_features, cpu_name
from agiqa.data.synth import generate_synthetic
from agiqa.models import create_model, model_scores
from agiqa.runtime import resolve_device
from agiqa.scoring.inference import inference_context, prepare_model
from agiqa.scoring.scorer import ResizeNormalize

OFFLINE_MOE = dict(backbone_pretrained=False, prior_checkpoint=None, semantic_checkpoint=None, tokenizer="synth")


def build(name: str, seed: int) -> torch.nn.Module:
    """The model ``name`` with seeded random weights (MANIQA's score head biased off ReLU's zero, as trained heads
    are: a head stuck at 0 would make every score equal)."""
    torch.manual_seed(seed)
    kwargs = OFFLINE_MOE if "moe" in name else {}
    model = create_model(name, pretrained=False, **kwargs).eval()
    if hasattr(model, "fc_score"):
        with torch.no_grad():
            model.fc_score[3].bias.fill_(0.5)
    return model


def batches(model, images: list[Image.Image], prompts: list[str], batch: int, crops: int):
    """Model inputs for consecutive slices of ``images``, as ``agiqa score`` prepares them."""
    if hasattr(model, "processor"):
        processor = model.processor(num_crops=crops)
        for start in range(0, len(images), batch):
            yield processor(images[start:start + batch], prompts[start:start + batch])
        return
    resize = ResizeNormalize(int(model.config.img_size))
    for start in range(0, len(images), batch):
        yield resize(images[start:start + batch])


def scores(model, inputs: list[dict], precision: str, device: torch.device) -> np.ndarray:
    model = prepare_model(model, device, precision=precision)
    out = []
    with inference_context(precision, device):
        for batch in inputs:
            out.append(model_scores(model, {key: value.to(device) for key, value in batch.items()}).float().cpu())
    return torch.cat(out).numpy()


def best_of_n(reference: np.ndarray, low: np.ndarray, n: int) -> tuple[int, int, float]:
    """(groups, groups whose best image differs, largest fp32 gap between a swapped pair)."""
    groups = len(reference) // n
    ref, other = reference[: groups * n].reshape(groups, n), low[: groups * n].reshape(groups, n)
    picked_ref, picked_low = ref.argmax(1), other.argmax(1)
    swapped = np.flatnonzero(picked_ref != picked_low)
    gaps = ref[swapped, picked_ref[swapped]] - ref[swapped, picked_low[swapped]]
    return groups, len(swapped), float(gaps.max()) if len(gaps) else 0.0


def run(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        meta = generate_synthetic(folder, n=args.n, seed=args.seed, image_size=args.image_size)
        images = [Image.open(os.path.join(folder, name)).convert("RGB") for name in meta["name"]]
        prompts = list(meta["prompt"])
    base = build(args.model, args.seed)
    inputs = list(batches(base, images, prompts, args.batch, args.crops))
    print(f"device: {device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"CPU flags: {cpu_features()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: {args.model} (random weights, seed {args.seed}); {args.n} synthetic images of {args.image_size} px"
          + (f"; {args.crops} crop(s)" if hasattr(base, "processor") else ""), flush=True)
    results = {}
    for precision in ("fp32", args.low):
        start = time.perf_counter()
        results[precision] = scores(copy.deepcopy(base), inputs, precision, device)
        seconds = time.perf_counter() - start
        print(f"{precision}: {seconds:.1f} s ({seconds / args.n:.3f} s/image)", flush=True)
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.save(os.path.join(args.save, f"{args.model}_{precision}_scores.npy"), results[precision])
    ref, low = results["fp32"], results[args.low]
    diff = np.abs(low - ref)
    print(f"\n| {args.low} vs fp32 | value |\n|---|---|")
    print(f"| fp32 scores: mean, std, range | {ref.mean():.4g}, {ref.std():.3g}, {ref.min():.4g} .. {ref.max():.4g} |")
    print(f"| max \\|Δscore\\| | {diff.max():.2e} ({diff.max() / ref.std():.2e} of the fp32 std) |")
    print(f"| mean \\|Δscore\\| | {diff.mean():.2e} |")
    print(f"| SRCC / PLCC / KRCC | {stats.spearmanr(ref, low)[0]:.6f} / {stats.pearsonr(ref, low)[0]:.6f} / "
          f"{stats.kendalltau(ref, low)[0]:.6f} |")
    for n in args.best_of:
        groups, swapped, gap = best_of_n(ref, low, n)
        print(f"| best-of-{n}: groups whose pick changes | {swapped} of {groups}"
              + (f" (largest fp32 gap between the swapped pair {gap:.2e})" if swapped else "") + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="maniqa", choices=("maniqa", "moe_agiqa", "test_maniqa", "test_moe_agiqa"))
    parser.add_argument("--n", type=int, default=2000, help="synthetic images")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--crops", type=int, default=1, help="MoE-AGIQA crops per image")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--best-of", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--low", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--save", default="", help="folder: each precision's scores as <model>_<precision>_scores.npy "
                        "as soon as that pass ends (a long run keeps what it measured)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
