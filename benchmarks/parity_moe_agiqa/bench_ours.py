"""Speed, our side: ``moe_agiqa`` prepared as the Scorer prepares it, against the released eval loop
(bench_official.py).

    HF_HUB_OFFLINE=1 /work/main/.venv/bin/python bench_ours.py [DIR] [--precisions fp32 auto] [--repeats 3]
        [--threads 2]

Converts DIR's official files (``convert_official_checkpoint`` on best.pth / prior.pth / degradation_vit.pth, strict
load, ``label_scale=1`` so the scores are the regressor's as released), then per precision: ``prepare_model(model,
"cpu", precision=p)`` (auto on a bf16 CPU keeps the trunk's matmul weights in bf16, which cannot be undone, so fp32
runs first on the same model) and ``model(crops, prompt_image, input_ids, attention_mask)`` under
``inference_context(p, "cpu")`` on the same images, crops, prompt images and tokens, in bench_official.py's batches.
Prints s/image (best of ``--repeats`` per batch after one warm-up pass, summed, / images), official/ours and
max |score - official score|. Exit 1 when fp32 differs by more than 1e-5.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from agiqa.models import create_model
from agiqa.models.moe_agiqa import convert_official_checkpoint
from agiqa.scoring.inference import inference_context, prepare_model
from bench_official import machine_header

FP32_TOL = 1e-5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, nargs="?", default=Path("/tmp/moe_bench"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = torch.load(args.dir / "bench_official.pt", weights_only=False)  # written by bench_official.py
    inputs = torch.load(args.dir / "bench_inputs.pt")
    step, n = ref["batch"], ref["images"]
    batches = [{key: value[start:start + step] for key, value in inputs.items()} for start in range(0, n, step)]

    model = create_model("moe_agiqa", pretrained=False, label_scale=1.0)
    model.load_state_dict(convert_official_checkpoint(args.dir / "best.pth", args.dir / "prior.pth",
                                                      args.dir / "degradation_vit.pth"), strict=True)
    print(machine_header())
    print(f"official side: {ref['machine']}")
    print(f"{n} images x {ref['crops']} crops, batch {step}, best of {args.repeats} after 1 warm-up; official "
          f"{ref['versions']}, its {ref['threads']} threads")
    print(f"{'':>14} {'s/image':>8} {'median':>8} {'official/ours':>14} {'max|diff|':>10} {'rel':>9}  prepare")
    print(f"{'official fp32':>14} {ref['s_per_image_best']:8.3f} {ref['s_per_image_median']:8.3f}")
    ok = True
    for precision in args.precisions:
        start = time.perf_counter()
        model = prepare_model(model, "cpu", precision=precision)
        prepare_s = time.perf_counter() - start
        with inference_context(precision, "cpu") as resolved:
            scores = torch.cat([model(**batch).float() for batch in batches])  # warm-up pass
            times = [[] for _ in batches]
            for _ in range(args.repeats):
                for i, batch in enumerate(batches):
                    start = time.perf_counter()
                    model(**batch)
                    times[i].append(time.perf_counter() - start)
        best = sum(min(t) for t in times) / n
        median = sum(statistics.median(t) for t in times) / n
        diff = (scores.double() - ref["scores"].double()).abs().max().item()
        rel = diff / ref["scores"].abs().max().item()
        label = f"ours {precision}" + (f"={resolved}" if precision != resolved else "")
        print(f"{label:>14} {best:8.3f} {median:8.3f} {ref['s_per_image_best'] / best:13.2f}x {diff:10.2e} "
              f"{rel:9.2e}  {prepare_s:.2f} s")
        if resolved == "fp32":
            ok &= diff <= FP32_TOL
    print(f"official scores {ref['scores'].tolist()}\nours (last row) {scores.tolist()}")
    print(machine_header())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
