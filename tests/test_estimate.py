"""Tests for nnqmc.estimate: blocking errors and autocorrelation times on AR(1) data."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from nnqmc.estimate import (
    Estimate,
    Slope,
    autocorrelation_time,
    blocking_error,
    estimate,
    training_slope,
)

N = 2**16
SEEDS = (0, 1, 2, 3)
RTOL = 0.15


def ar1(phi: float, n: int, seed: int, sigma: float = 1.0) -> np.ndarray:
    """Stationary AR(1): x_t = phi x_{t-1} + sigma eps_t, x_0 ~ N(0, sigma^2/(1-phi^2))."""
    eps = (sigma * np.random.default_rng(seed).standard_normal(n)).tolist()
    out = [0.0] * n
    x = eps[0] / np.sqrt(1.0 - phi**2)
    out[0] = x
    for i in range(1, n):
        x = phi * x + eps[i]
        out[i] = x
    return np.asarray(out)


def ar1_truth(phi: float, n: int, sigma: float = 1.0) -> tuple[float, float, float]:
    """(variance, tau, standard error of the mean) of a stationary AR(1) series."""
    var = sigma**2 / (1.0 - phi**2)
    tau = (1.0 + phi) / (1.0 - phi)
    return var, tau, float(np.sqrt(var * tau / n))


def within(value: float, truth: float, rtol: float = RTOL) -> bool:
    return abs(value / truth - 1.0) < rtol


@pytest.fixture(scope="module")
def series() -> dict[float, list[np.ndarray]]:
    return {phi: [ar1(phi, N, seed) for seed in SEEDS] for phi in (0.0, 0.5, 0.9)}


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_blocking_error_ar1(series, phi):
    _, _, err_true = ar1_truth(phi, N)
    errs = np.array([blocking_error(x)[1] for x in series[phi]])
    assert within(errs.mean(), err_true), errs / err_true
    assert np.all(np.abs(errs / err_true - 1.0) < 0.3), errs / err_true
    for x in series[phi]:
        mean, _ = blocking_error(x)
        assert mean == pytest.approx(x.mean())


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_autocorrelation_time_ar1(series, phi):
    _, tau_true, _ = ar1_truth(phi, N)
    taus = np.array([autocorrelation_time(x) for x in series[phi]])
    assert within(taus.mean(), tau_true), taus / tau_true


def test_naive_error_fails_tolerance_for_correlated_data(series):
    """The AR(1) check is able to fail: ignoring correlations misses by ~sqrt(tau)."""
    _, _, err_true = ar1_truth(0.9, N)
    naive = np.mean([np.std(x, ddof=1) / np.sqrt(x.size) for x in series[0.9]])
    assert not within(naive, err_true)
    assert not within(1.0, ar1_truth(0.9, N)[1])  # tau = 1 would fail too


def test_uncorrelated_gaussian():
    sigma = 2.5
    x = 3.0 + sigma * np.random.default_rng(42).standard_normal(N)
    mean, err = blocking_error(x)
    assert err == pytest.approx(sigma / np.sqrt(N), rel=0.05)
    assert abs(mean - 3.0) < 5 * err
    assert autocorrelation_time(x) == pytest.approx(1.0, abs=0.1)


def test_non_power_of_two_length():
    n = 50_001
    x = ar1(0.5, n, seed=7)
    _, tau_true, err_true = ar1_truth(0.5, n)
    assert within(blocking_error(x)[1], err_true)
    assert within(autocorrelation_time(x), tau_true, rtol=0.25)


@pytest.mark.parametrize("n", [2, 3, 8, 9, 12, 16, 31, 50, 100])
def test_short_series(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.standard_normal(n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            est = estimate(x)
        assert np.isfinite(est.error) and est.error > 0
        assert np.isfinite(est.tau) and est.tau > 0
        assert est.mean == pytest.approx(x.mean())
        if n < 16:  # too few blocks: conservative fallback, at least the naive error
            assert est.error >= np.std(x, ddof=1) / np.sqrt(n)


def test_short_correlated_series_is_not_overconfident():
    """With few samples, the error should on average not undershoot the truth badly."""
    n, phi = 64, 0.5
    _, _, err_true = ar1_truth(phi, n)
    errs = [blocking_error(ar1(phi, n, seed))[1] for seed in range(200)]
    assert np.mean(errs) > 0.7 * err_true


def test_constant_series():
    x = np.full(1000, 1.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, err = blocking_error(x)
        tau = autocorrelation_time(x)
        est = estimate(x)
    assert (mean, err) == (1.25, 0.0)
    assert tau == 1.0
    assert est == Estimate(mean=1.25, error=0.0, variance=0.0, tau=1.0, n=1000)


def test_alternating_series_finite_and_nonzero():
    x = np.tile([1.0, -1.0], 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = estimate(x)
    assert np.isfinite(est.error) and est.error > 0
    assert np.isfinite(est.tau) and 0 < est.tau <= x.size


def test_estimate_combines_consistently(series):
    phi = 0.5
    var_true, tau_true, err_true = ar1_truth(phi, N)
    x = series[phi][0]
    est = estimate(x)
    assert isinstance(est, Estimate)
    assert est.n == N
    assert est.mean == pytest.approx(x.mean())
    assert est.variance == pytest.approx(np.var(x, ddof=1))
    assert within(est.variance, var_true, rtol=0.05)
    assert within(est.error, err_true) and within(est.tau, tau_true)
    # blocking error and autocorrelation time describe the same Var(mean)
    assert within(est.error, np.sqrt(est.variance * est.tau / est.n))
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.mean = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4)), np.array([1.0]), np.array([]), np.array([0.0, np.nan, 1.0])]
)
def test_invalid_input(bad):
    for fn in (blocking_error, autocorrelation_time, estimate):
        with pytest.raises(ValueError):
            fn(bad)


# training_slope: a line through the last 20 % of a training curve, with an honest error.
SLOPE_STEPS = 5000  # a window of 1000 steps


def _naive_slope_error(y: np.ndarray) -> float:
    """Least-squares slope error as if the points were uncorrelated."""
    t = np.arange(y.size) - (y.size - 1) / 2
    b = t @ y / (t @ t)
    res = y - y.mean() - b * t
    return float(np.sqrt(res @ res / (y.size - 2) / (t @ t)))


def test_training_slope_of_a_flat_correlated_curve_is_zero_with_an_honest_error():
    """Flat AR(1) curves (tau = 3): the slopes' z-scores have mean 0 and spread 1, which the
    naive least-squares error (too small by ~sqrt(tau)) would miss."""
    phi, seeds = 0.5, range(150)
    fits = [training_slope(-1.0 + 1e-3 * ar1(phi, SLOPE_STEPS, seed)) for seed in seeds]
    assert all(f is not None and f.window == f.n == SLOPE_STEPS // 5 for f in fits)
    z = np.array([f.slope / f.error for f in fits])
    assert abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.2, (z.mean(), z.std())
    assert np.mean(np.abs(z) > 2) < 0.12
    assert np.mean([f.falling() for f in fits]) < 0.1
    tails = [1e-3 * ar1(phi, SLOPE_STEPS, seed)[-SLOPE_STEPS // 5 :] for seed in seeds]
    naive = np.array([f.slope / _naive_slope_error(y) for f, y in zip(fits, tails, strict=True)])
    assert naive.std() > 1.4  # the check above is able to fail


def test_training_slope_of_a_falling_curve_is_significantly_negative():
    """Exponential decay plus AR(1) noise: the slope over the last 20 % is negative by many
    error bars and agrees with the decay's mean slope there."""
    t = np.arange(SLOPE_STEPS)
    decay = 0.05 * np.exp(-t / 2000)
    true = float(np.mean(np.gradient(decay)[-SLOPE_STEPS // 5 :]))
    for seed in range(5):
        fit = training_slope(-1.0 + decay + 1e-3 * ar1(0.7, SLOPE_STEPS, seed))
        assert isinstance(fit, Slope) and fit.falling()
        assert fit.slope < -4 * fit.error
        assert abs(fit.slope - true) < 3 * fit.error
        assert fit.change == pytest.approx(fit.slope * (SLOPE_STEPS // 5))


def test_training_slope_ignores_rejected_steps_and_needs_enough_of_them():
    y = -1.0 - 1e-4 * np.arange(200.0)
    assert training_slope(y).slope == pytest.approx(-1e-4)
    y[-40::3] = np.nan  # rejected steps in the window
    y[-1] = np.inf
    fit = training_slope(y)
    assert fit.window == 40 and fit.n == 26
    assert fit.slope == pytest.approx(-1e-4) and fit.error < 1e-12
    assert training_slope(np.ones(50)) == Slope(slope=0.0, error=0.0, n=10, window=10)
    assert training_slope(np.ones(47)) is None  # 9 steps in the window
    assert training_slope(np.r_[np.ones(49), np.nan]) is None  # 9 of 10 finite
    assert training_slope(np.array([])) is None
    for bad in (np.zeros((10, 10)),):
        with pytest.raises(ValueError):
            training_slope(bad)
    with pytest.raises(ValueError):
        training_slope(np.ones(100), fraction=0.0)
