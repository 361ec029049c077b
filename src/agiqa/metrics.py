"""IQA metrics: SRCC, KRCC on raw predictions; PLCC, RMSE after the official 4-parameter logistic fit.

Degenerate inputs (fewer than 3 pairs, constant or non-finite predictions or targets) give NaN correlations and a
`warnings.warn`, never an exception, so a validation loop on a collapsed model keeps running.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize, stats

METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse")
MIN_PAIRS = 3


class MetricWarning(UserWarning):
    """A metric is undefined for the given data (NaN returned) or the logistic fit fell back to raw."""


def _as_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in length: {pred.size} vs {target.size}")
    return pred, target


def _degenerate(pred: np.ndarray, target: np.ndarray) -> str | None:
    """Why correlations are undefined for these arrays, or None."""
    if pred.size < MIN_PAIRS:
        return f"only {pred.size} pair(s); at least {MIN_PAIRS} are needed"
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        return "predictions or targets contain NaN/inf"
    if np.ptp(pred) == 0:
        return "predictions are constant"
    if np.ptp(target) == 0:
        return "targets are constant"
    return None


def _correlation(fn, name: str, pred, target) -> float:
    pred, target = _as_pair(pred, target)
    reason = _degenerate(pred, target)
    if reason:
        warnings.warn(f"{name} is undefined ({reason}); returning NaN", MetricWarning, stacklevel=3)
        return math.nan
    return float(fn(pred, target)[0])


def srcc(pred, target) -> float:
    """Spearman rank correlation."""
    return _correlation(stats.spearmanr, "SRCC", pred, target)


def plcc(pred, target) -> float:
    """Pearson linear correlation of the raw values (no fit)."""
    return _correlation(stats.pearsonr, "PLCC", pred, target)


def krcc(pred, target) -> float:
    """Kendall rank correlation (tau-b)."""
    return _correlation(stats.kendalltau, "KRCC", pred, target)


def rmse(pred, target) -> float:
    """Root mean squared error of the raw values (NaN for empty input)."""
    pred, target = _as_pair(pred, target)
    return float(np.sqrt(np.mean((pred - target) ** 2))) if pred.size else math.nan


def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Official 4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
    with np.errstate(over="ignore"):
        return b2 + (b1 - b2) / (1 + np.exp(-(np.asarray(x, dtype=np.float64) - b3) / np.abs(b4)))


def logistic_fit(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Fit `logistic4` mapping predictions to targets as MA-AGIQA's performance.py does.

    p0 = [max(target), min(target), mean(pred), 0.5], `scipy.optimize.curve_fit`, maxfev 1e8 (a mean within
    1e-6 of the prediction range from 0 starts at exactly 0, see below).
    Returns (fitted predictions, params b1..b4). Raises RuntimeError/ValueError when the fit fails.
    """
    pred, target = _as_pair(pred, target)
    b3 = np.mean(pred)
    # MINPACK's finite-difference step for b3 is relative to |b3|: a centred mean such as 1e-16 (instead of 0)
    # makes the step vanish and freezes b3. Snapping it to 0 changes nothing else and only affects such inputs.
    if abs(b3) < 1e-6 * np.ptp(pred):
        b3 = 0.0
    p0 = [np.max(target), np.min(target), b3, 0.5]
    with warnings.catch_warnings():
        # The covariance estimate is not used; its "could not be estimated" warning is noise here.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        params, _ = optimize.curve_fit(logistic4, pred, target, p0=p0, maxfev=int(1e8))
    fitted = logistic4(pred, *params)
    if not (np.isfinite(params).all() and np.isfinite(fitted).all()):
        raise RuntimeError(f"logistic fit gave non-finite values (params {params})")
    return fitted, params


def compute_metrics(pred, target) -> dict[str, float | int | bool]:
    """srcc, krcc (raw); plcc, rmse (after the logistic fit); plcc_raw, rmse_raw; n; fit_ok.

    When correlations are undefined they are NaN (one warning) and rmse is the raw RMSE. When the fit fails,
    plcc/rmse fall back to the raw values with a warning; `fit_ok` says whether the fit was used.
    """
    pred, target = _as_pair(pred, target)
    reason = _degenerate(pred, target)
    if reason:
        warnings.warn(f"SRCC/PLCC/KRCC are undefined ({reason}); returning NaN", MetricWarning, stacklevel=2)
        corr = {"srcc": math.nan, "plcc": math.nan, "krcc": math.nan, "plcc_raw": math.nan}
        fitted, fit_ok = pred, False
    else:
        corr = {"srcc": srcc(pred, target), "krcc": krcc(pred, target), "plcc_raw": plcc(pred, target)}
        fitted, fit_ok = _fit_or_raw(pred, target)
        corr["plcc"] = plcc(fitted, target)
    return {
        "srcc": corr["srcc"],
        "plcc": corr["plcc"],
        "krcc": corr["krcc"],
        "rmse": rmse(fitted, target),
        "plcc_raw": corr["plcc_raw"],
        "rmse_raw": rmse(pred, target),
        "n": int(pred.size),
        "fit_ok": fit_ok,
    }


def _fit_or_raw(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
    try:
        fitted, _ = logistic_fit(pred, target)
    except (RuntimeError, ValueError, TypeError) as err:
        reason = str(err)
    else:
        if np.ptp(fitted) > 0:
            return fitted, True
        reason = "the fitted curve is flat"
    warnings.warn(f"logistic fit failed ({reason}); PLCC/RMSE use raw predictions", MetricWarning, stacklevel=3)
    return pred, False


def summarize_runs(runs: Sequence[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Mean and sample std (ddof=1; 0 for a single run) of every numeric key over several runs (e.g. seeds)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if runs else []
    summary = {}
    for key in keys:
        values = np.array([run[key] for run in runs], dtype=np.float64)
        std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
        summary[key] = {"mean": float(np.mean(values)), "std": std, "runs": int(values.size)}
    return summary


def _cell(value, digits: int) -> str:
    if value is None:  # an undefined metric (NaN, stored as null in metrics.json)
        return "nan"
    if isinstance(value, Mapping):
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value:.{digits}f}"


def format_metrics_table(
    results: Mapping[str, Mapping[str, object]], keys: Sequence[str] = METRIC_KEYS, digits: int = 4
) -> str:
    """Markdown table, one row per entry of `results` (a `compute_metrics` dict or a `summarize_runs` dict)."""
    header = "| | " + " | ".join(k.upper() for k in keys) + " |"
    lines = [header, "|---" * (len(keys) + 1) + "|"]
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics[k], digits) for k in keys) + " |")
    return "\n".join(lines)
