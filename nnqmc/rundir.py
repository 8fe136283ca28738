"""The run directory and what every phase needs around its steps.

A phase (training, evaluation, later diffusion Monte Carlo) calls these instead of copying
them:

* the directory: :func:`run_directory`, :func:`check_run_directory`, :func:`lock_directory`,
  :func:`open_run_directory` (lock, ``--force``, input copy) and :func:`release`;
* checkpoints: :func:`read_rotated` (the newest valid of ``X.h5``/``X.prev.h5``; the
  writers in :mod:`nnqmc.io` rotate with ``previous=``), :func:`checkpoint_due`,
  :func:`cannot_write` for one-line write errors;
* signals: :func:`stop_on_signals` gives the ``stop`` check; :func:`stop_if_asked` between
  steps checkpoints and raises :class:`~nnqmc.errors.Interrupted`;
* phases that sample with frozen parameters (evaluation, DMC): their walkers and per-step
  rows, :func:`save_walker_checkpoint` / :func:`load_walker_checkpoint`, and the log they
  append to, :func:`open_log` / :func:`append_row`;
* non-finite steps: :class:`NanGuard`;
* several processes: :func:`on_main` (files are written by process 0 only), :func:`warn`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import io
from .config import Config, to_toml
from .errors import Interrupted, RunError
from .parallel import broadcast_from_main, gather_walkers, is_main_process, process_count

__all__ = [
    "NanGuard",
    "append_row",
    "load_walker_checkpoint",
    "open_log",
    "save_walker_checkpoint",
    "Progress",
    "StopCheck",
    "cannot_write",
    "check_run_directory",
    "checkpoint_due",
    "has_checkpoint",
    "lock_directory",
    "never_stop",
    "on_main",
    "open_run_directory",
    "read_rotated",
    "release",
    "run_directory",
    "signal_name",
    "stop_if_asked",
    "stop_on_signals",
    "warn",
]

T = TypeVar("T")

# (phase, steps done, steps in all, that step's numbers) after every step of every phase.
Progress = Callable[[str, int, int, dict[str, float]], None]
# Called between steps: 0 to go on, or the number of the signal that asks the run to stop.
StopCheck = Callable[[], int]


# --------------------------------------------------------------------------- processes
def warn(message: str) -> None:
    """A one-line warning on stderr, from process 0 only."""
    if is_main_process():
        print(f"nnqmc: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on process 0 only; a RunError there is raised on every process (a collective
    with several processes). Returns fn's value on process 0, None elsewhere."""
    value, error = None, None
    if is_main_process():
        try:
            value = fn()
        except RunError as err:
            error = err
    failed = error is not None
    if process_count() > 1:
        failed = bool(int(broadcast_from_main(np.array(failed, dtype=np.int32))))
    if failed:
        raise error or RunError("process 0 stopped the run (see its output)")
    return value


def cannot_write(path: Path, err: OSError) -> str:
    """``cannot write PATH: reason``, the start of every write error's message."""
    return f"cannot write {err.filename or path}: {err.strerror or err}"


# --------------------------------------------------------------------------- signals
def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, ... (``signal N`` for an unknown number)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _any_process(signum: int) -> int:
    """The first nonzero signal number over all processes (a collective), else 0."""
    if process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.array([signum], np.int32)))
    nonzero = every[every > 0]
    return int(nonzero[0]) if nonzero.size else 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopCheck]:
    """While inside, SIGINT and SIGTERM only ask the run to stop at the next step boundary.

    Yields the check to call between steps; a second signal acts as usual (the handlers are
    restored after the first). Outside the main thread nothing is installed.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: _any_process(0)
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signum, previous[signum] or signal.SIG_DFL)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield lambda: _any_process(received[0] if received else 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h or signal.SIG_DFL)


def never_stop() -> int:
    """The stop check of a phase called without one."""
    return 0


def stop_if_asked(
    stop: StopCheck, save: Callable[[int], None], step: int, what: str, where: Path | None
) -> None:
    """Between steps: if a signal asked to stop, ``save(step)`` and raise Interrupted
    ("stopped by SIGTERM after ``what``; checkpoint: ``where``")."""
    signum = stop()
    if signum:
        save(step)
        suffix = f"; checkpoint: {where}" if where else ""
        raise Interrupted(signum, f"stopped by {signal_name(signum)} after {what}{suffix}")


# --------------------------------------------------------------------------- checkpoints
def checkpoint_due(done: int, every: int, total: int) -> bool:
    """Whether a phase checkpoints after ``done`` of ``total`` steps (every ``every`` and at
    the end)."""
    return done % every == 0 or done == total


def read_rotated(current: Path, previous: Path, load: Callable[[Path], T]) -> tuple[T | None, str]:
    """Process 0: the newest valid of a rotated pair of checkpoints, with a warning for a
    damaged newer one. ``(None, "")`` if there is none; ``(None, why)`` if none is usable."""
    try:
        saved, warnings = io.read_newest(current, previous, load)
    except (OSError, io.CheckpointError) as err:
        return None, str(err)
    for message in warnings:
        warn(message)
    return saved, ""


def save_walker_checkpoint(
    current: Path,
    previous: Path,
    *,
    step: int,
    tag: dict[str, Any],
    walkers: Any,
    records: dict[str, Any],
    phase: str,
    seconds: float = 0.0,
) -> None:
    """On every process: gather a sampling phase's device-split ``walkers`` (a collective),
    then process 0 writes them with the rows after ``step`` steps and the ``seconds`` spent
    so far (rotated to ``previous``); a write error is a RunError "... at ``phase`` step N"."""
    all_walkers = gather_walkers(walkers)
    if not is_main_process():
        return
    try:
        io.save_eval_checkpoint(
            current,
            step=step,
            tag=tag,
            walkers=all_walkers,
            records={n: np.asarray(v) for n, v in records.items()},
            previous=previous,
            seconds=seconds,
        )
    except OSError as err:
        raise RunError(f"{cannot_write(current, err)} at {phase} step {step}") from None


def load_walker_checkpoint(
    current: Path,
    previous: Path,
    accept: Callable[[dict[str, Any]], bool],
    empty_records: Callable[[int], dict[str, np.ndarray]],
    walker_shape: tuple[int, ...],
    restart: str,
) -> dict[str, Any] | None:
    """A sampling phase's checkpoint on every process: process 0 reads the newest valid one
    and keeps it if ``accept(saved)`` (its tag, shapes and steps belong to this phase), then
    broadcasts step, walkers and records (``empty_records(step)`` gives the other processes
    their shapes). None if there is none, or none accepted; ``restart`` ends the warning
    about a damaged one ("evaluating from the first step")."""
    saved = None
    if is_main_process():
        saved, error = read_rotated(current, previous, io.load_eval_checkpoint)
        if error:
            warn(f"{error}; {restart}")
        if saved is not None and not accept(saved):
            saved = None
    step = int(broadcast_from_main(np.array(saved["step"] if saved else -1, np.int64)))
    if step < 0:
        return None
    if saved is None:
        saved = {"walkers": np.zeros(walker_shape), "records": empty_records(step), "seconds": 0}
    payload = {
        "walkers": np.asarray(saved["walkers"], np.float64),
        "records": saved["records"],
        "seconds": np.asarray(saved["seconds"], np.float64),
    }
    payload = broadcast_from_main(payload)
    payload["step"] = step
    payload["seconds"] = float(payload["seconds"])
    return payload


def open_log(path: Path, records: dict[str, list]) -> io.AppendLog:
    """Process 0: a phase's per-step log, holding ``records`` (the rows so far) to start."""
    try:
        return io.AppendLog(path, {n: np.asarray(v) for n, v in records.items()})
    except OSError as err:
        raise RunError(cannot_write(path, err)) from None


def append_row(log: io.AppendLog, path: Path, row: dict[str, Any]) -> io.AppendLog | None:
    """Append and flush one row to the log at ``path``; on a write error warn, close, and
    return None (the phase goes on; its checkpoints and final table hold every row)."""
    try:
        log.append(row)
        return log
    except OSError as err:
        warn(f"{cannot_write(path, err)}; no longer appending")
        log.close()
        return None


@dataclass
class NanGuard:
    """Rejected (non-finite) steps: each halves :attr:`scale` (the learning rate's, or
    whatever the phase scales); ``limit`` of them in a row stop the phase.

    ``in_row`` and ``scale`` belong in the phase's checkpoint so that a resumed run counts on.
    """

    limit: int
    limit_key: str  # the setting that holds ``limit``, for the message
    scale: float = 1.0
    in_row: int = 0

    def check(self, finite: bool, done: int, rejected: str, scaled: str) -> bool:
        """Record step ``done``; True when the phase must stop (checkpoint, then raise
        :meth:`error`). A bad step warns "step N: ``rejected``; step rejected, ``scaled``
        scaled to S"."""
        if finite:
            self.in_row = 0
            return False
        self.in_row += 1
        self.scale *= 0.5
        warn(f"step {done}: {rejected}; step rejected, {scaled} scaled to {self.scale:g}")
        return self.in_row >= self.limit

    def error(self, phase: str, done: int, where: str) -> RunError:
        """The RunError that ends the phase; ``where``: where the last good state is."""
        return RunError(
            f"{phase} stopped at step {done}: {self.in_row} non-finite steps in a row "
            f"({self.limit_key} = {self.limit}); {where}"
        )


# --------------------------------------------------------------------------- the directory
def run_directory(config: Config, out_dir: str | Path | None) -> Path:
    """``out_dir``, or ``runs/<name>`` by default."""
    return Path(out_dir) if out_dir is not None else Path("runs") / config.name


def has_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a training checkpoint (or its previous copy)."""
    return any((path / n).exists() for n in (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT))


def check_run_directory(path: Path, resume: bool, force: bool = False) -> None:
    """Refuse a directory in use by a live process, and a fresh start over existing results
    (unless ``force``). ``resume`` with no checkpoint yet starts from the beginning."""
    owner = io.live_lock_owner(path)
    if owner is not None and owner != (os.getpid(), socket.gethostname()):
        raise RunError(io.locked_message(path, owner))
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a directory")
    finished = (path / io.RESULT).exists()
    if (finished or has_checkpoint(path)) and not (resume or force):
        raise RunError(
            f"{path} already holds a run; use --resume to continue it, --force to start it "
            "over, or --out DIR"
        )
    if resume and finished and not has_checkpoint(path) and not force:
        raise RunError(f"{path} holds a result but no checkpoint; use --force to start over")


def lock_directory(path: Path) -> None:
    """Create ``path`` if needed and take its lock; RunError if in use or unwritable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        for message in io.acquire_lock(path):
            warn(message)
    except io.LockedError as err:
        raise RunError(str(err)) from None
    except OSError as err:
        raise RunError(cannot_write(path, err)) from None


def open_run_directory(path: Path, config: Config, resume: bool, force: bool) -> None:
    """Create and lock the run directory (process 0), clear it for --force, copy the input."""
    lock_directory(path)
    check_run_directory(path, resume, force)  # again: another process may have finished
    if resume and not force and not has_checkpoint(path):
        warn(f"{path} holds no checkpoint yet; starting from the first step")
    try:
        if force:
            for name in io.RUN_FILES:
                (path / name).unlink(missing_ok=True)
        if config.source is not None and not (path / io.INPUT_COPY).exists():
            shutil.copyfile(config.source, path / io.INPUT_COPY)
        io.write_text_atomic(path / io.CONFIG_COPY, to_toml(config.data))
    except OSError as err:
        raise RunError(cannot_write(path, err)) from None


def release(path: Path) -> None:
    """Give up the directory's lock (process 0; errors ignored)."""
    if is_main_process():
        with contextlib.suppress(OSError):
            io.release_lock(path)
