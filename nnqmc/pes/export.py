"""Exports of a scan dataset (finished rows only) for force-field trainers, in eV and Å.

* extxyz: one frame per geometry, ``Properties=species:S:1:pos:R:3[:forces:R:3]`` and
  ``energy=`` in the comment line, as ASE writes calculator results, so
  ``ase.io.read(path, index=":")`` gives ``atoms.get_potential_energy()`` (eV) and
  ``atoms.get_forces()`` (eV/Å); the comment line also states the units.
* npz: the sGDML dataset layout: ``type='d'``, ``name``, ``theory``, ``z`` (n_atoms,),
  ``R`` (n, n_atoms, 3) Å, ``E`` (n, 1) eV, ``F`` (n, n_atoms, 3) eV/Å (if forces were
  computed), ``r_unit='Ang'``, ``e_unit='eV'``, ``md5``; plus ``E_err`` and ``F_err``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_text_atomic
from ..molecule import ELEMENTS
from .dataset import Dataset

HARTREE_EV = 27.211386245988  # CODATA 2018
BOHR_ANGSTROM = 0.529177210903  # CODATA 2018
FORMATS = ("extxyz", "npz")


def finished(data: Dataset) -> np.ndarray:
    """Indices of the rows with status done."""
    return np.array([k for k in range(data.n) if data.status(k) == "done"], dtype=np.int64)


def _has_forces(data: Dataset) -> bool:
    return "forces" in data.columns


def _theory(data: Dataset) -> str:
    return f"VMC (nnqmc {data.attrs.get('version', '?')}, neural-network wavefunction)"


def extxyz_text(data: Dataset) -> str:
    """The finished rows as extended XYZ (eV, Å, eV/Å)."""
    symbols = [ELEMENTS[z - 1] for z in data.atomic_numbers]
    forces = _has_forces(data)
    props = "species:S:1:pos:R:3" + (":forces:R:3" if forces else "")
    to_ev_ang = HARTREE_EV / BOHR_ANGSTROM
    frames = []
    for k in finished(data):
        pos = data.positions[k] * BOHR_ANGSTROM
        energy = float(data.columns["energy"][k] * HARTREE_EV)
        error = float(data.columns["energy_err"][k] * HARTREE_EV)
        comment = (
            f'Properties={props} energy={energy!r} energy_err={error!r} index={int(k)} pbc="F F F" '
            'units="energy eV, forces eV/Ang, positions Ang"'
        )
        lines = [str(len(symbols)), comment]
        for a, s in enumerate(symbols):
            row = [f"{x:.12f}" for x in pos[a]]
            if forces:
                row += [f"{x:.12f}" for x in data.columns["forces"][k, a] * to_ev_ang]
            lines.append(" ".join([s, *row]))
        frames.append("\n".join(lines))
    return "\n".join(frames) + ("\n" if frames else "")


def sgdml_arrays(data: Dataset) -> dict[str, np.ndarray]:
    """The finished rows in the sGDML npz layout."""
    rows = finished(data)
    out = {
        "type": np.array("d"),
        "name": np.array(str(data.attrs.get("name", "nnqmc-scan"))),
        "theory": np.array(_theory(data)),
        "z": np.asarray(data.atomic_numbers, np.int64),
        "R": data.positions[rows] * BOHR_ANGSTROM,
        "E": (data.columns["energy"][rows] * HARTREE_EV)[:, None],
        "E_err": (data.columns["energy_err"][rows] * HARTREE_EV)[:, None],
        "r_unit": np.array("Ang"),
        "e_unit": np.array("eV"),
    }
    if _has_forces(data):
        scale = HARTREE_EV / BOHR_ANGSTROM
        out["F"] = data.columns["forces"][rows] * scale
        out["F_err"] = data.columns["forces_err"][rows] * scale
    out["md5"] = np.array(_md5(out))
    return out


def _md5(arrays: dict[str, np.ndarray]) -> str:
    """A fingerprint over z, R, E, F (the arrays sGDML fingerprints)."""
    h = hashlib.md5()
    for key in ("z", "R", "E", "F"):
        if key in arrays:
            h.update(hashlib.md5(np.ascontiguousarray(arrays[key]).ravel()).digest())
    return h.hexdigest()


def export(data: Dataset, fmt: str, path: str | Path) -> int:
    """Write ``path`` (atomically) in ``fmt``; returns the number of geometries written."""
    if fmt == "extxyz":
        write_text_atomic(path, extxyz_text(data))
    elif fmt == "npz":
        arrays = sgdml_arrays(data)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    else:
        raise ValueError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    return len(finished(data))
