"""Fitting: which labels, which noise, which hyperparameters, and the GP solution.

Observations: the energies E_i (prior mean μ = their mean) and/or the force components
F_j (prior mean 0) of the training geometries, noise variances from the labels' own error
bars (``noise="per-point"``: Σ = diag(max(err², floor²))) or their mean per kind
(``"uniform"``). Hyperparameters: the length scale σ over a grid (or fixed), and for each σ
the signal scale s of maximum marginal likelihood; the σ kept is the one of maximum log
marginal likelihood (``select="lml"``, default) or of least k-fold cross-validation error
(``select="cv"``, geometries held out fold by fold). Forces-only fits (``use="forces"``:
GDML as sGDML trains it) then fix the energy level as sGDML does: the integration constant
c₀ is the (1/err²-weighted) mean of E_i - Ê(x_i) over the training energies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..threads import single_threaded_blas
from .data import TrainingSet
from .descriptor import (
    atom_permutations,
    identity_permutation,
    inverse_distances,
    pair_permutations,
)
from .errors import FitError
from .gp import (
    best_scale,
    cross_validation_error,
    factorize,
    noise_variances,
    scale_profile,
    weights,
)
from .kernel import gram
from .model import Model, predict

NOISE = ("per-point", "uniform")
USE = ("auto", "both", "energy", "forces")
SELECT = ("lml", "cv")


@dataclass(frozen=True)
class FitOptions:
    """How to fit (see the module docstring). ``sigma`` (bohr⁻¹) and ``scale`` (hartree) fix
    those hyperparameters instead of searching; ``floors``: the smallest error bars assumed
    for energies (hartree) and forces (hartree/bohr), so exact labels stay well posed."""

    noise: str = "per-point"
    use: str = "auto"
    select: str = "lml"
    sigma: float | None = None
    scale: float | None = None
    symmetric: bool = True
    floors: tuple[float, float] = (1e-6, 1e-6)
    folds: int = 5
    n_sigmas: int = 16

    def __post_init__(self) -> None:
        for name, valid in (("noise", NOISE), ("use", USE), ("select", SELECT)):
            if getattr(self, name) not in valid:
                raise FitError(f"{name} must be one of {', '.join(valid)}")
        for name in ("sigma", "scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise FitError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class Observations:
    """The training observations in the order of the covariance matrix."""

    energy_rows: np.ndarray
    force_rows: np.ndarray
    values: np.ndarray  # y - m
    noise: np.ndarray  # Σ diagonal
    groups: np.ndarray  # geometry of each observation
    kinds: np.ndarray  # 0 energy, 1 force component
    mean: float  # μ


def resolve_use(train: TrainingSet, use: str) -> str:
    """``auto`` → the labels present (both, energy or forces); FitError if a kind asked for
    is missing."""
    has_e, has_f = bool(train.has_energy().any()), bool(train.has_forces().any())
    if use == "auto":
        if not (has_e or has_f):
            raise FitError("no finite energy or force labels to fit")
        return "both" if has_e and has_f else ("energy" if has_e else "forces")
    if use in ("both", "energy") and not has_e:
        raise FitError("no finite energy labels to fit")
    if use in ("both", "forces") and not has_f:
        raise FitError("no finite force labels to fit")
    return use


def observations(train: TrainingSet, use: str, options: FitOptions) -> Observations:
    """Labels, prior mean and noise variances of the observations ``use`` selects."""
    uniform = options.noise == "uniform"
    e_rows = np.flatnonzero(train.has_energy()) if use in ("both", "energy") else []
    f_rows = np.flatnonzero(train.has_forces()) if use in ("both", "forces") else []
    e_rows, f_rows = np.asarray(e_rows, np.int64), np.asarray(f_rows, np.int64)
    m = 3 * train.positions.shape[1]
    mean = float(np.mean(train.energy[e_rows])) if len(e_rows) else 0.0
    values, noise, groups, kinds = [], [], [], []
    if len(e_rows):
        err = np.zeros(len(e_rows)) if train.energy_err is None else train.energy_err[e_rows]
        values.append(train.energy[e_rows] - mean)
        noise.append(noise_variances(err, options.floors[0], uniform, "energy"))
        groups.append(e_rows)
        kinds.append(np.zeros(len(e_rows), np.int64))
    if len(f_rows):
        forces = train.forces[f_rows].reshape(-1)
        err = np.zeros_like(forces) if train.forces_err is None else train.forces_err[f_rows]
        values.append(forces)
        noise.append(noise_variances(err, options.floors[1], uniform, "force"))
        groups.append(np.repeat(f_rows, m))
        kinds.append(np.ones(len(forces), np.int64))
    cat = np.concatenate
    return Observations(e_rows, f_rows, cat(values), cat(noise), cat(groups), cat(kinds), mean)


def default_sigmas(positions: np.ndarray, count: int) -> np.ndarray:
    """A log grid of length scales from the median nearest-neighbour distance of the training
    descriptors to 20 times their largest distance (bohr⁻¹)."""
    d = np.stack([np.asarray(inverse_distances(x)) for x in positions])
    dist = np.sqrt(np.sum((d[:, None] - d[None]) ** 2, axis=-1))
    off = dist[~np.eye(len(d), dtype=bool)]
    if off.size == 0 or off.max() == 0:
        typical = 0.1 * float(np.linalg.norm(d[0]))
        return np.geomspace(typical / 10, typical * 10, count)
    np.fill_diagonal(dist, np.inf)
    nearest = np.min(np.where(dist > 0, dist, np.inf), axis=1)  # repeated geometries aside
    low = float(np.median(nearest[np.isfinite(nearest)]))
    return np.geomspace(low, 20.0 * float(off.max()), count)


def _reference_scale(obs: Observations) -> float:
    """A rough signal size to centre the search for s on: the rms of y - m."""
    spread = float(np.sqrt(np.mean(obs.values**2)))
    return spread if spread > 0 else 1.0


def select_hyperparameters(
    xe: np.ndarray,
    xf: np.ndarray,
    pairs: np.ndarray,
    obs: Observations,
    sigmas: np.ndarray,
    options: FitOptions,
) -> tuple[list[dict], dict, np.ndarray]:
    """For each σ: K₁, the best (or the fixed) s and log p, and with ``select="cv"`` the
    cross-validation error. Returns every σ's row, the chosen row and its K₁."""
    reference = _reference_scale(obs)
    rows, best = [], None
    for sigma in sigmas:
        k1 = np.asarray(gram(xe, xf, float(sigma), pairs))
        if options.scale is None:
            scale, lml = best_scale(k1, obs.noise, obs.values, reference)
        else:
            scale = options.scale
            lml = float(scale_profile(k1, obs.noise, obs.values)(scale))
        row = {"sigma": float(sigma), "scale": scale, "log_likelihood": lml}
        if options.select == "cv" and len(sigmas) > 1:
            row["cv_error"] = cross_validation_error(
                k1, obs.noise, obs.values, scale, obs.groups, obs.kinds, options.folds
            )
        score = row.get("cv_error", -lml)
        if best is None or score < best[0]:
            best = (score, row, k1)
        rows.append(row)
    _, chosen, k1 = best
    return rows, chosen, k1


@single_threaded_blas  # OpenBLAS threads spin against XLA's and other jobs' (nnqmc.threads)
def fit(train: TrainingSet, options: FitOptions | None = None) -> Model:
    """The GP force field of a training set (see the module docstring); FitError for
    unusable input."""
    options = options or FitOptions()
    use = resolve_use(train, options.use)
    obs = observations(train, use, options)
    perms = (
        atom_permutations(train.atomic_numbers)
        if options.symmetric
        else identity_permutation(len(train.atomic_numbers))
    )
    pairs = pair_permutations(perms)
    xe, xf = train.positions[obs.energy_rows], train.positions[obs.force_rows]
    used = np.union1d(obs.energy_rows, obs.force_rows)
    sigmas = (
        np.array([options.sigma])
        if options.sigma is not None
        else default_sigmas(train.positions[used], options.n_sigmas)
    )
    rows, chosen, k1 = select_hyperparameters(xe, xf, pairs, obs, sigmas, options)
    chol = factorize(k1, obs.noise, chosen["scale"])
    alpha = weights(chol, obs.values)
    info = {
        "use": use,
        "noise": options.noise,
        "select": options.select if options.sigma is None else "fixed",
        "symmetric": options.symmetric,
        "log_likelihood": chosen["log_likelihood"],
        "n_geometries": int(len(used)),
        "n_energies": int(len(obs.energy_rows)),
        "n_forces": int(len(obs.force_rows)),
        "grid": rows,
    }
    if "cv_error" in chosen:
        info["cv_error"] = chosen["cv_error"]
    model = Model(
        train.atomic_numbers,
        perms,
        chosen["sigma"],
        chosen["scale"],
        obs.mean,
        0.0,
        xe,
        xf,
        chosen["scale"] ** 2 * alpha,
        chol,
        info,
    )
    if use == "forces":
        model = _with_integration_constant(model, train, options)
    return model


def _with_integration_constant(model: Model, train: TrainingSet, options: FitOptions) -> Model:
    """c₀ = Σ w_i (E_i - Ê(x_i)) / Σ w_i over the training energies, w_i = 1/σ_i² (equal
    weights with uniform noise, as sGDML); unchanged if there are no energies."""
    rows = np.flatnonzero(train.has_energy())
    if not len(rows):
        return model
    err = np.zeros(len(rows)) if train.energy_err is None else train.energy_err[rows]
    variances = noise_variances(err, options.floors[0], options.noise == "uniform", "energy")
    predicted, _, _ = predict(model, train.positions[rows])
    w = 1.0 / variances
    offset = float(np.sum(w * (train.energy[rows] - predicted)) / np.sum(w))
    return replace(model, offset=offset)
