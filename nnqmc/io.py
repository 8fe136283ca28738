"""Run directory layout, HDF5 logs and checkpoints, atomic writes, the run-directory lock.

Checkpoints are written atomically (temporary file, fsync, rename) with a SHA-256 of their
contents inside; the previous one is kept beside the newest, and a reader that finds the
newest unreadable or corrupt falls back to the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import h5py
import jax
import numpy as np

TRAIN_LOG = "train.h5"
EVAL_LOG = "eval.h5"
CHECKPOINT = "checkpoint.h5"
PREVIOUS_CHECKPOINT = "checkpoint.prev.h5"
EVAL_CHECKPOINT = "eval-checkpoint.h5"
PREVIOUS_EVAL_CHECKPOINT = "eval-checkpoint.prev.h5"
DMC_LOG = "dmc.h5"
DMC_CHECKPOINT = "dmc-checkpoint.h5"
PREVIOUS_DMC_CHECKPOINT = "dmc-checkpoint.prev.h5"
RESULT = "result.json"
CONFIG_COPY = "config.toml"
INPUT_COPY = "input.toml"
PLOT = "energy.png"
LOCK = "nnqmc.lock"
REFERENCE = "reference.h5"
DIGEST = "sha256"

# Files a run writes: what --force removes before starting over.
RUN_FILES = (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    EVAL_CHECKPOINT,
    PREVIOUS_EVAL_CHECKPOINT,
    DMC_CHECKPOINT,
    PREVIOUS_DMC_CHECKPOINT,
    TRAIN_LOG,
    EVAL_LOG,
    DMC_LOG,
    RESULT,
    PLOT,
    INPUT_COPY,
    CONFIG_COPY,
    REFERENCE,
)

TRAIN_COLUMNS = (
    "step",
    "energy",
    "variance",
    "acceptance",
    "width",
    "grad_norm",
    "finite",
    "lr_scale",
    "wall_time",
)

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be used (truncated, corrupt, non-finite)."""


class LockedError(RuntimeError):
    """The run directory is in use by another live process."""


# --------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link where possible), atomically."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_path(path: str | Path, previous: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename over ``path``.

    With ``previous``, the file being replaced is kept there first, so that at every moment
    ``path`` exists (old or new) and ``previous`` holds the one before.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _link_over(path, Path(previous))
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_h5_atomic(
    path: str | Path, fill: Callable[[h5py.File], None], previous: str | Path | None = None
) -> None:
    with atomic_path(path, previous) as tmp:
        with h5py.File(tmp, "w") as f:
            fill(f)


# --------------------------------------------------------------------------- checksums
def _hash_attrs(h: Any, obj: h5py.HLObject) -> None:
    for name in sorted(obj.attrs):
        if name != DIGEST:
            value = np.asarray(obj.attrs[name])
            h.update(f"@{name}:{value.dtype.str}:{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())


def digest(f: h5py.File) -> str:
    """SHA-256 of every dataset and attribute of an HDF5 file (its own digest excluded)."""
    h = hashlib.sha256()
    _hash_attrs(h, f)

    def visit(name: str, obj: h5py.HLObject) -> None:
        h.update(f"/{name}".encode())
        if isinstance(obj, h5py.Dataset):
            value = np.asarray(obj[()])
            h.update(f":{value.dtype.str}:{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        _hash_attrs(h, obj)

    f.visititems(visit)
    return h.hexdigest()


def write_checked(
    path: str | Path, fill: Callable[[h5py.File], None], previous: str | Path | None = None
) -> None:
    """:func:`write_h5_atomic` with the SHA-256 of the contents stored in the file."""

    def fill_and_sign(f: h5py.File) -> None:
        fill(f)
        f.flush()
        f.attrs[DIGEST] = digest(f)

    write_h5_atomic(path, fill_and_sign, previous)


def read_checked(path: str | Path, read: Callable[[h5py.File], T]) -> T:
    """``read(file)`` after verifying the file's SHA-256; CheckpointError if anything is off."""
    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(DIGEST)
            if stored is not None and str(stored) != digest(f):
                raise CheckpointError(f"{path}: checksum mismatch (corrupt file)")
            return read(f)
    except CheckpointError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError, ValueError, RuntimeError, ...
        detail = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"{path}: unreadable ({detail})") from None


def read_newest(
    path: Path, previous: Path, read: Callable[[Path], T]
) -> tuple[T | None, list[str]]:
    """The newest readable of ``path`` and ``previous``, and warnings about the ones skipped.

    A corrupt ``path`` is moved aside to ``<path>.corrupt`` so the next checkpoint does not
    keep it as the previous one. None if neither exists; CheckpointError if none is usable.
    """
    warnings: list[str] = []
    errors: list[str] = []
    for candidate in (path, previous):
        if not candidate.exists():
            continue
        try:
            value = read(candidate)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            if path.exists():
                path.replace(path.with_name(path.name + ".corrupt"))
            warnings.append(f"{errors[0]}; moved aside, using {candidate.name} instead")
        return value, warnings
    if errors:
        raise CheckpointError("; ".join(errors))
    return None, warnings


# --------------------------------------------------------------------------- checkpoints
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


def all_finite(*trees: Any) -> bool:
    """Whether every inexact array of the trees is finite."""
    for leaf in jax.tree_util.tree_leaves(trees):
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            return False
    return True


CHECKPOINT_FORMAT = 2
"""A checkpoint holds a phase's state and its log's row count (format 1 also held the log)."""


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    rows: int | None = None,
    seconds: float = 0.0,
    tag: dict[str, Any] | None = None,
    previous: str | Path | None = None,
    **state: Any,
) -> None:
    """A phase's ``state`` after ``step`` steps: numbers as attributes, arrays as datasets,
    other pytrees as groups of their leaves; with the ``rows`` of its log (default
    ``step``), the ``seconds`` spent so far and a ``tag`` saying what it belongs to.

    Refuses (ValueError) a state that is not finite, so a NaN never reaches a checkpoint.
    ``previous`` keeps the replaced checkpoint.
    """
    if not all_finite(state):
        raise ValueError(f"{path}: refusing to checkpoint a non-finite state")

    def fill(f: h5py.File) -> None:
        f.attrs.update(format=CHECKPOINT_FORMAT, step=step, seconds=float(seconds))
        f.attrs["rows"] = step if rows is None else rows
        for name, value in (tag or {}).items():
            f.attrs[f"tag_{name}"] = value
        for name, value in state.items():
            if np.isscalar(value):
                f.attrs[name] = value
            elif isinstance(value, (np.ndarray, jax.Array)):
                f.create_dataset(name, data=np.asarray(value))
            else:
                _write_tree(f.create_group(name), value)

    write_checked(path, fill, previous)


def load_checkpoint(path: str | Path, like: dict[str, Any], optional: tuple = ()) -> dict:
    """A verified checkpoint: its format, step, rows, seconds, tag and ``state``, the parts
    named in ``like`` (pytrees read with their part of ``like`` as the template; those in
    ``optional`` where present); only the format for one of another format.
    CheckpointError if it is truncated, corrupt or not finite."""

    def read(f: h5py.File) -> dict[str, Any]:
        found = int(f.attrs.get("format", 1))
        if found != CHECKPOINT_FORMAT:
            return {"format": found}
        state = {}
        for name, template in like.items():
            if name in f.attrs:
                state[name] = attr_value(f.attrs[name])
            elif name in optional and name not in f:
                continue
            elif isinstance(f[name], h5py.Group):
                state[name] = _read_tree(f[name], template)
            else:
                state[name] = np.asarray(f[name])
        return {
            "format": found,
            "step": int(f.attrs["step"]),
            "rows": int(f.attrs["rows"]),
            "seconds": float(f.attrs["seconds"]),
            "tag": {k[4:]: attr_value(f.attrs[k]) for k in f.attrs if k.startswith("tag_")},
            "state": state,
        }

    saved = read_checked(path, read)
    if not all_finite(saved.get("state")):
        raise CheckpointError(f"{path}: holds non-finite values")
    return saved


def attr_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (h5py gives strings as str or bytes, scalars
    as numpy scalars); arrays stay arrays."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def save_reference(path: str | Path, arrays: dict[str, np.ndarray], **attrs: Any) -> None:
    """The mean-field reference a run trains on (``nnqmc.scf.reference_arrays``), written
    once when its training starts; ``attrs``: where it came from (e.g. ``aligned``)."""

    def fill(f: h5py.File) -> None:
        for name, value in arrays.items():
            f.create_dataset(name, data=np.asarray(value))
        f.attrs.update(attrs)

    write_checked(path, fill)


def load_reference(path: str | Path) -> dict[str, np.ndarray]:
    """A verified reference file; CheckpointError if it is truncated or corrupt."""
    return read_checked(path, lambda f: {k: np.asarray(v) for k, v in f.items()})


def reference_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes :func:`save_reference` was given; CheckpointError if unreadable."""
    return read_checked(path, lambda f: {k: attr_value(v) for k, v in f.attrs.items()})


# --------------------------------------------------------------------------- tables
def read_table(path: str | Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v) for k, v in f.items()}


def read_rows(path: str | Path, rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of every column of a log; CheckpointError if it holds fewer
    or cannot be read."""
    if rows == 0:
        return {}
    try:
        with h5py.File(path, "r") as f:
            columns = {k: np.asarray(v[:rows]) for k, v in f.items()}
    except Exception as err:  # h5py raises OSError, KeyError, ValueError, RuntimeError, ...
        raise CheckpointError(f"{path}: unreadable ({' '.join(str(err).split())})") from None
    if not columns or any(len(v) < rows for v in columns.values()):
        raise CheckpointError(f"{path}: holds fewer rows than its checkpoint ({rows})")
    return columns


def set_attrs(path: str | Path, attrs: dict[str, Any]) -> None:
    """Set attributes of an HDF5 file, leaving its data as they are."""
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)


class AppendLog:
    """An HDF5 table grown a row at a time and flushed after each, so a kill keeps the rows."""

    def __init__(self, path: str | Path, rows: int = 0) -> None:
        """A new, empty table at ``path``; with ``rows``, the table there cut to its first
        ``rows`` rows (:func:`read_rows` says whether it holds them)."""
        if rows == 0:
            write_h5_atomic(path, lambda f: None)
        self.file = h5py.File(path, "a")
        for data in self.file.values():
            data.resize(rows, axis=0)
        self.file.flush()

    def append(self, row: dict[str, Any]) -> None:
        for name, value in row.items():
            value = np.asarray(value)
            if name not in self.file:
                _growable(self.file, name, value[None][:0])
            data = self.file[name]
            data.resize(data.shape[0] + 1, axis=0)
            data[-1] = value
        self.file.flush()

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self.file.attrs.update(attrs)
        self.file.flush()

    def sync(self) -> None:
        """Flush the rows to the disk itself (fsync), not only to the operating system."""
        self.file.flush()
        os.fsync(self.file.id.get_vfd_handle())

    def close(self) -> None:
        self.file.close()


def _growable(f: h5py.File, name: str, rows: np.ndarray) -> None:
    f.create_dataset(
        name, data=rows, maxshape=(None, *rows.shape[1:]), chunks=(64, *rows.shape[1:])
    )


# --------------------------------------------------------------------------- lock
def _lock_owner(path: Path) -> tuple[int, str] | None:
    """(pid, host) from a lock file; None if it is missing or garbled."""
    try:
        pid, host = path.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_lock_owner(run_dir: Path) -> tuple[int, str] | None:
    """The (pid, host) of a live process holding ``run_dir``'s lock, else None."""
    owner = _lock_owner(run_dir / LOCK)
    return owner if owner is not None and _alive(*owner) else None


def locked_message(run_dir: Path, owner: tuple[int, str], name: str = LOCK) -> str:
    pid, host = owner
    return (
        f"{run_dir} is in use by process {pid} on {host}; wait for it to finish, or delete "
        f"{run_dir / name} if that process is gone"
    )


def acquire_lock(run_dir: Path, name: str = LOCK) -> list[str]:
    """Create ``run_dir``'s lock file ``name`` with this process's PID; take over a dead
    owner's lock.

    Returns warnings; raises LockedError if a live process holds it, OSError if unwritable.
    """
    path = run_dir / name
    warnings = []
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and _alive(*owner):
                raise LockedError(locked_message(run_dir, owner, name)) from None
            who = f"process {owner[0]}" if owner else "an unknown process"
            warnings.append(f"taking over the stale lock {path} of {who}, no longer running")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
            f.flush()
            os.fsync(f.fileno())
        return warnings
    raise LockedError(f"{run_dir}: could not take the lock {path}")


def release_lock(run_dir: Path, name: str = LOCK) -> None:
    """Remove ``run_dir``'s lock file ``name`` if this process holds it."""
    path = run_dir / name
    if _lock_owner(path) == (os.getpid(), socket.gethostname()):
        path.unlink(missing_ok=True)
