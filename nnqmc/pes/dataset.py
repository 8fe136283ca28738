"""The HDF5 dataset of a scan (``scan.h5``): one row per geometry, rewritten atomically
after each one; atomic units, missing values NaN. Its columns and attributes are listed in
docs/pes.md ("The dataset"); optional columns are absent when not asked for.
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
FLOAT_COLUMNS = ("energy", "energy_err", "variance", "hf_energy", "wall_time")
TEXT_COLUMNS = ("status", "message", "sampler")


class DatasetError(ValueError):
    """A dataset file that does not belong to this scan or cannot be read."""


@dataclass
class Dataset:
    """All columns of a scan dataset in memory (docs/pes.md, "The dataset")."""

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
