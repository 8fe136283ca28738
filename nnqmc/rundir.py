"""The run directory and what the phases and their loop (:mod:`nnqmc.driver`) share:

* the directory: :func:`run_directory`, :func:`check_run_directory`, :func:`lock_directory`,
  :func:`open_run_directory` (lock, ``--force``, input copy) and :func:`release`;
* write errors as one line: :func:`cannot_write`;
* signals: :func:`stop_on_signals` gives the ``stop`` check the loop
  (:class:`nnqmc.driver.Driver`) calls between steps;
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
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import io
from .config import Config, to_toml
from .errors import RunError
from .parallel import broadcast_from_main, is_main_process, process_count

__all__ = [
    "Progress",
    "StopCheck",
    "cannot_write",
    "check_run_directory",
    "has_checkpoint",
    "lock_directory",
    "never_stop",
    "on_main",
    "open_run_directory",
    "release",
    "run_directory",
    "signal_name",
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


def main_flag(test: Callable[[], bool]) -> bool:
    """``test()`` of process 0 (which alone sees the files), on every process."""
    return bool(broadcast_from_main(np.array(bool(on_main(test)))))


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
