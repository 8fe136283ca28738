"""Errors of a model on labelled geometries: MAE and RMSE of energies (hartree) and of force
components (hartree/bohr)."""

from __future__ import annotations

import numpy as np

from .data import TrainingSet
from .model import Model, predict


def errors(model: Model, data: TrainingSet) -> dict[str, float | int]:
    """``energy_mae``, ``energy_rmse`` over the geometries with an energy (``n_energy`` of
    them), ``forces_mae``, ``forces_rmse`` over every component of the geometries with forces
    (``n_forces`` geometries); NaN where there is nothing to compare."""
    out: dict[str, float | int] = {}
    if data.n:
        energy, forces, _ = predict(model, data.positions)
    for kind, has, truth in (
        ("energy", data.has_energy(), data.energy),
        ("forces", data.has_forces(), data.forces),
    ):
        out[f"n_{kind}"] = int(has.sum())
        if has.any():
            diff = (energy if kind == "energy" else forces)[has] - truth[has]
            out[f"{kind}_mae"] = float(np.mean(np.abs(diff)))
            out[f"{kind}_rmse"] = float(np.sqrt(np.mean(diff**2)))
        else:
            out[f"{kind}_mae"] = out[f"{kind}_rmse"] = float("nan")
    return out
