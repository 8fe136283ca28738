"""Tests for nnqmc.estimate: blocking errors and autocorrelation times on AR(1) data."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from nnqmc.estimate import Estimate, autocorrelation_time, blocking_error, estimate

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
