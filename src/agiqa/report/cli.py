"""`agiqa report RUN... --out DIR`: one HTML page (+ PNGs and CSVs) for evaluation, reproduction and scoring runs."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="HTML report of runs: scatter + logistic fit, error density, per-generator/attribute "
        "tables, gate weights, worst cases",
        description="Write DIR/report.html (self-contained: figures embedded; opens offline) plus figures/*.png and "
        "tables/*.csv for each RUN: a training run or `agiqa evaluate` output (predictions.csv with MOS), an "
        "`agiqa reproduce` output (runs.json: mean ± std over seeds beside the paper), or `agiqa score` output "
        "(a shard folder or a .csv/.parquet/.jsonl: score histogram, best-of-N per prompt, lowest-scored images). "
        "Several evaluation runs are also compared side by side (e.g. MA-AGIQA against its MANIQA-only ablation); a "
        "multi-target run is shown once per target, so it sits beside single-target runs of each target.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders or score outputs")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--worst", type=int, default=12, help="images in the worst-case / lowest-score galleries")
    parser.add_argument("--title", default="agiqa report")
    parser.set_defaults(func=_report)


def _report(args) -> int:
    from agiqa.report.page import Report
    from agiqa.report.runs import load_runs

    runs = [run for path in args.runs for run in load_runs(path)]
    path = Report(args.out, worst=args.worst).write(runs, title=args.title)
    print(f"wrote {path} ({len(runs)} run(s)); figures in {path.parent / 'figures'}, tables in "
          f"{path.parent / 'tables'}")
    return 0
