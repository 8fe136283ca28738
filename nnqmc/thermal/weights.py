"""Self-normalised importance weights, the effective sample size and reweighted averages.

Samples x_i of a proposal q reweighted to a target p ∝ exp(-u):

    log w_i = -u(x_i) - log q(x_i),      w̄_i = w_i / Σ_j w_j,
    ESS = (Σ w)² / (N Σ w²)  ∈ (0, 1],   ⟨f⟩_p ≈ Σ w̄_i f(x_i),

with the delta-method standard error of the self-normalised mean,
δ⟨f⟩² ≈ Σ w̄_i² (f(x_i) - ⟨f⟩)² (which reduces to var(f)/N for equal weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


def nan_count(log_w: np.ndarray) -> int:
    """How many log-weights are NaN (given weight 0 by :func:`normalised_weights`)."""
    return int(np.sum(np.isnan(np.asarray(log_w, np.float64))))


def normalised_weights(log_w: np.ndarray) -> np.ndarray:
    """w̄ = exp(log w - max) / Σ exp(log w - max). A log-weight of -inf (zero target
    density) is weight 0; NaN ones are weight 0 too, with a RuntimeWarning counting them
    (:func:`nan_count` for the number); +inf (a proposal density of 0 where the target is
    not) is a ValueError: no finite reweighting exists."""
    a = np.asarray(log_w, np.float64).reshape(-1)
    if np.any(a == np.inf):
        raise ValueError(
            f"{int(np.sum(a == np.inf))} of {len(a)} samples have an infinite importance "
            "weight (proposal density 0 where the target is not)"
        )
    nan = nan_count(a)
    if nan:
        warnings.warn(
            f"{nan} of {len(a)} log-weights are NaN: given weight 0", RuntimeWarning, stacklevel=2
        )
    a = np.where(np.isnan(a), -np.inf, a)
    if not np.isfinite(a).any():
        raise ValueError("no sample has a finite importance weight")
    w = np.exp(a - a.max())
    return w / w.sum()


def effective_sample_size(weights: np.ndarray) -> float:
    """(Σ w)² / (N Σ w²) of any positive weights (N the number of samples)."""
    w = np.asarray(weights, np.float64).reshape(-1)
    return float(w.sum() ** 2 / (len(w) * np.sum(w * w)))


@dataclass(frozen=True)
class Average:
    """A reweighted mean with its standard error."""

    mean: float
    error: float


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> Average:
    """Σ w̄ f and its delta-method error √(Σ w̄² (f - ⟨f⟩)²) (weights normalised here)."""
    f = np.asarray(values, np.float64).reshape(-1)
    w = np.asarray(weights, np.float64).reshape(-1)
    w = w / w.sum()
    mean = float(np.sum(w * f))
    return Average(mean, float(np.sqrt(np.sum(w * w * (f - mean) ** 2))))


def free_energy_difference(in_b: np.ndarray, weights: np.ndarray) -> Average:
    """ΔF/kT = -log(P_B / P_A) between the samples in B (``in_b`` True) and the rest, A,
    with its delta-method error δP_B / (P_B P_A); inf when one side has no weight."""
    b = np.asarray(in_b, bool).reshape(-1)
    p = weighted_mean(b.astype(np.float64), weights)
    if not 0.0 < p.mean < 1.0:
        return Average(float("inf") if p.mean == 0.0 else float("-inf"), float("nan"))
    return Average(float(-np.log(p.mean / (1.0 - p.mean))), p.error / (p.mean * (1 - p.mean)))
