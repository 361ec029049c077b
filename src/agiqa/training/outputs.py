"""What a run writes (`agiqa train`, `agiqa evaluate`): predictions CSV, metrics JSON (overall + per generator),
markdown report, scatter plot and training curves (drawn by `agiqa.figures`)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from agiqa import figures
from agiqa.metrics import compute_metrics

METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse")


def predictions_frame(frame: pd.DataFrame, rows, predictions, extra: dict | None = None) -> pd.DataFrame:
    """One row per scored image: name, path, generator, prompt, the dataset's prompt attributes (if any), MOS,
    prediction, then `extra` columns (per-expert gates and scores).

    A multi-target frame (`frame.attrs["targets"]`, see `data.datasets.load_dataset_targets`) takes (n, T)
    predictions and gets `mos_<target>`, `prediction_<target>` column pairs instead of `mos`, `prediction`.
    """
    picked = frame.iloc[list(rows)]
    targets = frame.attrs.get("targets")
    scores = _score_columns(picked, predictions, targets)
    attributes = [column for column in frame.columns
                  if column not in ("name", "path", "generator", "prompt", "mos") and column not in scores]
    table = pd.DataFrame({
        "name": picked["name"].to_numpy(),
        "path": picked["path"].to_numpy(),
        "generator": picked["generator"].to_numpy(),
        "prompt": picked["prompt"].to_numpy(),
        **{column: picked[column].to_numpy() for column in attributes},
        **scores,
    })
    for name, values in (extra or {}).items():
        table[name] = np.asarray(values, dtype=float)
    return table


def _score_columns(picked: pd.DataFrame, predictions, targets: list[str] | None) -> dict:
    """`mos`, `prediction` for one target; `mos_<t>`, `prediction_<t>` per target for several."""
    predictions = np.asarray(predictions, dtype=float)
    if not targets:
        return {"mos": picked["mos"].to_numpy(dtype=float), "prediction": predictions}
    columns = {}
    for index, target in enumerate(targets):
        columns[f"mos_{target}"] = picked[f"mos_{target}"].to_numpy(dtype=float)
        columns[f"prediction_{target}"] = predictions[:, index]
    return columns


def prediction_targets(predictions: pd.DataFrame) -> list[str]:
    """The targets of a multi-target predictions table (its `prediction_<target>` columns); [] for one target."""
    if "prediction" in predictions.columns:
        return []
    return [column[len("prediction_"):] for column in predictions.columns if column.startswith("prediction_")]


def first_target(predictions: pd.DataFrame) -> pd.DataFrame:
    """A multi-target table with its first target's columns also as `mos`, `prediction`; one target's as it is."""
    targets = prediction_targets(predictions)
    if not targets:
        return predictions
    return predictions.assign(mos=predictions[f"mos_{targets[0]}"], prediction=predictions[f"prediction_{targets[0]}"])


def evaluation_metrics(predictions: pd.DataFrame, min_group: int = 5) -> dict:
    """Overall metrics plus one entry per generator with at least `min_group` images.

    For a multi-target table, `overall` and `per_generator` are the first target's and `per_target` holds every
    target's overall metrics.
    """
    targets = prediction_targets(predictions)
    if targets:
        result = evaluation_metrics(first_target(predictions), min_group)
        result["per_target"] = {target: _clean(compute_metrics(predictions[f"prediction_{target}"],
                                                               predictions[f"mos_{target}"])) for target in targets}
        return result
    result = {"overall": _clean(compute_metrics(predictions["prediction"], predictions["mos"]))}
    per_generator = {}
    for generator, group in predictions.groupby("generator", sort=True):
        if generator and len(group) >= min_group:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small groups with constant MOS are expected; NaN says it
                per_generator[str(generator)] = _clean(compute_metrics(group["prediction"], group["mos"]))
    result["per_generator"] = per_generator
    return result


def _clean(metrics: dict) -> dict:
    return {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in metrics.items()}


def metrics_markdown(metrics: dict, title: str = "Test results") -> str:
    """A markdown table: overall row, then one row per generator."""
    lines = [f"## {title}", "", "| subset | n | SRCC | PLCC | KRCC | RMSE |", "|---|---|---|---|---|---|"]
    rows = [("overall", metrics["overall"])] + sorted(metrics.get("per_generator", {}).items())
    for name, values in rows:
        cells = [format_value(values.get(key)) for key in METRIC_KEYS]
        lines.append(f"| {name} | {values.get('n', '')} | " + " | ".join(cells) + " |")
    if metrics.get("per_target"):
        first = next(iter(metrics["per_target"]))
        lines[2:2] = [f"Overall and per-generator rows: target `{first}`.", ""]
        lines += ["", "| target | n | SRCC | PLCC | KRCC | RMSE |", "|---|---|---|---|---|---|"]
        for name, values in metrics["per_target"].items():
            cells = [format_value(values.get(key)) for key in METRIC_KEYS]
            lines.append(f"| {name} | {values.get('n', '')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("PLCC and RMSE are computed after the official 4-parameter logistic fit; SRCC and KRCC on raw scores.")
    return "\n".join(lines) + "\n"


def format_value(value) -> str:
    """A metric for people: 4 decimals, "nan" for an undefined one (stored as None in metrics.json)."""
    return "nan" if value is None else f"{value:.4f}"


def training_curves_plot(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """Train loss and validation SRCC/PLCC per epoch from Lightning's CSV log; None when nothing was logged."""
    log = pd.read_csv(metrics_csv)
    val = log.dropna(subset=["val/srcc"]) if "val/srcc" in log else log.iloc[0:0]
    train = log.dropna(subset=["train/loss"]) if "train/loss" in log else log.iloc[0:0]
    if val.empty and train.empty:
        return None
    return figures.training_curves(train, val, path)


def write_evaluation(predictions: pd.DataFrame, out_dir: str | Path, title: str = "Test results") -> dict:
    """Write predictions.csv, metrics.json, report.md and scatter.png into `out_dir`; return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out / "predictions.csv", index=False)
    metrics = evaluation_metrics(predictions)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(metrics_markdown(metrics, title))
    figures.prediction_scatter(first_target(predictions), title, out / "scatter.png")
    return metrics
