"""`agiqa score`: folders / files (+ prompts) → one CSV row per image, best-of-N per prompt, failures reported."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

from agiqa.data.images import DEFAULT_MAX_PIXELS
from agiqa.errors import AgiqaError


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

    files = [str(f) for f in find_images(args.paths)]
    if not files:
        print("error: no image files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    prompts = _read_prompts(args.prompts, files) if args.prompts else [""] * len(files)
    scorer = Scorer(args.model, pretrained=args.weights or True, device=args.device, precision=args.precision,
                    batch_size=args.batch_size, encoder=args.encoder, trust_remote_code=args.trust_remote_code,
                    compile=args.compile or args.compile_mode is not None, compile_mode=args.compile_mode,
                    max_pixels=args.max_pixels)
    progress = PartialScores(args.out, _setup(args)) if args.out else None
    done = progress.read() if progress else {}
    todo = [i for i, path in enumerate(files) if path not in done]
    if done:
        print(f"resuming {progress.path}: {len(files) - len(todo)} of {len(files)} images already scored",
              file=sys.stderr)
    for part in scorer.iter_scores([files[i] for i in todo], [prompts[i] for i in todo] if args.prompts else None,
                                   names=[files[i] for i in todo]):
        rows = {name: (score, error) for name, score, error in zip(part.names, part.scores, part.errors)}
        done.update(rows)
        if progress:
            progress.append(rows)  # kept when interrupted: the next run with the same --out continues
    table = pd.DataFrame({"path": files, "prompt": prompts, "score": [done[path][0] for path in files]})
    errors = [done[path][1] for path in files]
    table = rank_within_prompt(table, lower_better=scorer.lower_better).assign(error=errors)
    failures = [(path, error) for path, error in zip(files, errors) if error]
    if args.out:
        table.to_csv(args.out, index=False)
        progress.remove()
        print(f"wrote {len(table)} rows to {args.out}: {len(files) - len(failures)} scored, {len(failures)} failed")
    else:
        print(table.to_csv(index=False), end="")
    if failures:
        print(f"{len(failures)} of {len(files)} image(s) could not be scored:", file=sys.stderr)
        for name, reason in failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _setup(args) -> dict:
    """What makes scores comparable across runs: a partial file of another setup is never mixed in."""
    return {"model": str(args.model), "weights": args.weights, "encoder": args.encoder, "precision": args.precision,
            "max_pixels": args.max_pixels, "prompts": args.prompts}


class PartialScores:
    """`<out>.partial.csv`: rows (path, score, error) appended after every batch, flushed, so an interrupted
    `agiqa score --out` (Ctrl-C, a kill, a crash) resumes where it stopped; removed once `<out>` is written.
    `<out>.partial.json` records the setup; a different setup refuses to resume."""

    def __init__(self, out: str, setup: dict):
        self.path = Path(f"{out}.partial.csv")
        self.setup_path = Path(f"{out}.partial.json")
        self.setup = setup

    def read(self) -> dict[str, tuple[float, str | None]]:
        if not self.path.is_file():
            return {}
        saved = json.loads(self.setup_path.read_text()) if self.setup_path.is_file() else None
        if saved != self.setup:
            raise AgiqaError(f"{self.path} holds scores of another setup ({saved}); delete it to start again, or "
                             "use another --out")
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if whole != data:  # a line cut short by a kill: dropped (its image is scored again)
            self.path.write_bytes(whole)
        try:
            rows = list(csv.reader(io.StringIO(whole.decode("utf-8"), newline="")))[1:]
            return {path: (float(score) if score else math.nan, error or None) for path, score, error in rows}
        except ValueError as err:  # edited by hand or damaged otherwise
            raise AgiqaError(f"{self.path} is damaged ({err}); delete it to start again") from err

    def append(self, rows: dict[str, tuple[float, str | None]]) -> None:
        new = not self.path.is_file()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.setup_path.write_text(json.dumps(self.setup))
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["path", "score", "error"])
            writer.writerows([path, "" if math.isnan(score) else repr(float(score)), error or ""]
                             for path, (score, error) in rows.items())
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.setup_path.unlink(missing_ok=True)


def rank_within_prompt(table, lower_better: bool = False):
    """Add `rank` (1 = best) and `best` among the images of each prompt; failed images get no rank."""
    ranks = table.groupby("prompt")["score"].rank(ascending=lower_better, method="first")
    table = table.assign(rank=ranks.astype("Int64"))
    return table.assign(best=table["rank"] == 1)


def _read_prompts(csv_path: str, files: list) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing_cols = {"image", "prompt"} - set(frame.columns)
    if missing_cols:
        raise AgiqaError(f"{csv_path}: missing column(s) {sorted(missing_cols)}; found {list(frame.columns)}")
    by_name = dict(zip(frame["image"], frame["prompt"]))
    prompts, unmatched = [], []
    for path in files:
        prompt = by_name.get(str(path), by_name.get(os.path.basename(path)))
        if prompt is None:
            unmatched.append(str(path))
        prompts.append(prompt or "")
    if unmatched:
        raise AgiqaError(f"{csv_path} has no prompt for {len(unmatched)} image(s), e.g. {unmatched[:5]}")
    return prompts
