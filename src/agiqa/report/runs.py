"""What `agiqa report` reads: an evaluation run (`agiqa train` / `agiqa evaluate` output: predictions.csv with MOS),
a reproduction (`agiqa reproduce`: runs.json), or scores (`agiqa score` output: a shard folder or a .csv / .parquet
/ .jsonl file)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agiqa.errors import AgiqaError
from agiqa.training.outputs import prediction_targets

SCORE_SUFFIXES = (".csv", ".parquet", ".jsonl")


@dataclass
class Run:
    """One run to report on. `table`: predictions (evaluation) or score rows (score); `summary`: reproduce's
    runs.json; `model_dir`: the run's saved model, where it has one (for heat maps)."""

    path: Path
    kind: str
    table: pd.DataFrame | None = None
    metrics: dict | None = None
    summary: dict | None = None
    model_dir: Path | None = None
    target: str | None = None  # what `mos` / `prediction` measure, where metrics.json says (one Run per target)

    @property
    def name(self) -> str:
        folder = self.path.name if self.path.name not in ("", ".") else str(self.path)
        return f"{folder} · {self.target}" if self.target and self.kind == "evaluation" else folder

    @property
    def gate_columns(self) -> list[str]:
        return [c for c in self.table.columns if c.startswith("gate_")] if self.table is not None else []


def load_runs(path: str | Path) -> list[Run]:
    """The run at `path`, of whichever kind it is; a multi-target evaluation becomes one Run per target (in the
    model's order, each with that target's `mos` / `prediction`), so every section shows each target. An
    `AgiqaError` names the path when it is no run."""
    path = Path(path)
    if not path.exists():
        raise AgiqaError(f"{path}: no such run directory or file")
    if path.is_dir() and (path / "predictions.csv").is_file():
        return _evaluations(path)
    if path.is_dir() and (path / "runs.json").is_file():
        return [Run(path, "reproduce", summary=json.loads((path / "runs.json").read_text()))]
    if path.is_dir() and (path / "_manifest.json").is_file():
        return [_scores(path, _shard_folder(path))]
    if path.is_file() and path.suffix.lower() in SCORE_SUFFIXES:
        return [_scores(path, _score_file(path))]
    raise AgiqaError(f"{path}: not a run agiqa can report on (expected a folder with predictions.csv from `agiqa "
                     "train` / `agiqa evaluate`, runs.json from `agiqa reproduce`, an `agiqa score` output folder "
                     "with _manifest.json, or a scores .csv / .parquet / .jsonl)")


def _evaluations(path: Path) -> list[Run]:
    table = pd.read_csv(path / "predictions.csv", keep_default_na=False, na_values=[""])
    targets = prediction_targets(table)
    needed = [f"{kind}_{target}" for target in targets for kind in ("mos", "prediction")] or ["mos", "prediction"]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise AgiqaError(f"{path / 'predictions.csv'}: missing column(s) {missing}")
    for column in ("generator", "prompt"):
        if column in table:
            table[column] = table[column].fillna("").astype(str)
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else None
    candidates = [path / "model", Path((metrics or {}).get("model_dir") or path / "model")]  # train / evaluate
    model_dir = next((folder for folder in candidates if (folder / "config.json").is_file()), None)
    run = Run(path, "evaluation", table=table, metrics=metrics, model_dir=model_dir)
    if not targets:
        return [dataclasses.replace(run, target=_recorded_target(metrics))]
    return [dataclasses.replace(run, target=target, table=table.assign(
        mos=table[f"mos_{target}"], prediction=table[f"prediction_{target}"])) for target in targets]


def _recorded_target(metrics: dict | None) -> str | None:
    """The target a single-target run's metrics.json names (None where it names none: runs written before it did)."""
    targets = (metrics or {}).get("targets") or [None]
    return targets[0]


def _scores(path: Path, table: pd.DataFrame) -> Run:
    if "score" not in table.columns:
        raise AgiqaError(f"{path}: no `score` column (columns: {list(table.columns)})")
    return Run(path, "score", table=table)


def _shard_folder(path: Path) -> pd.DataFrame:
    from agiqa.scoring.shards import FORMATS, ShardStore

    formats = {part.suffix.lstrip(".") for part in path.glob("part-*")} & set(FORMATS)
    if len(formats) != 1:
        raise AgiqaError(f"{path}: expected shards of one format (part-*.parquet/.csv/.jsonl), found "
                         f"{sorted(formats) or 'none'}")
    return ShardStore(path, formats.pop()).read()


def _score_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_csv(path)
