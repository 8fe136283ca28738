"""The HDF5 dataset of a scan: one row per geometry, rewritten atomically after each one.

Schema (atomic units: bohr, hartree, hartree/bohr; missing values are NaN):

=================  ===========================  ============================================
dataset            shape, type                  meaning
=================  ===========================  ============================================
atomic_numbers     (n_atoms,) int64             Z of each atom
positions          (n, n_atoms, 3) float64      nuclear positions, bohr
labels             (n, n_labels) float64        scan coordinates (bond length bohr, angle
                                                degrees, mode/amplitude, frame number)
energy             (n,) float64                 VMC energy, hartree
energy_err         (n,) float64                 its standard error (blocking analysis)
variance           (n,) float64                 variance of the local energy, hartree²
forces             (n, n_atoms, 3) float64      -dE/dR, hartree/bohr (``scan.forces``)
forces_err         (n, n_atoms, 3) float64      standard errors of ``forces``
hf_energy          (n,) float64                 Hartree–Fock energy (PySCF, same basis)
ccsd_t_energy      (n,) float64                 CCSD(T) energy (``scan.ccsd_t``)
reference_energy   (n,) float64                 exact energy given in ``scan.reference``
selection          (n,) int64                   adaptive and thermal scans: the order in which rows
                                                were chosen (0, 1, ...; -1 never chosen)
selection_std      (n,) float64                 adaptive and thermal scans: the fitted force
                                                field's predictive std of the energy there
                                                when it was chosen, hartree (NaN: initial
                                                geometries)
round              (n,) int64                   thermal scans: the round that chose the row
                                                (0: the initial geometries)
sampler            (n,) str                     thermal scans: what proposed it, ``initial``,
                                                ``md`` or ``flow``
temperature        (n,) float64                 thermal scans: the sampler's temperature, K
                                                (NaN: initial)
selection_weight   (n,) float64                 thermal scans: its normalised importance
                                                weight among the round's candidates times
                                                their number (1 for MD frames; NaN: initial)
steps              (n,) int64                   training steps of this geometry
warm_from          (n,) int64                   row whose parameters started it (-1: cold)
wall_time          (n,) float64                 seconds of training + evaluation
status             (n,) str                     pending | running | done | failed
message            (n,) str                     why a geometry failed ("" otherwise)
=================  ===========================  ============================================

Attributes: ``name``, ``input_toml`` (the input file's text), ``version`` (nnqmc),
``schema`` (1), ``units``, ``kind`` (scan kind), ``train`` (``scan.train``, "independent"
or "shared": a rerun in the same directory must have the same), ``shard`` ("i/n", or "" for a
whole scan), ``has_forces``, ``has_ccsd_t``. Optional columns (forces, CCSD(T), reference,
selection, thermal) are absent when not asked for.
A shard file holds every row of the scan; the rows of other shards stay ``pending``. A thermal
scan's file grows: each round appends the rows it chose (:func:`append_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..io import attr_value, write_h5_atomic

SCHEMA_VERSION = 1
UNITS = "positions bohr; energies hartree; forces hartree/bohr; angles degrees"
STATUSES = ("pending", "running", "done", "failed")
FLOAT_COLUMNS = ("energy", "energy_err", "variance", "hf_energy", "wall_time")
INT_COLUMNS = ("steps", "warm_from")
TEXT_COLUMNS = ("status", "message", "sampler")


class DatasetError(ValueError):
    """A dataset file that does not belong to this scan or cannot be read."""


@dataclass
class Dataset:
    """All columns of a scan dataset in memory (see the module docstring)."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.positions)

    def status(self, k: int) -> str:
        return str(self.columns["status"][k])

    def set_row(self, k: int, **values: Any) -> None:
        for name, value in values.items():
            self.columns[name][k] = value


def new_dataset(
    atomic_numbers: np.ndarray,
    positions: np.ndarray,
    labels: np.ndarray,
    attrs: dict[str, Any],
    forces: bool,
    ccsd_t: bool,
    reference: np.ndarray | None = None,
    adaptive: bool = False,
    thermal: bool = False,
) -> Dataset:
    """Every row pending, every value missing (``reference``: known energies, one per row;
    ``adaptive``: with the selection columns of an adaptive scan; ``thermal``: with those
    and the round, sampler, temperature and weight columns of a thermal scan)."""
    n, n_atoms = positions.shape[:2]
    columns: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in FLOAT_COLUMNS}
    columns["steps"] = np.zeros(n, np.int64)
    columns["warm_from"] = np.full(n, -1, np.int64)
    columns["status"] = np.array(["pending"] * n, dtype=object)
    columns["message"] = np.array([""] * n, dtype=object)
    if forces:
        columns["forces"] = np.full((n, n_atoms, 3), np.nan)
        columns["forces_err"] = np.full((n, n_atoms, 3), np.nan)
    if ccsd_t:
        columns["ccsd_t_energy"] = np.full(n, np.nan)
    if adaptive or thermal:
        columns["selection"] = np.full(n, -1, np.int64)
        columns["selection_std"] = np.full(n, np.nan)
    if thermal:
        columns["round"] = np.full(n, -1, np.int64)
        columns["sampler"] = np.array([""] * n, dtype=object)
        columns["temperature"] = np.full(n, np.nan)
        columns["selection_weight"] = np.full(n, np.nan)
    if reference is not None:
        columns["reference_energy"] = np.asarray(reference, np.float64).reshape(n)
    attrs = {
        **attrs,
        "schema": SCHEMA_VERSION,
        "units": UNITS,
        "has_forces": forces,
        "has_ccsd_t": ccsd_t,
    }
    return Dataset(
        np.asarray(atomic_numbers, np.int64),
        np.asarray(positions, np.float64),
        np.asarray(labels, np.float64).reshape(n, -1),
        columns,
        attrs,
    )


def append_rows(data: Dataset, positions: np.ndarray, labels: np.ndarray) -> list[int]:
    """Add pending rows of these geometries (m, n_atoms, 3) and labels (m, n_labels) to
    ``data`` in place, every value missing as in :func:`new_dataset`; their indices."""
    extra = new_dataset(
        data.atomic_numbers,
        positions,
        labels,
        {},
        forces="forces" in data.columns,
        ccsd_t="ccsd_t_energy" in data.columns,
        adaptive="selection" in data.columns,
        thermal="sampler" in data.columns,
    )
    if "reference_energy" in data.columns:
        extra.columns["reference_energy"] = np.full(extra.n, np.nan)
    start = data.n
    data.positions = np.concatenate([data.positions, extra.positions])
    data.labels = np.concatenate([data.labels, extra.labels])
    for name, column in data.columns.items():
        data.columns[name] = np.concatenate([column, extra.columns[name]])
    return list(range(start, data.n))


def write_dataset(path: str | Path, data: Dataset) -> None:
    """Write the whole file atomically (temporary file, fsync, rename)."""

    def fill(f: h5py.File) -> None:
        f.create_dataset("atomic_numbers", data=data.atomic_numbers)
        f.create_dataset("positions", data=data.positions)
        f.create_dataset("labels", data=data.labels)
        for name, column in data.columns.items():
            if name in TEXT_COLUMNS:
                f.create_dataset(
                    name, data=[str(v) for v in column], dtype=h5py.string_dtype("utf-8")
                )
            else:
                f.create_dataset(name, data=column)
        for name, value in data.attrs.items():
            f.attrs[name] = value

    write_h5_atomic(path, fill)


def read_dataset(path: str | Path) -> Dataset:
    """A dataset file back in memory; DatasetError if it is not one."""
    try:
        with h5py.File(path, "r") as f:
            if "positions" not in f or "status" not in f:
                raise DatasetError(f"{path} is not an nnqmc scan dataset")
            columns = {}
            for name in f:
                if name in ("atomic_numbers", "positions", "labels"):
                    continue
                if name in TEXT_COLUMNS:
                    columns[name] = np.array(f[name].asstr()[...], dtype=object)
                else:
                    columns[name] = np.asarray(f[name])
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            return Dataset(
                np.asarray(f["atomic_numbers"]),
                np.asarray(f["positions"]),
                np.asarray(f["labels"]),
                columns,
                attrs,
            )
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None


def same_scan(a: Dataset, b: Dataset, prefix: bool = False) -> bool:
    """The same atoms and geometries (to 1e-9 bohr); with ``prefix``, ``b``'s geometries
    are the first of ``a``'s (a thermal scan's file after rounds appended rows)."""
    head = a.positions[: b.n] if prefix else a.positions
    return (
        np.array_equal(a.atomic_numbers, b.atomic_numbers)
        and head.shape == b.positions.shape
        and bool(np.allclose(head, b.positions, rtol=0, atol=1e-9))
    )


_RANK = {"done": 3, "failed": 2, "running": 1, "pending": 0}


def merge(shards: list[Dataset]) -> Dataset:
    """One dataset from the shard datasets of one scan: each row from the shard where it got
    furthest (done > failed > running > pending). DatasetError if they differ in geometry."""
    if not shards:
        raise DatasetError("nothing to merge")
    first = shards[0]
    for other in shards[1:]:
        if not same_scan(first, other) or set(other.columns) != set(first.columns):
            raise DatasetError("the shards belong to different scans")
    columns = {name: np.array(column, copy=True) for name, column in first.columns.items()}
    for k in range(first.n):
        best = max(shards, key=lambda d: _RANK.get(d.status(k), -1))
        for name in columns:
            columns[name][k] = best.columns[name][k]
    attrs = {**first.attrs, "shard": ""}
    return Dataset(first.atomic_numbers, first.positions, first.labels, columns, attrs)
