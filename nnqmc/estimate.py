"""Statistical error analysis of correlated Monte Carlo time series (numpy only).

For a stationary series ``x_1..x_n`` with variance ``var`` and normalised
autocorrelation ``rho(t)``, the variance of the sample mean is

    Var(xbar) ≈ var * tau / n,    tau = 1 + 2 * sum_{t>=1} rho(t),

where ``tau`` is the integrated autocorrelation time (in units of samples;
``tau = 1`` for uncorrelated data).  Two independent estimators are provided:

* :func:`blocking_error` -- Flyvbjerg–Petersen blocking with Jonsson's (2018)
  automatic choice of the block level; used for the standard error.
* :func:`autocorrelation_time` -- FFT autocorrelation summed over Sokal's
  self-consistent window; used for ``tau``.

:func:`training_slope` fits a line to the end of a series (the training energy)
and gets the slope's error from the same blocking levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Estimate",
    "Slope",
    "autocorrelation_time",
    "blocking_error",
    "estimate",
    "training_slope",
]

# Blocking levels with fewer blocks than this are considered too noisy to be
# trusted as the final answer (relative error of the error ~ 1/sqrt(2 n_b)).
MIN_BLOCKS = 16
# Conservative inflation of the naive error used when blocking is inconclusive.
FALLBACK_FACTOR = 2.0
# Quantile of the chi^2 hypothesis test in Jonsson's automatic blocking.
_Z_99 = 2.3263478740408408  # standard-normal 0.99 quantile
# Fewest finite points in the window of training_slope; shorter windows give None.
MIN_SLOPE_POINTS = 10


@dataclass(frozen=True)
class Estimate:
    """Mean of a correlated series with its uncertainty.

    ``error`` is the standard error of the mean, ``variance`` the sample
    variance of the series, ``tau`` the integrated autocorrelation time in
    samples and ``n`` the number of samples.
    """

    mean: float
    error: float
    variance: float
    tau: float
    n: int


def _as_series(x: np.ndarray) -> np.ndarray:
    """Validate and convert the input to a finite 1D float64 array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected a 1D time series, got shape {a.shape}")
    if a.size < 2:
        raise ValueError("need at least 2 samples")
    if not np.all(np.isfinite(a)):
        raise ValueError("time series contains non-finite values")
    return a


def _chi2_quantile_99(df: np.ndarray) -> np.ndarray:
    """0.99 quantile of chi^2(df) via the Wilson–Hilferty approximation.

    q ≈ df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3, accurate to <1% for df >= 1.
    """
    h = 2.0 / (9.0 * np.asarray(df, dtype=np.float64))
    return df * (1.0 - h + _Z_99 * np.sqrt(h)) ** 3


def blocking_error(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of a correlated series by automatic blocking.

    Level ``k`` halves the series ``k`` times by averaging neighbouring pairs
    (an odd trailing element is dropped), giving ``n_k`` blocks with sample
    variance ``s_k`` and lag-1 autocovariance ``g_k`` (about the global mean).
    Its error estimate is ``err_k = sqrt(s_k / n_k)``, valid once blocks are
    uncorrelated.  Block level choice (Jonsson, PRE 98, 043304 (2018)): with

        M_k = sum_{j >= k} n_j * (g_j / s_j)^2,

    which is ~ chi^2 with ``K - k`` degrees of freedom (``K`` levels) if ``j >= k``
    are uncorrelated, ``k*`` is the smallest ``k`` with ``M_k`` below the 0.99
    chi^2 quantile.  The residual correlation r = g/s between neighbouring
    blocks at ``k*`` is then corrected to first order,

        err = sqrt(s_k / n_k * max(1, 1 + 2 r_k)),

    which removes the O(tau/b) underestimate of finite blocks of size b.
    Fallback, if no level passes or level ``k*`` has fewer
    than ``MIN_BLOCKS`` blocks: the largest of ``FALLBACK_FACTOR`` times the
    naive error ``sqrt(s_0 / n)`` and the ``err_k`` of levels with >= 4 blocks.
    A constant series returns an error of exactly 0.
    """
    a = _as_series(x)
    mu = float(np.mean(a))
    if np.all(a == a[0]):
        return mu, 0.0

    n_blocks, svar, corr = [], [], []
    b = a
    while b.size >= 2:
        dev = b - mu
        s = float(np.var(b, ddof=1))
        if s <= 0.0:  # blocks became identical: no information beyond here
            break
        g = float(np.dot(dev[:-1], dev[1:]) / b.size)
        n_blocks.append(b.size)
        svar.append(s)
        corr.append(g / s)
        m = b.size // 2
        b = 0.5 * (b[0 : 2 * m : 2] + b[1 : 2 * m : 2])

    nb = np.asarray(n_blocks, dtype=np.float64)
    errs = np.sqrt(np.asarray(svar) / nb)
    return mu, _chosen_error(nb, errs, np.asarray(corr), min_fallback_blocks=4, geometric=False)


def _chosen_error(
    nb: np.ndarray, errs: np.ndarray, r: np.ndarray, min_fallback_blocks: int, geometric: bool
) -> float:
    """The error of the first level that passes Jonsson's test (see :func:`blocking_error`),
    corrected for the residual lag-1 correlation ``r`` of its blocks by ``1 + 2 r`` or, if
    ``geometric``, by ``(1 + r) / (1 - r)`` (correlations ``r^t`` summed, ``r <= 1/2``);
    or the fallback over the levels with at least ``min_fallback_blocks`` blocks."""
    stat = np.cumsum((nb * r**2)[::-1])[::-1]
    dof = np.arange(nb.size, 0, -1)
    passed = np.flatnonzero(stat < _chi2_quantile_99(dof))
    if passed.size and nb[passed[0]] >= MIN_BLOCKS:
        k = passed[0]
        rk = float(r[k])
        factor = (1.0 + min(rk, 0.5)) / (1.0 - min(rk, 0.5)) if geometric else 1.0 + 2.0 * rk
        return float(errs[k] * np.sqrt(max(1.0, factor)))
    reliable = errs[nb >= min_fallback_blocks]
    fallback = FALLBACK_FACTOR * errs[0]
    if reliable.size:
        fallback = max(fallback, float(reliable.max()))
    return float(fallback)


def _autocorrelation(a: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation rho(t) = C(t)/C(0), C(t) = sum (x_i-m)(x_{i+t}-m)/n.

    Computed via FFT (Wiener–Khinchin) with zero padding to avoid wrap-around.
    """
    n = a.size
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(a - a.mean(), n=size)
    acov = np.fft.irfft(f * np.conj(f), n=size)[:n]
    return acov / acov[0]


def autocorrelation_time(x: np.ndarray, c: float = 5.0) -> float:
    """Integrated autocorrelation time with Sokal's automatic window.

    tau(M) = 1 + 2 * sum_{t=1}^{M} rho(t); the window ``M`` is the smallest
    one with ``M >= c * tau(M)`` (the largest lag if none qualifies).  Since
    0 <= n Var(xbar) / var <= n, the result is clipped to [1/n, n] (finite,
    positive ``n / tau``); a constant series gives 1.0.  Reliable only for
    n >> tau (Sokal suggests n >~ 1000 tau); short series are biased low.
    """
    a = _as_series(x)
    if np.all(a == a[0]):
        return 1.0
    rho = _autocorrelation(a)
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{t=1}^{M} rho(t)
    ok = np.flatnonzero(np.arange(a.size) >= c * taus)
    window = int(ok[0]) if ok.size else a.size - 1
    return float(np.clip(taus[window], 1.0 / a.size, a.size))


def estimate(x: np.ndarray) -> Estimate:
    """Full :class:`Estimate` of a series: blocking error and Sokal ``tau``."""
    a = _as_series(x)
    mean, error = blocking_error(a)
    return Estimate(
        mean=mean,
        error=error,
        variance=float(np.var(a, ddof=1)),
        tau=autocorrelation_time(a),
        n=int(a.size),
    )


@dataclass(frozen=True)
class Slope:
    """A straight line through the end of a series: ``slope`` and its standard ``error``
    per step, ``n`` finite points fitted out of a ``window`` of the last steps."""

    slope: float
    error: float
    n: int
    window: int

    @property
    def change(self) -> float:
        """The change the slope implies over the window (slope x window)."""
        return self.slope * self.window

    def falling(self, sigmas: float = 2.0) -> bool:
        """Whether the slope is negative by more than ``sigmas`` standard errors."""
        return self.slope < -sigmas * self.error


def _line_levels(t: np.ndarray, y: np.ndarray) -> tuple[float, list[tuple[int, float, float]]]:
    """The least-squares slope of ``y(t)`` and, per blocking level (pairs of neighbouring
    points averaged, in ``t`` and ``y``), ``(blocks, slope error, lag-1 residual corr.)``."""
    levels = []
    slope = 0.0
    while y.size >= 4:
        tc = t - t.mean()
        sxx = float(tc @ tc)
        b = float(tc @ (y - y.mean())) / sxx
        res = y - y.mean() - b * tc
        rss = float(res @ res)
        corr = float(res[:-1] @ res[1:]) / rss if rss > 0.0 else 0.0
        levels.append((y.size, float(np.sqrt(rss / (y.size - 2) / sxx)), corr))
        if len(levels) == 1:
            slope = b
        m = y.size // 2
        t = 0.5 * (t[0 : 2 * m : 2] + t[1 : 2 * m : 2])
        y = 0.5 * (y[0 : 2 * m : 2] + y[1 : 2 * m : 2])
    return slope, levels


def training_slope(energies: np.ndarray, fraction: float = 0.2) -> Slope | None:
    """Slope (per step) of a per-step series over its last ``fraction`` of steps.

    The window holds the last ``round(fraction * len)`` rows; non-finite rows (rejected
    steps) are dropped, keeping the others' step numbers ``t``. The slope ``b`` is the
    least-squares line ``y = a + b t``. Its error comes from the line refitted to block
    means (level ``k``: ``2^k`` neighbouring points averaged, in ``t`` and ``y``):
    ``err_k^2 = RSS_k / (n_k - 2) / S_tt,k``, with ``S_tt,k = sum (t_j - tbar)^2``, exact
    for uncorrelated block means. The level is chosen as in :func:`blocking_error`
    (Jonsson's test on the residuals' lag-1 correlations ``r_k``, at least ``MIN_BLOCKS``
    blocks), with the remaining correlation of the blocks summed as a geometric series,
    ``err^2 = err_k^2 (1 + r_k) / (1 - r_k)``; otherwise the fallback over levels of
    >= 8 blocks. Honest (z-scores of unit spread) once the window spans many
    autocorrelation times; a curved trend in the window enlarges the error. Returns
    ``None`` with fewer than ``MIN_SLOPE_POINTS`` finite points in the window.
    """
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"expected a 1D series, got shape {e.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    window = min(e.size, max(1, round(fraction * e.size)))
    tail = e[e.size - window :]
    keep = np.isfinite(tail)
    if np.count_nonzero(keep) < MIN_SLOPE_POINTS:
        return None
    t = np.flatnonzero(keep).astype(np.float64)
    slope, levels = _line_levels(t, tail[keep])
    nb, errs, corr = (np.asarray(c, dtype=np.float64) for c in zip(*levels, strict=True))
    error = (
        0.0
        if errs[0] == 0.0
        else _chosen_error(nb, errs, corr, min_fallback_blocks=8, geometric=True)
    )
    return Slope(slope=slope, error=error, n=int(keep.sum()), window=window)
