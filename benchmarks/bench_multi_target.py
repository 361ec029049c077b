"""One multi-target model against single-target models, side by side: the same config, data, split and seed trained
once with `data.target=quality,alignment` and once per target, as a user runs them (`agiqa synth`, `agiqa train`,
`agiqa report` in fresh processes).

    python benchmarks/bench_multi_target.py --out /tmp/bench_mt                 # tiny MoE-AGIQA, 6,000 images of 40 px
    python benchmarks/bench_multi_target.py --out /tmp/b80 --image-size 80 --set model.kwargs.img_size=64 \\
        --set model.kwargs.patch_size=8

Prints per-target test SRCC / PLCC of each run, the training seconds of each and the ratio of the multi-target run's
time to the single-target runs' total; writes OUT/report/report.html with the runs side by side. The data has no
prompt mismatches (`--mismatch-rate 0`) by default, so alignment depends on blur and noise, which an image model can
see, and low rater noise (0.2), so its many ties at the top are not ordered by rater noise alone (docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("quality", "alignment")


def agiqa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "agiqa", *args], check=True, capture_output=True)


def train(config: str, data: Path, target: str, out: Path, overrides: list[str]) -> float:
    """Seconds of one `agiqa train` run into `out`."""
    sets = [f"data.root={data}", f"data.target={target}", f"data.image_cache={out.parent / 'cache'}", *overrides]
    start = time.perf_counter()
    agiqa("train", "-c", config, *[arg for value in sets for arg in ("--set", value)], "--out", str(out))
    return time.perf_counter() - start


def per_target(run: Path, targets: list[str]) -> dict:
    """{target: metrics} of a run's metrics.json (a single-target run's `overall` under its one target)."""
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics.get("per_target") or {targets[0]: metrics["overall"]}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="moe_agiqa/synth_tiny")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--image-size", type=int, default=40)
    parser.add_argument("--mismatch-rate", type=float, default=0.0)
    parser.add_argument("--rater-noise", type=float, default=0.2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    if not (data / "data.csv").is_file():
        agiqa("synth", "--out", str(data), "--n", str(args.n), "--image-size", str(args.image_size),
              "--mismatch-rate", str(args.mismatch_rate), "--rater-noise", str(args.rater_noise))
    runs = {"multi": list(TARGETS), **{target: [target] for target in TARGETS}}
    seconds, results = {}, {}
    for name, targets in runs.items():
        seconds[name] = train(args.config, data, ",".join(targets), out / name, args.overrides)
        results[name] = per_target(out / name, targets)
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    agiqa("report", *[str(out / name) for name in runs], "--out", str(out / "report"))
    lines = [f"{args.config}, {args.n} images of {args.image_size} px, mismatch rate {args.mismatch_rate}, rater "
             f"noise {args.rater_noise}, {' '.join(args.overrides) or 'config as packaged'}", "",
             "| run | target | test SRCC | test PLCC | train s |", "|---|---|---|---|---|"]
    for name, metrics in results.items():
        lines += [f"| {name} | {target} | {values['srcc']:.4f} | {values['plcc']:.4f} | {seconds[name]:.0f} |"
                  for target, values in metrics.items()]
    singles = sum(seconds[target] for target in TARGETS)
    lines += ["", f"multi-target time / single-target total: {seconds['multi'] / singles:.2f} "
              f"({seconds['multi']:.0f} s vs {singles:.0f} s); report: {out / 'report' / 'report.html'}"]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
