"""Every figure agiqa draws, with matplotlib's object API (no pyplot state, no display needed), each saved as one
PNG; every function takes the PNG's path last. A run's own (`training.outputs`): `prediction_scatter` and
`training_curves`; the report's (`agiqa report`, `SIZE` pixels each): `scatter_with_fit`, `error_density`,
`group_bars`, `gate_distribution`, `gate_by_group` and `score_histogram`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agiqa.metrics import logistic4, logistic_fit

DPI = 100
SIZE = (800, 480)  # pixels of every figure of the report


def _figure(size: tuple[int, int] = SIZE, columns: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    return figure, figure.subplots(1, columns)


def _save(figure, path: str | Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return Path(path)


def prediction_scatter(table: pd.DataFrame, title: str, path: str | Path) -> Path:
    """A run's scatter.png: prediction vs MOS (one target's `mos`, `prediction` columns), coloured by generator."""
    figure, ax = _figure((500, 500))
    for generator, group in table.groupby("generator", sort=True):
        ax.scatter(group["mos"], group["prediction"], s=10, alpha=0.7, label=str(generator) or "unknown")
    ax.set_xlabel("MOS")
    ax.set_ylabel("prediction")
    ax.set_title(title)
    if table["generator"].nunique() <= 15:
        ax.legend(fontsize=7, markerscale=1.5)
    return _save(figure, path)


def training_curves(train: pd.DataFrame, val: pd.DataFrame, path: str | Path) -> Path:
    """A run's training_curves.png: training loss per step (rows of `train`) and validation SRCC / PLCC per epoch
    (rows of `val`), from Lightning's CSV log."""
    figure, (loss_ax, corr_ax) = _figure((900, 350), columns=2)
    if not train.empty:
        loss_ax.plot(train["step"], train["train/loss"], lw=1)
    loss_ax.set(xlabel="step", ylabel="training loss", title="training")
    for key in ("val/srcc", "val/plcc"):
        if not val.empty:
            corr_ax.plot(val["epoch"], val[key], marker="o", ms=3, label=key.split("/")[1].upper())
    corr_ax.set(xlabel="epoch", ylabel="correlation", title="validation")
    corr_ax.legend()
    return _save(figure, path)


def scatter_with_fit(table: pd.DataFrame, metrics: dict, title: str, path: Path) -> Path:
    """Prediction vs MOS, coloured by generator, with the official 4-parameter logistic fitted to them and the
    metrics in the legend."""
    figure, ax = _figure()
    groups = list(table.groupby("generator", sort=True)) if "generator" in table else [("", table)]
    for generator, group in groups:
        ax.scatter(group["prediction"], group["mos"], s=9, alpha=0.6, label=str(generator) or "images")
    legend = (f"SRCC {metrics['srcc']:.3f}  PLCC {metrics['plcc']:.3f}\n"
              f"KRCC {metrics['krcc']:.3f}  RMSE {metrics['rmse']:.3f}  n={metrics['n']}")
    try:
        _, params = logistic_fit(table["prediction"], table["mos"])
        x = np.linspace(table["prediction"].min(), table["prediction"].max(), 200)
        ax.plot(x, logistic4(x, *params), color="black", lw=1.5, label="logistic fit\n" + legend)
    except (RuntimeError, ValueError):
        ax.plot([], [], " ", label="(logistic fit failed)\n" + legend)
    ax.set(xlabel="prediction", ylabel="MOS", title=title)
    ax.legend(fontsize=7, loc="upper left", ncol=2 if len(groups) > 6 else 1)
    return _save(figure, path)


def error_density(histograms: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """MA-AGIQA Fig. 6: share of images per 0.1-wide bin of |prediction - MOS|, one bar series per run, side by
    side."""
    figure, ax = _figure()
    widest = max(histograms, key=lambda item: len(item[2]))[1]
    width = (widest[1] - widest[0]) / (len(histograms) + 1)
    for index, (name, edges, counts) in enumerate(histograms):
        ax.bar(edges[:-1] + index * width, counts / max(counts.sum(), 1), width=width, align="edge", label=name)
    ax.set(xlabel="|prediction − MOS| (bins of 0.1)", ylabel="share of images",
           title="Error density (as MA-AGIQA's Fig. 6)")
    ax.legend(fontsize=8)
    return _save(figure, path)


def group_bars(frame: pd.DataFrame, title: str, path: Path) -> Path:
    """SRCC and PLCC of each group (rows of `tables.group_metrics`)."""
    figure, ax = _figure()
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["srcc"], width=0.4, label="SRCC")
    ax.bar(x + 0.2, frame["plcc"], width=0.4, label="PLCC")
    ax.set_xticks(x, [f"{name}\n(n={n})" for name, n in zip(frame.index, frame["n"])], fontsize=7,
                  rotation=30 if len(frame) > 6 else 0)
    lowest = float(np.nanmin(frame[["srcc", "plcc"]].to_numpy(), initial=0.0))
    ax.set(ylabel="correlation", title=title, ylim=(min(0.0, lowest) - 0.05, 1.05))
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    return _save(figure, path)


def gate_distribution(table: pd.DataFrame, gate_columns: list[str], path: Path) -> Path:
    """Box plot of each expert's gate weight over the images."""
    figure, ax = _figure()
    ax.boxplot([table[c].dropna() for c in gate_columns], tick_labels=[c.removeprefix("gate_") for c in gate_columns])
    ax.set(ylabel="gate weight", title="Gate weight per expert (all images)")
    return _save(figure, path)


def gate_by_group(table: pd.DataFrame, gate_columns: list[str], column: str, path: Path) -> Path:
    """Mean gate weight of each expert within each value of `column` (e.g. generator)."""
    means = table.groupby(column, sort=True)[gate_columns].mean()
    figure, ax = _figure()
    x, width = np.arange(len(means)), 0.8 / len(gate_columns)
    for index, gate in enumerate(gate_columns):
        ax.bar(x + (index - (len(gate_columns) - 1) / 2) * width, means[gate], width=width,
               label=gate.removeprefix("gate_"))
    ax.set_xticks(x, [str(name) or "unknown" for name in means.index], fontsize=7,
                  rotation=30 if len(means) > 6 else 0)
    ax.set(ylabel="mean gate weight", title=f"Gate weight per expert, by {column}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    return _save(figure, path)


def score_histogram(scores: pd.Series, path: Path) -> Path:
    figure, ax = _figure()
    ax.hist(scores.dropna(), bins=40)
    ax.set(xlabel="score", ylabel="images", title=f"Scores of {scores.notna().sum()} images")
    return _save(figure, path)
