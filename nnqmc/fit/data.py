"""Training sets: the finished rows of a scan dataset (atomic units), and their split into
training and held-out geometries."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..pes.dataset import Dataset
from .errors import FitError


@dataclass(frozen=True)
class TrainingSet:
    """Geometries with energies and/or forces and their standard errors, atomic units.

    ``positions`` (n, n_atoms, 3) bohr; ``energy``, ``energy_err`` (n,) hartree;
    ``forces``, ``forces_err`` (n, n_atoms, 3) hartree/bohr. Missing labels are None (the
    whole column) or NaN (one geometry); an error bar of 0 means exact (the fit's noise floor
    applies)."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray | None = None
    energy_err: np.ndarray | None = None
    forces: np.ndarray | None = None
    forces_err: np.ndarray | None = None

    def __post_init__(self) -> None:
        z = np.asarray(self.atomic_numbers, np.int64).reshape(-1)
        pos = np.asarray(self.positions, np.float64)
        if pos.ndim != 3 or pos.shape[1:] != (len(z), 3):
            raise FitError(f"positions must be (n, {len(z)}, 3), got {pos.shape}")
        object.__setattr__(self, "atomic_numbers", z)
        object.__setattr__(self, "positions", pos)
        for name, shape in (
            ("energy", (len(pos),)),
            ("energy_err", (len(pos),)),
            ("forces", pos.shape),
            ("forces_err", pos.shape),
        ):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, np.float64).reshape(shape)
                object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        return len(self.positions)

    def has_energy(self) -> np.ndarray:
        """Per geometry: whether it has a finite energy label, (n,) bool."""
        if self.energy is None:
            return np.zeros(self.n, bool)
        return np.isfinite(self.energy)

    def has_forces(self) -> np.ndarray:
        """Per geometry: whether every force component is finite, (n,) bool."""
        if self.forces is None:
            return np.zeros(self.n, bool)
        return np.all(np.isfinite(self.forces), axis=(1, 2))

    def subset(self, rows: np.ndarray) -> TrainingSet:
        """The geometries ``rows`` (indices or a mask)."""
        take = lambda a: None if a is None else a[rows]
        return replace(
            self,
            positions=self.positions[rows],
            energy=take(self.energy),
            energy_err=take(self.energy_err),
            forces=take(self.forces),
            forces_err=take(self.forces_err),
        )


def training_set(data: Dataset) -> TrainingSet:
    """The finished rows (status ``done``) of a scan dataset; FitError if there are none."""
    done = np.array([data.status(k) == "done" for k in range(data.n)], dtype=bool)
    if not done.any():
        raise FitError(f"no finished rows (status done) among the {data.n} of the dataset")
    column = lambda name: data.columns[name][done] if name in data.columns else None
    return TrainingSet(
        data.atomic_numbers,
        data.positions[done],
        column("energy"),
        column("energy_err"),
        column("forces"),
        column("forces_err"),
    )


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random training and held-out indices (sorted): round(fraction · n) held out, at least
    one geometry kept for training."""
    if not 0.0 <= fraction < 1.0:
        raise FitError(f"the held-out fraction must be in [0, 1), got {fraction:g}")
    if seed < 0:
        raise FitError(f"the seed must be >= 0, got {seed}")
    n_valid = min(int(round(fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])
