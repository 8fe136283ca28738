"""Model files: HDF5, written atomically (temporary file, fsync, rename), atomic units.

Datasets ``atomic_numbers``, ``permutations``, ``energy_positions``, ``force_positions``
(bohr), ``weights``, ``cholesky``; attributes ``kind = "nnqmc-force-field"``, ``schema``,
``units``, ``sigma`` (bohr⁻¹), ``scale``, ``mean``, ``offset`` (hartree), ``version`` and
``info`` (JSON: labels used, noise, selection, the hyperparameter grid, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..io import attr_value, write_h5_atomic
from ..version import __version__
from .errors import FitError
from .model import Model

KIND = "nnqmc-force-field"
SCHEMA = 1
UNITS = (
    "positions bohr; energies hartree; forces hartree/bohr; sigma bohr^-1 (on inverse distances)"
)
ARRAYS = (
    "atomic_numbers",
    "permutations",
    "energy_positions",
    "force_positions",
    "weights",
    "cholesky",
)
SCALARS = ("sigma", "scale", "mean", "offset")


def save_model(path: str | Path, model: Model) -> None:
    """Write ``model`` to ``path`` atomically."""

    def fill(f: h5py.File) -> None:
        for name in ARRAYS:
            f.create_dataset(name, data=np.asarray(getattr(model, name)))
        for name in SCALARS:
            f.attrs[name] = float(getattr(model, name))
        f.attrs["kind"] = KIND
        f.attrs["schema"] = SCHEMA
        f.attrs["units"] = UNITS
        f.attrs["version"] = __version__
        f.attrs["info"] = json.dumps(model.info)

    write_h5_atomic(path, fill)


def load_model(path: str | Path) -> Model:
    """A model file back in memory; FitError if it is missing or not a model."""
    try:
        with h5py.File(path, "r") as f:
            if attr_value(f.attrs.get("kind")) != KIND:
                raise FitError(f"{path} is not an nnqmc force-field model")
            schema = int(attr_value(f.attrs["schema"]))
            if schema > SCHEMA:
                raise FitError(f"{path}: model schema {schema} is newer than this nnqmc's")
            arrays = {name: np.asarray(f[name]) for name in ARRAYS}
            scalars = {name: float(attr_value(f.attrs[name])) for name in SCALARS}
            info = json.loads(attr_value(f.attrs["info"]))
    except (OSError, KeyError) as err:
        raise FitError(f"cannot read the model {path}: {err}") from None
    return Model(**arrays, **scalars, info=info)
