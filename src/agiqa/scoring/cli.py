"""`agiqa score`: folders / files (+ prompts) → one CSV row per image, best-of-N per prompt, failures reported."""
from __future__ import annotations

import sys

from agiqa.data.images import DEFAULT_MAX_PIXELS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score image files or folders with a trained model (CSV out, best-of-N per prompt)",
        description="Score images with a model directory (a training run's model/ folder or save_pretrained output) "
        "or a registered model name with weights. Writes one row per image (path, prompt, score, rank, best, error); "
        "unreadable images keep their row (empty score, the reason in `error`), are listed at the end and make "
        "the exit code 1.",
    )
    parser.add_argument("model", help="model directory, or a registered name such as maniqa.koniq10k")
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--weights", help="weights file for a registered model name (official .pt or .safetensors)")
    parser.add_argument("--prompts", help="CSV with columns image,prompt (image = file name or path); enables "
                        "best-of-N ranking among images of the same prompt")
    parser.add_argument("--encoder", help="VLM id or directory for MA-AGIQA's semantic features")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true",
                        help="run the model through torch.compile: slow first batches, faster after (mostly on GPUs)")
    parser.add_argument("--compile-mode",
                        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs); implies --compile")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse (report) images with more pixels than this (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--out", help="CSV to write (default: print to stdout)")
    parser.set_defaults(func=_score)


def _score(args) -> int:
    import pandas as pd

    from agiqa.scoring.scorer import Scorer, find_images

    files = find_images(args.paths)
    if not files:
        print("error: no image files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    prompts = _read_prompts(args.prompts, files) if args.prompts else None
    scorer = Scorer(args.model, pretrained=args.weights or True, device=args.device, precision=args.precision,
                    batch_size=args.batch_size, encoder=args.encoder, trust_remote_code=args.trust_remote_code,
                    compile=args.compile or args.compile_mode is not None, compile_mode=args.compile_mode,
                    max_pixels=args.max_pixels)
    result = scorer.score([str(f) for f in files], prompts)
    table = pd.DataFrame({"path": [str(f) for f in files], "prompt": prompts or [""] * len(files),
                          "score": result.scores})
    table = rank_within_prompt(table, lower_better=scorer.lower_better).assign(error=result.errors)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {len(table)} rows to {args.out}: {len(files) - len(result.failures)} scored, "
              f"{len(result.failures)} failed")
    else:
        print(table.to_csv(index=False), end="")
    if result.failures:
        print(f"{len(result.failures)} of {len(files)} image(s) could not be scored:", file=sys.stderr)
        for name, reason in result.failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def rank_within_prompt(table, lower_better: bool = False):
    """Add `rank` (1 = best) and `best` among the images of each prompt; failed images get no rank."""
    ranks = table.groupby("prompt")["score"].rank(ascending=lower_better, method="first")
    table = table.assign(rank=ranks.astype("Int64"))
    return table.assign(best=table["rank"] == 1)


def _read_prompts(csv_path: str, files: list) -> list[str]:
    import pandas as pd

    from agiqa.errors import AgiqaError

    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing_cols = {"image", "prompt"} - set(frame.columns)
    if missing_cols:
        raise AgiqaError(f"{csv_path}: missing column(s) {sorted(missing_cols)}; found {list(frame.columns)}")
    by_name = dict(zip(frame["image"], frame["prompt"]))
    prompts, unmatched = [], []
    for path in files:
        prompt = by_name.get(str(path), by_name.get(path.name))
        if prompt is None:
            unmatched.append(str(path))
        prompts.append(prompt or "")
    if unmatched:
        raise AgiqaError(f"{csv_path} has no prompt for {len(unmatched)} image(s), e.g. {unmatched[:5]}")
    return prompts
