"""Warm starts of a scan's geometries from a finished neighbour (:mod:`nnqmc.pes.scan`):
the neighbour, the walkers moved with the nuclei, the parameters carried over."""

from __future__ import annotations

from typing import Any

import numpy as np

from .dataset import Dataset

__all__ = ["nearest_done", "shift_walkers", "transfer_parameters"]


def nearest_done(data: Dataset, k: int, shard: Any) -> int | None:
    """The finished geometry of this shard closest to ``k`` (Euclidean, bohr), else None."""
    best, best_d = None, np.inf
    for j in range(data.n):
        if j == k or not shard.owns(j) or data.status(j) != "done":
            continue
        d = float(np.linalg.norm(data.positions[j] - data.positions[k]))
        if d < best_d:
            best, best_d = j, d
    return best


def shift_walkers(walkers: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Each electron moved by the displacement of its nearest nucleus (old geometry)."""
    d = np.linalg.norm(walkers[:, :, None, :] - old[None, None], axis=-1)
    nearest = np.argmin(d, axis=-1)  # (n_walkers, n_elec)
    return walkers + (new - old)[nearest]


def transfer_parameters(old: Any, fresh: Any, old_fresh: Any = None) -> Any:
    """Warm-start parameters from ``old`` (a neighbour's trained ones).

    CI coefficients: the neighbour's training changed each one by a factor
    c_trained / c_CASSCF (co-adapted with the backflow: a determinant the network switched
    off must stay off); that factor is applied to this geometry's CASSCF coefficients
    (``fresh``), which carry the geometry dependence and the signs of this geometry's
    orbitals. ``old_fresh``: the neighbour's CASSCF parameters (its ``init``); without them,
    or where a CASSCF coefficient vanishes, the trained magnitude with the new sign."""
    if not (isinstance(old, dict) and isinstance(fresh, dict) and "ci" in fresh):
        return old
    trained, new = np.asarray(old["ci"]), np.asarray(fresh["ci"])
    sign = np.where(new < 0, -1.0, 1.0)
    ci = np.abs(trained) * sign
    if isinstance(old_fresh, dict) and "ci" in old_fresh:
        reference = np.asarray(old_fresh["ci"])
        ok = np.abs(reference) > 1e-8
        ci = np.where(ok, new * trained / np.where(ok, reference, 1.0), ci)
    return {**old, "ci": ci}
