import math
import warnings

import numpy as np
import pytest
from scipy import stats

from agiqa.metrics import (
    MetricWarning,
    compute_metrics,
    format_metrics_table,
    krcc,
    logistic4,
    logistic_fit,
    plcc,
    rmse,
    srcc,
    summarize_runs,
)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 5, 200)
    return target + rng.normal(0, 0.8, 200), target


def test_raw_metrics_match_scipy(pair):
    pred, target = pair
    assert srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0])
    assert plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0])
    assert krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target)[0])
    assert rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))


@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_logistic_fit_recovers_known_curve(offset):
    # offset 0: mean(x) is ~1e-17, not 0, the case where b3 would stay frozen without the p0 snap.
    x = np.linspace(-3, 3, 61) + offset
    b1, b2, b3, b4 = 4.5, 0.5, 0.3 + offset, 0.8
    y = b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / b4))
    fitted, params = logistic_fit(x, y)
    np.testing.assert_allclose(params[:3], [b1, b2, b3], atol=1e-5)
    assert abs(params[3]) == pytest.approx(b4, abs=1e-5)
    np.testing.assert_allclose(fitted, y, atol=1e-6)

    metrics = compute_metrics(x, y)
    assert metrics["fit_ok"] and metrics["plcc"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["rmse"] == pytest.approx(0.0, abs=1e-6)
    # Raw RMSE by hand: predictions x against targets y.
    assert metrics["rmse_raw"] == pytest.approx(math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y)) / len(x)))
    assert metrics["plcc_raw"] < metrics["plcc"]
    assert metrics["srcc"] == pytest.approx(1.0) and metrics["krcc"] == pytest.approx(1.0)


def test_fit_rmse_by_hand_with_known_offset():
    # Targets = logistic(x) + alternating +-0.1: the best fit is the logistic itself, RMSE 0.1.
    x = np.linspace(-4, 4, 200)
    curve = logistic4(x, 4.0, 1.0, 0.0, 1.0)
    y = curve + np.where(np.arange(200) % 2 == 0, 0.1, -0.1)
    metrics = compute_metrics(x, y)
    assert metrics["rmse"] == pytest.approx(0.1, abs=2e-3)
    assert metrics["plcc"] == pytest.approx(stats.pearsonr(curve, y)[0], abs=1e-4)


def test_logistic4_uses_abs_b4():
    x = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(logistic4(x, 1, 0, 0, -2), logistic4(x, 1, 0, 0, 2))


def test_official_p0_and_maxfev(monkeypatch):
    from scipy import optimize

    seen = {}
    real = optimize.curve_fit

    def spy(f, xdata, ydata, p0, maxfev):
        seen.update(p0=p0, maxfev=maxfev)
        return real(f, xdata, ydata, p0=p0, maxfev=maxfev)

    monkeypatch.setattr(optimize, "curve_fit", spy)
    pred, target = np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 1.0, 4.0, 3.0])
    logistic_fit(pred, target)
    assert seen == {"p0": [4.0, 1.0, 2.75, 0.5], "maxfev": 100_000_000}


@pytest.mark.parametrize(
    "pred, target, reason",
    [
        (np.ones(10), np.arange(10.0), "predictions are constant"),
        (np.arange(10.0), np.full(10, 3.0), "targets are constant"),
        ([1.0, 2.0], [2.0, 1.0], "only 2 pair"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "NaN"),
    ],
)
def test_degenerate_inputs_give_nan_and_warning(pred, target, reason):
    with pytest.warns(MetricWarning, match=reason):
        metrics = compute_metrics(pred, target)
    assert all(math.isnan(metrics[k]) for k in ("srcc", "plcc", "krcc", "plcc_raw"))
    assert metrics["fit_ok"] is False and metrics["n"] == len(pred)
    with pytest.warns(MetricWarning, match="SRCC"):
        assert math.isnan(srcc(pred, target))


def test_constant_predictions_keep_raw_rmse():
    with pytest.warns(MetricWarning):
        metrics = compute_metrics(np.full(4, 2.0), [1.0, 2.0, 3.0, 2.0])
    assert metrics["rmse"] == metrics["rmse_raw"] == pytest.approx(math.sqrt(0.5))


def test_fit_failure_falls_back_to_raw(monkeypatch):
    import agiqa.metrics as m

    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(m.optimize, "curve_fit", fail)
    pred, target = np.arange(10.0), np.arange(10.0) ** 2
    with pytest.warns(MetricWarning, match="logistic fit failed"):
        metrics = compute_metrics(pred, target)
    assert metrics["fit_ok"] is False
    assert metrics["plcc"] == metrics["plcc_raw"] and metrics["rmse"] == metrics["rmse_raw"]


def test_three_pairs_fit_falls_back_without_crashing():
    with pytest.warns(MetricWarning, match="logistic fit failed"):
        metrics = compute_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert metrics["srcc"] == pytest.approx(0.5) and metrics["fit_ok"] is False


def test_good_data_emits_no_warning(pair):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(*pair)
    assert list(metrics) == ["srcc", "plcc", "krcc", "rmse", "plcc_raw", "rmse_raw", "n", "fit_ok"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([1, 2, 3], [1, 2])


def test_summarize_and_table():
    runs = [{"srcc": 0.8, "plcc": 0.9, "krcc": 0.6, "rmse": 0.4, "n": 10, "fit_ok": True},
            {"srcc": 0.9, "plcc": 0.7, "krcc": 0.7, "rmse": 0.2, "n": 10, "fit_ok": True}]
    summary = summarize_runs(runs)
    assert "fit_ok" not in summary
    assert summary["srcc"]["mean"] == pytest.approx(0.85)
    assert summary["srcc"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert summary["n"] == {"mean": 10.0, "std": 0.0, "runs": 2}
    table = format_metrics_table({"ours": summary, "seed 0": runs[0]}, digits=2)
    assert table.splitlines()[0] == "| | SRCC | PLCC | KRCC | RMSE |"
    assert "| ours | 0.85 ± 0.07 | 0.80 ± 0.14 |" in table and "| seed 0 | 0.80 | 0.90 | 0.60 | 0.40 |" in table
