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


# --- Mutation-testing additions (docs/mutation.md): each test compares with an independent value: scipy on float64
# copies, the official performance.py rule written out here, or numbers computed by hand.


def official_fit(pred, target):
    """MA-AGIQA's performance.py, written out independently: logistic fit with the official p0, then PLCC and RMSE."""
    from scipy.optimize import curve_fit

    def logistic(x, b1, b2, b3, b4):
        return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    params, _ = curve_fit(logistic, pred, target, p0=[np.max(target), np.min(target), np.mean(pred), 0.5],
                          maxfev=int(1e8))
    fitted = logistic(pred, *params)
    return stats.pearsonr(fitted, target)[0], math.sqrt(np.mean((fitted - target) ** 2)), np.ptp(fitted)


def test_fit_on_unit_interval_labels_matches_the_official_rule():
    # Labels scaled to [0, 1] (MOS / max MOS, as MoE-AGIQA trains): the fitted curve spans less than 1 and is used.
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 1, 50)
    pred = target + rng.normal(0, 0.1, 50)
    plcc_ref, rmse_ref, span = official_fit(pred, target)
    assert span < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(pred, target)
    assert metrics["fit_ok"] is True
    assert metrics["plcc"] == pytest.approx(plcc_ref, abs=1e-6) and metrics["rmse"] == pytest.approx(rmse_ref, abs=1e-6)
    assert metrics["plcc"] != pytest.approx(metrics["plcc_raw"], abs=1e-4)


def test_any_numeric_dtype_gives_the_float64_result():
    # uint8 scores against bool labels (pass / fail): the same numbers as on float64 copies.
    pred = np.array([3, 1, 200, 7, 9, 250, 0, 4], dtype=np.uint8)
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    pred64, labels64 = pred.astype(np.float64), labels.astype(np.float64)
    assert srcc(pred, labels) == pytest.approx(stats.spearmanr(pred64, labels64)[0], abs=1e-12)
    assert krcc(labels, pred) == pytest.approx(stats.kendalltau(labels64, pred64)[0], abs=1e-12)
    assert plcc(labels, pred) == pytest.approx(stats.pearsonr(labels64, pred64)[0], abs=1e-12)
    assert rmse(labels, pred) == pytest.approx(math.sqrt(np.mean((labels64 - pred64) ** 2)), abs=1e-9)
    # by hand: uint8 arithmetic would wrap around (0 - 1 = 255) instead of giving these differences
    assert rmse(np.array([0, 0, 2], np.uint8), np.array([1, 2, 0], np.uint8)) == pytest.approx(math.sqrt(3))


def test_logistic4_computes_in_float64_and_without_overflow_warnings():
    x = np.float32([2.5, 3.1])  # model outputs are float32; float32(3.1) - 3.1 = -9.5e-8, which |b4| = 0.001 magnifies
    expected = [1 / (1 + math.exp(-(float(v) - 3.1) / 0.001)) for v in x]
    np.testing.assert_allclose(logistic4(x, 1.0, 0.0, 3.1, 0.001), expected, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(2e4) overflows to inf: the curve's limits, without a RuntimeWarning
        np.testing.assert_array_equal(logistic4(np.array([-1e4, 1e4]), 4.0, 1.0, 0.0, 0.5), [1.0, 4.0])


def test_centred_predictions_start_b3_at_exactly_zero(monkeypatch):
    from scipy import optimize

    seen = []
    real = optimize.curve_fit

    def spy(f, xdata, ydata, p0, maxfev):
        seen.append(p0[2])
        return real(f, xdata, ydata, p0=p0, maxfev=maxfev)

    monkeypatch.setattr(optimize, "curve_fit", spy)
    x = np.linspace(-5, 5, 41)  # range 10: means within 1e-5 of 0 start at 0
    y = 1 + 3 / (1 + np.exp(-(x - 0.5)))
    for shift in (1e-16, 1e-6, -5e-6):
        logistic_fit(x + shift, y)
    logistic_fit(x + 1e-4, y)
    assert seen[:3] == [0.0, 0.0, 0.0] and seen[3] == pytest.approx(1e-4, rel=1e-6)


def test_non_finite_fit_falls_back_with_the_reason(monkeypatch):
    import agiqa.metrics as m

    def zero_width(f, xdata, ydata, p0, maxfev):  # an optimiser returning |b4| = 0: the curve is 0/0 at x = b3
        return np.array([4.0, 1.0, 2.0, 0.0]), None

    monkeypatch.setattr(m.optimize, "curve_fit", zero_width)
    pred, target = np.arange(5.0), np.array([1.0, 1.5, 2.0, 4.0, 3.0])
    with pytest.raises(RuntimeError, match=r"^logistic fit gave non-finite values \(params \[4\. 1\. 2\. 0\.\]\)$"), \
            np.errstate(divide="ignore", invalid="ignore"):
        logistic_fit(pred, target)
    with pytest.warns(MetricWarning) as record, np.errstate(divide="ignore", invalid="ignore"):
        metrics = compute_metrics(pred, target)
    assert [str(w.message) for w in record] == ["logistic fit failed (logistic fit gave non-finite values "
                                                "(params [4. 1. 2. 0.])); PLCC/RMSE use raw predictions"]
    # raw RMSE by hand: differences -1, 0.5, 0, -1, 1
    assert metrics["fit_ok"] is False and metrics["rmse"] == pytest.approx(math.sqrt((1 + 0.25 + 0 + 1 + 1) / 5))


def test_flat_fitted_curve_falls_back_to_raw(monkeypatch):
    import agiqa.metrics as m

    monkeypatch.setattr(m, "logistic_fit", lambda pred, target: (np.full(len(pred), 2.0), np.zeros(4)))
    pred, target = np.array([1.0, 2.0, 4.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])
    with pytest.warns(MetricWarning) as record:
        metrics = compute_metrics(pred, target)
    assert [str(w.message) for w in record] == [
        "logistic fit failed (the fitted curve is flat); PLCC/RMSE use raw predictions"]
    # by hand: deviations from the means (2.5) -1.5 -0.5 1.5 0.5 and -1.5 0.5 -0.5 1.5: r = 2 / 5
    assert metrics["fit_ok"] is False and metrics["plcc"] == metrics["plcc_raw"] == pytest.approx(0.4)
    assert metrics["rmse"] == metrics["rmse_raw"] == pytest.approx(math.sqrt(6 / 4))


def test_fit_failure_warning_names_the_optimiser_error(monkeypatch):
    import agiqa.metrics as m

    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(m.optimize, "curve_fit", fail)
    with pytest.warns(MetricWarning) as record:
        compute_metrics(np.arange(6.0), np.arange(6.0) ** 2)
    assert [str(w.message) for w in record] == [
        "logistic fit failed (Optimal parameters not found: maxfev reached); PLCC/RMSE use raw predictions"]


@pytest.mark.parametrize(
    "pred, target, reason",
    [
        (np.ones(4), np.arange(4.0), "predictions are constant"),
        (np.arange(4.0), np.full(4, 3.0), "targets are constant"),
        ([1.0, 2.0], [2.0, 1.0], "only 2 pair(s); at least 3 are needed"),
        ([1.0, np.inf, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "predictions or targets contain NaN/inf"),
    ],
)
def test_degenerate_inputs_warn_once_with_the_exact_reason(pred, target, reason):
    with pytest.warns(MetricWarning) as record:
        compute_metrics(pred, target)
    assert [str(w.message) for w in record] == [f"SRCC/PLCC/KRCC are undefined ({reason}); returning NaN"]
    for fn, name in ((srcc, "SRCC"), (plcc, "PLCC"), (krcc, "KRCC")):
        with pytest.warns(MetricWarning) as record:
            assert math.isnan(fn(pred, target))
        assert [str(w.message) for w in record] == [f"{name} is undefined ({reason}); returning NaN"]


def test_empty_input_rmse_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(rmse([], []))


def test_summarize_a_single_run_and_no_runs():
    assert summarize_runs([]) == {}
    assert summarize_runs([{"srcc": 0.5, "n": 7, "fit_ok": True, "name": "a"}]) == {
        "srcc": {"mean": 0.5, "std": 0.0, "runs": 1}, "n": {"mean": 7.0, "std": 0.0, "runs": 1}}


def test_table_defaults_and_undefined_metrics():
    table = format_metrics_table({"run": {"srcc": 0.5, "plcc": None, "krcc": 1 / 3, "rmse": 2.0}})
    assert table.splitlines() == ["| | SRCC | PLCC | KRCC | RMSE |", "|---|---|---|---|---|",
                                  "| run | 0.5000 | nan | 0.3333 | 2.0000 |"]
    assert format_metrics_table({"x": {"srcc": 0.25}}, keys=("srcc",), digits=1).splitlines() == [
        "| | SRCC |", "|---|---|", "| x | 0.2 |"]
