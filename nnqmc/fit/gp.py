"""Gaussian-process algebra on a given unit-amplitude covariance K₁ (numpy, float64).

Observations y (energies and force components) with prior mean m and independent noise
variances Σ = diag(σ_n²) are modelled as y ~ N(m, s² K₁ + Σ). The log marginal likelihood

    log p(y | σ, s) = -½ rᵀ (s² K₁ + Σ)⁻¹ r - ½ log det(s² K₁ + Σ) - (n/2) log 2π,  r = y - m,

is evaluated for many s at once from one eigendecomposition Σ^{-1/2} K₁ Σ^{-1/2} = U Λ Uᵀ:
with z = Uᵀ Σ^{-1/2} r,

    log p = -½ Σ_k z_k² / (s² λ_k + 1) - ½ Σ_k log(s² λ_k + 1) - ½ Σ_i log σ_n,i² - (n/2) log 2π.

The posterior mean of any linear functional with covariance c (unit amplitude) to the
observations is s² cᵀ α with α = (s² K₁ + Σ)⁻¹ r, and its variance s² c₀ - |L⁻¹ s² c|² with
L the Cholesky factor of s² K₁ + Σ.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .errors import FitError

LOG_2PI = float(np.log(2.0 * np.pi))


def noise_variances(err: np.ndarray, floor: float, uniform: bool, what: str) -> np.ndarray:
    """Per-observation noise variances max(err², floor²); with ``uniform`` all of them
    replaced by their mean. FitError if an error bar is missing (NaN) or negative."""
    err = np.asarray(err, np.float64).reshape(-1)
    if not np.all(np.isfinite(err)) or np.any(err < 0):
        raise FitError(
            f"the {what} labels need finite, non-negative error bars (0 for exact labels)"
        )
    variances = np.maximum(err * err, floor * floor)
    if uniform and variances.size:
        variances = np.full_like(variances, variances.mean())
    return variances


def scale_profile(k1: np.ndarray, noise: np.ndarray, residual: np.ndarray):
    """The function s ↦ log p(y | s) of one K₁ (vectorized over an array of s)."""
    w = 1.0 / np.sqrt(noise)
    lam, u = np.linalg.eigh(w[:, None] * k1 * w[None, :])
    lam = np.clip(lam, 0.0, None)  # K₁ is positive semidefinite; drop round-off below 0
    z2 = (u.T @ (w * residual)) ** 2
    const = -0.5 * np.sum(np.log(noise)) - 0.5 * len(noise) * LOG_2PI

    def log_likelihood(scale: np.ndarray) -> np.ndarray:
        t = np.asarray(scale, np.float64)[..., None] ** 2 * lam + 1.0
        return -0.5 * np.sum(z2 / t, axis=-1) - 0.5 * np.sum(np.log(t), axis=-1) + const

    return log_likelihood


def best_scale(
    k1: np.ndarray, noise: np.ndarray, residual: np.ndarray, reference: float
) -> tuple[float, float]:
    """The signal scale s of maximum marginal likelihood (searched from reference/10⁴ to
    reference·10⁴ on a log grid of 321 points), and that log likelihood."""
    log_likelihood = scale_profile(k1, noise, residual)
    scales = reference * np.logspace(-4.0, 4.0, 321)
    values = log_likelihood(scales)
    k = int(np.argmax(values))
    return float(scales[k]), float(values[k])


def factorize(k1: np.ndarray, noise: np.ndarray, scale: float) -> np.ndarray:
    """The lower Cholesky factor L of s² K₁ + Σ (a relative jitter of up to 1e-8 of the mean
    diagonal is added if round-off makes it indefinite)."""
    matrix = scale * scale * k1 + np.diag(noise)
    jitter = 0.0
    diagonal = float(np.mean(np.diag(matrix)))
    for _ in range(5):
        try:
            return scipy.linalg.cholesky(
                matrix + jitter * np.eye(len(matrix)), lower=True, check_finite=True
            )
        except np.linalg.LinAlgError:
            jitter = 1e-14 * diagonal if jitter == 0.0 else 100.0 * jitter
    raise FitError("the covariance matrix is not positive definite (duplicate geometries?)")


def weights(chol: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """α = (s² K₁ + Σ)⁻¹ r from the Cholesky factor."""
    return scipy.linalg.cho_solve((chol, True), residual)


def cross_validation_error(
    k1: np.ndarray,
    noise: np.ndarray,
    residual: np.ndarray,
    scale: float,
    groups: np.ndarray,
    kinds: np.ndarray,
    folds: int,
    seed: int = 0,
) -> float:
    """k-fold held-out error of the posterior mean at fixed (σ, s): the geometries (``groups``
    gives each observation's geometry) are split into ``folds`` parts; each part is predicted
    from the others. Returns Σ_kind mean(error²) / mean(residual²) over the observation
    ``kinds`` (0 energy, 1 force component): a normalized mean squared error."""
    geometries = np.unique(groups)
    folds = min(folds, len(geometries))
    if folds < 2:
        raise FitError("cross-validation needs at least two training geometries")
    parts = np.array_split(np.random.default_rng(seed).permutation(geometries), folds)
    prediction = np.empty_like(residual)
    for part in parts:
        held = np.isin(groups, part)
        train = ~held
        chol = factorize(k1[np.ix_(train, train)], noise[train], scale)
        alpha = weights(chol, residual[train])
        prediction[held] = scale * scale * k1[np.ix_(held, train)] @ alpha
    score = 0.0
    for kind in np.unique(kinds):
        mask = kinds == kind
        spread = np.mean(residual[mask] ** 2) or 1.0
        score += float(np.mean((prediction[mask] - residual[mask]) ** 2) / spread)
    return score
