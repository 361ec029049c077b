"""The numbers behind the report: error histogram (MA-AGIQA Fig. 6), metrics per group, gate statistics,
best-of-N per prompt."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from agiqa.metrics import compute_metrics

METRICS = ("srcc", "plcc", "krcc", "rmse")


def error_histogram(prediction, mos, width: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges, counts) of |prediction - MOS| in bins of `width` from 0 to past the largest error: every image
    falls in exactly one bin (MA-AGIQA's Fig. 6 plots counts / n)."""
    errors = np.abs(np.asarray(prediction, dtype=float) - np.asarray(mos, dtype=float))
    n_bins = max(1, math.ceil(errors.max() / width - 1e-9)) if errors.size else 1
    edges = np.arange(n_bins + 1) * width
    edges[-1] = max(edges[-1], errors.max(initial=0.0))  # float steps must not leave the largest error out
    counts, _ = np.histogram(errors, edges)
    return edges, counts


def group_metrics(table: pd.DataFrame, column: str, min_group: int = 5) -> pd.DataFrame:
    """`compute_metrics` of prediction vs MOS within each value of `column` (groups of at least `min_group` images;
    empty values skipped): one row per group with n, SRCC, PLCC, KRCC, RMSE, sorted by group."""
    rows = {}
    for value, group in table.groupby(column, sort=True):
        if str(value) == "" or len(group) < min_group:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a group of constant MOS has undefined correlations: NaN says it
            metrics = compute_metrics(group["prediction"], group["mos"])
        rows[str(value)] = {"n": len(group), **{key: metrics[key] for key in METRICS}}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["n", *METRICS])


def attribute_columns(table: pd.DataFrame) -> list[str]:
    """Prompt-attribute columns (AGIQA-3K's style, adj1, adj2) with at least two non-empty values."""
    known = ("style", "adj1", "adj2")
    return [c for c in known if c in table and table[c].fillna("").astype(str).replace("", np.nan).nunique() >= 2]


def gate_error_correlation(table: pd.DataFrame, gate_columns: list[str]) -> pd.DataFrame:
    """Per expert: mean and std of its gate weight and the Spearman correlation of the gate with |error| (does
    the model lean on an expert where it errs?)."""
    errors = (table["prediction"] - table["mos"]).abs()
    rows = {}
    for column in gate_columns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = spearmanr(table[column], errors).statistic
        rows[column.removeprefix("gate_")] = {"mean gate": table[column].mean(), "std": table[column].std(),
                                              "SRCC(gate, |error|)": rho}
    return pd.DataFrame.from_dict(rows, orient="index")


def best_of_n(table: pd.DataFrame, group: str = "prompt", lower_better: bool = False) -> pd.DataFrame:
    """Per `group` value: candidates scored, the best image and score, the worst score and the spread."""
    scored = table.dropna(subset=["score"])
    rows = []
    for value, candidates in scored.groupby(group, sort=True, dropna=False):
        ordered = candidates.sort_values("score", ascending=lower_better)
        rows.append({group: value, "n": len(candidates), "best image": ordered["image"].iloc[0],
                     "best": ordered["score"].iloc[0], "worst": ordered["score"].iloc[-1],
                     "spread": abs(ordered["score"].iloc[0] - ordered["score"].iloc[-1])})
    return pd.DataFrame(rows)
