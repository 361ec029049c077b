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
    parser.add_argument("--worst", type=_count, default=12, help="images in the worst-case / lowest-score galleries "
                        "(default: 12)")
    parser.add_argument("--title", default="agiqa report")
    parser.set_defaults(func=_report)


# The columns each kind of run is drawn from: checked when the runs are read, so that an empty or malformed file is a
# one-line error naming it, not a pandas traceback from deep in the figures.
NUMERIC_COLUMNS = {"score": ("score",), "evaluation": ("mos", "prediction")}


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _report(args) -> int:
    from agiqa.report.page import Report

    runs = [run for path in args.runs for run in _load_runs(path)]
    path = Report(args.out, worst=args.worst).write(runs, title=args.title)
    print(f"wrote {path} ({len(runs)} run(s)); figures in {path.parent / 'figures'}, tables in "
          f"{path.parent / 'tables'}")
    return 0


def _load_runs(path: str) -> list:
    from pandas.errors import EmptyDataError, ParserError

    from agiqa.errors import AgiqaError
    from agiqa.report.runs import load_runs

    try:
        runs = load_runs(path)
    except (EmptyDataError, ParserError) as err:
        raise AgiqaError(f"{path}: not a readable table ({err})") from err
    for run in runs:
        _check_columns(run)
    return runs


def _check_columns(run) -> None:
    import pandas as pd

    from agiqa.errors import AgiqaError

    if run.table is None:
        return
    where = run.path / "predictions.csv" if run.kind == "evaluation" else run.path
    for column in NUMERIC_COLUMNS.get(run.kind, ()):
        if column not in run.table.columns:
            continue  # load_runs names the missing columns it needs
        if run.table.empty:
            raise AgiqaError(f"{where}: no rows to report on")
        raw = run.table[column]
        bad = pd.to_numeric(raw, errors="coerce").isna() & raw.notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise AgiqaError(f"{where}: column {column!r} must hold numbers; row {row + 1} holds {raw.iloc[row]!r}")
