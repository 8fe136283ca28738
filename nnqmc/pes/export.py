"""Exports of a scan dataset (finished rows only) for force-field trainers, in eV and Å,
each what one family of trainers reads unchanged; the keys of each format, the trainers'
commands and how the error bars enter are in docs/forcefields.md:

* ``extxyz`` (ASE, NequIP, MACE, GAP): energies, forces, MACE's ``REF_*`` keys and loss
  weights, GAP's sigmas and the lattice QUIP's reader needs (:func:`box_side`);
* ``npz`` (sGDML): its layout with the fingerprint :func:`sgdml_md5`;
* ``db`` (SchNetPack): an ASE SQLite database as ``schnetpack.data.ASEAtomsData`` reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunError
from ..io import atomic_path, write_text_atomic
from ..molecule import ELEMENTS
from .dataset import Dataset

HARTREE_EV = 27.211386245988  # CODATA 2018
BOHR_ANGSTROM = 0.529177210903  # CODATA 2018
FORMATS = ("extxyz", "npz", "db")
SGDML_MD5_KEYS = ("z", "R", "E", "F")
VACUUM = 20.0  # Å between a molecule and its periodic images in the extxyz Lattice


@dataclass(frozen=True)
class Labels:
    """The finished rows in eV and Å (forces in eV/Å; ``None`` without forces)."""

    rows: np.ndarray  # (n,) dataset row of each geometry
    numbers: np.ndarray  # (n_atoms,)
    positions: np.ndarray  # (n, n_atoms, 3) Å
    energy: np.ndarray  # (n,) eV
    energy_err: np.ndarray  # (n,) eV
    forces: np.ndarray | None  # (n, n_atoms, 3) eV/Å
    forces_err: np.ndarray | None  # (n, n_atoms, 3) eV/Å

    @property
    def symbols(self) -> list[str]:
        return [ELEMENTS[z - 1] for z in self.numbers]


def finished(data: Dataset) -> np.ndarray:
    """Indices of the rows with status done."""
    return np.array([k for k in range(data.n) if data.status(k) == "done"], dtype=np.int64)


def labels(data: Dataset) -> Labels:
    """The finished rows of ``data`` converted to eV and Å (CODATA 2018)."""
    rows = finished(data)
    force_scale = HARTREE_EV / BOHR_ANGSTROM
    has_forces = "forces" in data.columns
    return Labels(
        rows=rows,
        numbers=np.asarray(data.atomic_numbers, np.int64),
        positions=np.ascontiguousarray(data.positions[rows] * BOHR_ANGSTROM),
        energy=data.columns["energy"][rows] * HARTREE_EV,
        energy_err=data.columns["energy_err"][rows] * HARTREE_EV,
        forces=data.columns["forces"][rows] * force_scale if has_forces else None,
        forces_err=data.columns["forces_err"][rows] * force_scale if has_forces else None,
    )


def _theory(data: Dataset) -> str:
    """The level of theory of the labels (the ``theory`` attribute if the dataset has one)."""
    if data.attrs.get("theory"):
        return str(data.attrs["theory"])
    return f"VMC (nnqmc {data.attrs.get('version', '?')}, neural-network wavefunction)"


def inverse_variance_weights(sigma: np.ndarray) -> np.ndarray:
    """Per-configuration loss weights 1/σ², normalised to mean 1 over the dataset (so a
    trainer's global energy/force weights keep their meaning); all ones when some σ is
    missing, zero or negative."""
    sigma = np.asarray(sigma, np.float64)
    if sigma.size == 0 or not np.all(np.isfinite(sigma) & (sigma > 0)):
        return np.ones_like(sigma)
    weights = 1.0 / sigma**2
    return weights / weights.mean()


def config_force_sigma(forces_err: np.ndarray) -> np.ndarray:
    """One force error bar per configuration: the root mean square of its components'
    error bars (n, n_atoms, 3) -> (n,)."""
    return np.sqrt(np.mean(np.asarray(forces_err) ** 2, axis=(1, 2)))


def _usable(sigma: np.ndarray | None) -> bool:
    """Error bars that a trainer can take as noise levels (all finite and positive)."""
    return sigma is not None and bool(np.all(np.isfinite(sigma) & (sigma > 0)))


def _frame_info(lab: Labels) -> list[dict[str, Any]]:
    """The comment-line keys of each frame (besides Properties, pbc and units)."""
    e_weight = inverse_variance_weights(lab.energy_err)
    if lab.forces is not None:
        f_sigma = config_force_sigma(lab.forces_err)
        f_weight = inverse_variance_weights(f_sigma)
    frames = []
    for i, row in enumerate(lab.rows):
        keys: dict[str, Any] = {
            "energy": float(lab.energy[i]),
            "REF_energy": float(lab.energy[i]),
            "energy_err": float(lab.energy_err[i]),
        }
        if _usable(lab.energy_err):
            keys["energy_sigma"] = float(lab.energy_err[i])
        keys["config_energy_weight"] = float(e_weight[i])
        if lab.forces is not None:
            if _usable(lab.forces_err):
                keys["force_sigma"] = float(f_sigma[i])
            keys["config_forces_weight"] = float(f_weight[i])
        keys["index"] = int(row)
        frames.append(keys)
    return frames


def box_side(positions: np.ndarray) -> float:
    """The side (Å, whole) of a cubic cell ``VACUUM`` Å wider than every geometry along
    every axis: no periodic image within any cutoff, for readers that want a lattice even
    with ``pbc="F F F"`` (QUIP's, hence GAP's)."""
    if positions.size == 0:
        return VACUUM
    return float(np.ceil(np.ptp(positions, axis=1).max() + VACUUM))


def extxyz_text(data: Dataset) -> str:
    """The finished rows as extended XYZ (eV, Å, eV/Å; keys in docs/forcefields.md)."""
    lab = labels(data)
    columns = ["species:S:1", "pos:R:3"]
    if lab.forces is not None:
        columns += ["forces:R:3", "REF_forces:R:3"]
        if _usable(lab.forces_err):
            columns.append("force_component_sigma:R:3")
    props = ":".join(columns)
    side = box_side(lab.positions)
    lattice = f"{side} 0.0 0.0 0.0 {side} 0.0 0.0 0.0 {side}"
    frames = []
    for i, keys in enumerate(_frame_info(lab)):
        pairs = " ".join(f"{k}={v!r}" for k, v in keys.items())
        comment = (
            f'Lattice="{lattice}" Properties={props} {pairs} pbc="F F F" '
            'units="energy eV, forces eV/Ang, positions Ang"'
        )
        lines = [str(len(lab.numbers)), comment]
        for a, symbol in enumerate(lab.symbols):
            row = [f"{x:.12f}" for x in lab.positions[i, a]]
            if lab.forces is not None:
                force = [f"{x:.12f}" for x in lab.forces[i, a]]
                row += force + force
                if _usable(lab.forces_err):
                    row += [f"{x:.6e}" for x in lab.forces_err[i, a]]
            lines.append(" ".join([symbol, *row]))
        frames.append("\n".join(lines))
    return "\n".join(frames) + ("\n" if frames else "")


def sgdml_md5(arrays: dict[str, np.ndarray]) -> bytes:
    """sGDML's dataset fingerprint (``sgdml.utils.io.dataset_md5``): the MD5 of the
    concatenated MD5 digests of the raw bytes of ``z``, ``R``, ``E`` (if present) and ``F``
    (if present; sGDML needs it), each flattened in C order, as hexadecimal ASCII bytes."""
    outer = hashlib.md5()
    for key in SGDML_MD5_KEYS:
        if key in arrays:
            flat = np.ascontiguousarray(arrays[key]).ravel()
            outer.update(hashlib.md5(flat.tobytes()).digest())
    return outer.hexdigest().encode("ascii")


def sgdml_arrays(data: Dataset) -> dict[str, np.ndarray]:
    """The finished rows in the sGDML npz layout."""
    lab = labels(data)
    out = {
        "type": np.array("d"),
        "name": np.array(str(data.attrs.get("name", "nnqmc-scan"))),
        "theory": np.array(_theory(data)),
        "z": lab.numbers,
        "R": lab.positions,
        "E": lab.energy[:, None],
        "E_err": lab.energy_err[:, None],
        "r_unit": np.array("Ang"),
        "e_unit": np.array("eV"),
    }
    if lab.forces is not None:
        out["F"] = np.ascontiguousarray(lab.forces)
        out["F_err"] = np.ascontiguousarray(lab.forces_err)
    out["md5"] = np.array(sgdml_md5(out))  # dtype S32, as sGDML stores it
    return out


def schnetpack_metadata(lab: Labels, data: Dataset) -> dict[str, Any]:
    """The database metadata ``schnetpack.data.ASEAtomsData`` reads: distance unit, a unit
    for every data property, atom reference energies (none known)."""
    units = {"energy": "eV", "energy_err": "eV"}
    if lab.forces is not None:
        units |= {"forces": "eV/Ang", "forces_err": "eV/Ang"}
    return {
        "_property_unit_dict": units,
        "_distance_unit": "Ang",
        "atomrefs": {},
        "name": str(data.attrs.get("name", "nnqmc-scan")),
        "theory": _theory(data),
    }


def _import_ase() -> Any:
    try:
        import ase.db
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
    except ImportError:
        raise RunError("the db format needs ASE: pip install ase") from None
    return ase.db, Atoms, SinglePointCalculator


def write_ase_db(data: Dataset, path: str | Path) -> None:
    """Write the finished rows as an ASE SQLite database for SchNetPack (atomically)."""
    ase_db, Atoms, SinglePointCalculator = _import_ase()
    lab = labels(data)
    with atomic_path(path) as tmp:
        with ase_db.connect(str(tmp), type="db", append=False, use_lock_file=False) as conn:
            conn.metadata = schnetpack_metadata(lab, data)
            for i, row in enumerate(lab.rows):
                atoms = Atoms(numbers=lab.numbers, positions=lab.positions[i], pbc=False)
                props = {"energy": np.array([lab.energy[i]])}
                props["energy_err"] = np.array([lab.energy_err[i]])
                results: dict[str, Any] = {"energy": float(lab.energy[i])}
                if lab.forces is not None:
                    props["forces"] = lab.forces[i]
                    props["forces_err"] = lab.forces_err[i]
                    results["forces"] = lab.forces[i]
                atoms.calc = SinglePointCalculator(atoms, **results)
                conn.write(atoms, data=props, index=int(row))


def export(data: Dataset, fmt: str, path: str | Path) -> int:
    """Write ``path`` (atomically) in ``fmt``; returns the number of geometries written."""
    if fmt == "extxyz":
        write_text_atomic(path, extxyz_text(data))
    elif fmt == "npz":
        arrays = sgdml_arrays(data)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    elif fmt == "db":
        write_ase_db(data, path)
    else:
        raise ValueError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    return len(finished(data))
