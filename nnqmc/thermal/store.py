"""Sample files: HDF5 written atomically (temporary file, fsync, rename), atomic units;
optionally an extxyz of the same frames (eV, Å; needs ASE).

Datasets ``atomic_numbers``, ``positions`` (n, n_atoms, 3) bohr, ``weights`` (n,)
(normalised), ``energy``, ``energy_std`` (n,) hartree, ``coordinates`` (n, d) (bohr,
radians); attributes ``kind = "nnqmc-thermal-sample"``, ``method``, ``temperature`` (K),
``ess``, ``evaluations``, ``wall_time`` (s), ``model`` (its path), ``labels``,
``settings`` and ``diagnostics`` (JSON), ``version``, ``units``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..io import atomic_path, attr_value, write_h5_atomic
from ..pes.export import BOHR_ANGSTROM, HARTREE_EV
from ..version import __version__
from .sample import ThermalSample

KIND = "nnqmc-thermal-sample"
UNITS = "positions bohr; energies hartree; coordinates bohr and radians; temperature K"
ARRAYS = ("atomic_numbers", "positions", "weights", "energy", "energy_std", "coordinates")


def write_sample(path: str | Path, s: ThermalSample, model: str = "") -> None:
    """Write a sample to ``path`` atomically."""

    def fill(f: h5py.File) -> None:
        for name in ARRAYS:
            f.create_dataset(name, data=np.asarray(getattr(s, name)))
        f.attrs.update(
            kind=KIND,
            method=s.method,
            temperature=s.temperature,
            ess=s.ess,
            evaluations=s.evaluations,
            wall_time=s.wall_time,
            model=model,
            labels=json.dumps(s.labels),
            settings=json.dumps(s.settings),
            diagnostics=json.dumps(s.diagnostics),
            version=__version__,
            units=UNITS,
        )

    write_h5_atomic(path, fill)


def read_positions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """atomic_numbers and positions (bohr) of a sample file; ValueError if not one."""
    try:
        with h5py.File(path, "r") as f:
            if attr_value(f.attrs.get("kind")) != KIND:
                raise ValueError(f"{path} is not an nnqmc thermal sample")
            return np.asarray(f["atomic_numbers"]), np.asarray(f["positions"])
    except (OSError, KeyError) as err:
        raise ValueError(f"cannot read the sample {path}: {err}") from None


def write_extxyz(path: str | Path, s: ThermalSample) -> None:
    """The frames as extxyz (Å), with ``weight``, ``energy_ff`` and ``energy_ff_std`` (eV)
    in each frame's comment line; written to a temporary name and renamed."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for k in range(len(s.positions)):
        atoms = Atoms(numbers=s.atomic_numbers, positions=s.positions[k] * BOHR_ANGSTROM)
        atoms.info.update(
            weight=float(s.weights[k]),
            energy_ff=float(s.energy[k]) * HARTREE_EV,
            energy_ff_std=float(s.energy_std[k]) * HARTREE_EV,
        )
        frames.append(atoms)
    with atomic_path(path) as tmp:
        write(str(tmp), frames, format="extxyz")
