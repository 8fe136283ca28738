"""Run directory layout, HDF5 logs and checkpoints, atomic writes (temp, fsync, rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

TRAIN_LOG = "train.h5"
EVAL_LOG = "eval.h5"
CHECKPOINT = "checkpoint.h5"
RESULT = "result.json"
CONFIG_COPY = "config.toml"

TRAIN_COLUMNS = (
    "step",
    "energy",
    "variance",
    "acceptance",
    "width",
    "grad_norm",
    "finite",
    "wall_time",
)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_h5_atomic(path: str | Path, fill: Callable[[h5py.File], None]) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            fill(f)


def _write_tree(group: h5py.Group, tree: Any) -> None:
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        group.create_dataset(str(i), data=np.asarray(leaf))
    group.attrs["n_leaves"] = len(jax.tree_util.tree_leaves(tree))


def _read_tree(group: h5py.Group, template: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    n = int(group.attrs["n_leaves"])
    if n != len(leaves):
        raise ValueError(f"checkpoint has {n} arrays where this run expects {len(leaves)}")
    read = []
    for i, like in enumerate(leaves):
        value = np.asarray(group[str(i)])
        if value.shape != np.shape(like):
            raise ValueError(
                f"checkpoint array {group.name}/{i} has shape {value.shape}, "
                f"this run expects {np.shape(like)}"
            )
        read.append(value.astype(np.asarray(like).dtype))
    return jax.tree_util.tree_unflatten(treedef, read)


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    params: Any,
    opt_state: Any,
    walkers: np.ndarray,
    width: float,
    key: np.ndarray,
    history: dict[str, np.ndarray],
) -> None:
    """All walkers of all devices, parameters, optimizer state, step, width, RNG key, log."""

    def fill(f: h5py.File) -> None:
        f.attrs["step"] = step
        f.attrs["width"] = float(width)
        f.create_dataset("key", data=np.asarray(key))
        f.create_dataset("walkers", data=np.asarray(walkers))
        _write_tree(f.create_group("params"), params)
        _write_tree(f.create_group("opt_state"), opt_state)
        hist = f.create_group("history")
        for name, column in history.items():
            hist.create_dataset(name, data=np.asarray(column))

    write_h5_atomic(path, fill)


def load_checkpoint(path: str | Path, params_like: Any, opt_state_like: Any) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {
            "step": int(f.attrs["step"]),
            "width": float(f.attrs["width"]),
            "key": np.asarray(f["key"]),
            "walkers": np.asarray(f["walkers"]),
            "params": _read_tree(f["params"], params_like),
            "opt_state": _read_tree(f["opt_state"], opt_state_like),
            "history": {k: np.asarray(v) for k, v in f["history"].items()},
        }


def write_table(
    path: str | Path, columns: dict[str, np.ndarray], attrs: dict[str, Any] | None = None
) -> None:
    """An HDF5 file with one dataset per column (a row per step), written atomically."""

    def fill(f: h5py.File) -> None:
        for name, column in columns.items():
            f.create_dataset(name, data=np.asarray(column))
        for name, value in (attrs or {}).items():
            f.attrs[name] = value

    write_h5_atomic(path, fill)


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v) for k, v in f.items()}
