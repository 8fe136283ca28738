"""The one loop every phase runs through (:class:`Driver`).

A phase gives its start (or the state :meth:`Driver.resume` read back), its step, a
function ``step(state, k) -> (state, row)``, and what its checkpoint holds; the driver owns
the rest: stop requests (a checkpoint, then :class:`~nnqmc.errors.Interrupted`), checkpoint
timing, the guard against non-finite steps (:class:`NanGuard`), progress, the per-step log
and the wall time, that of a resumed run's earlier part included.

A checkpoint holds the state and the number of rows of the log, not the rows themselves:
the log is appended to, a row at a time, and cut back to that number on resume, when the
earlier rows are read back from it. With several processes every process calls the
driver; process 0 alone reads and writes the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import io
from .errors import Interrupted, RunError
from .parallel import broadcast_from_main, is_main_process, process_count
from .rundir import Progress, StopCheck, cannot_write, never_stop, on_main, signal_name, warn

__all__ = ["Driver", "NanGuard"]

# A phase's checkpoint, its previous copy and its log, by the phase's progress name.
FILES = {
    "train": (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT, io.TRAIN_LOG),
    "eval": (io.EVAL_CHECKPOINT, io.PREVIOUS_EVAL_CHECKPOINT, io.EVAL_LOG),
    "dmc": (io.DMC_CHECKPOINT, io.PREVIOUS_DMC_CHECKPOINT, io.DMC_LOG),
}

# A step: (state, step number) -> (new state, that step's row of the log).
ANCHOR = ("anchor", "anchor_step")  # a checkpoint's optional parts: the rollback's anchor
Step = Callable[[Any, int], tuple[Any, dict[str, Any]]]


@dataclass
class NanGuard:
    """Rejected (non-finite) steps: each halves :attr:`scale` (the learning rate's, or
    whatever the phase scales); ``limit`` of them in a row stop the phase.

    ``finite(row)`` says whether a step is good. With ``retry`` a rejected step is tried
    again (its step may fold :attr:`in_row` into its key) and leaves no row; without, it is
    logged and counted as done. ``scale`` and ``in_row`` are kept in the checkpoint.

    ``rollback`` (with a ``restore`` given to :meth:`Driver.run`): the ``rollback``-th bad
    step in a row also returns the state to the *anchor*, the state of the last step on
    the checkpoint grid (or the one the phase started or resumed from): a run whose
    parameters had already run away before its first non-finite step goes on from before
    it, at the lowered scale, instead of stopping on a broken state.
    """

    limit: int
    limit_key: str  # the setting that holds ``limit``, for the message
    phase: str  # "training", "DMC": who stops, for the message
    rejected: str  # what was not finite
    scaled: str  # what ``scale`` scales
    finite: Callable[[dict[str, Any]], bool]
    retry: bool = False
    hint: str = ""  # after the checkpoint's name in the message
    rollback: int = 0  # bad steps in a row that return the state to the anchor (0: never)
    scale: float = 1.0
    in_row: int = 0

    def check(self, finite: bool, done: int) -> bool:
        """Record step ``done``; True when the phase must stop (checkpoint, then raise
        :meth:`error`). A bad step warns "step N: ...; step rejected, ... scaled to S"."""
        if finite:
            self.in_row = 0
            return False
        self.in_row += 1
        self.scale *= 0.5
        warn(f"step {done}: {self.rejected}; step rejected, {self.scaled} scaled to {self.scale:g}")
        return self.in_row >= self.limit

    def error(self, done: int, checkpoint: Path | None, since: int | None = None) -> RunError:
        """The RunError that ends the phase (``since``: the step it had rolled back to)."""
        state = "the last accepted state" if since is None else f"the state of step {since}"
        where = f"; {state} is in {checkpoint}{self.hint}" if checkpoint else ""
        return RunError(
            f"{self.phase} stopped at step {done}: {self.in_row} non-finite steps in a row "
            f"({self.limit_key} = {self.limit}){where}"
        )


class Driver:
    """One phase's loop, checkpoints and log in ``run_dir`` (none without one).

    ``phase``: "train", "eval" or "dmc" (its files, :data:`FILES`, and progress name);
    ``tag``: what the checkpoint belongs to (e.g. the training step an evaluation samples);
    ``columns()``: the shape and dtype of each column of a row (asked for only to resume
    on several processes).
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        phase: str,
        *,
        tag: dict[str, Any] | None = None,
        guard: NanGuard | None = None,
        columns: Callable[[], dict[str, jax.ShapeDtypeStruct]] | None = None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.phase, self.tag, self.guard, self.columns = phase, tag or {}, guard, columns
        self.files = None if run_dir is None else tuple(Path(run_dir) / n for n in FILES[phase])
        self.start, self.earlier, self.last, self.n_rows = 0, 0.0, None, 0
        self.ended: float | None = None
        self.seconds_saved: float | None = None
        self.history: dict[str, list] = {}
        self.anchor: tuple[int, dict[str, Any]] | None = None  # (step, saved) from a resume
        self.log: io.AppendLog | None = None
        self.log_error = ""

    def elapsed(self) -> float:
        """Seconds of this phase so far, those before a resume included; once the loop has
        ended, those its last checkpoint recorded (so a finished phase read back reports
        no less than it did)."""
        if self.ended is not None:
            return self.ended
        return self.earlier + time.perf_counter() - self.t0

    def rows(self) -> dict[str, np.ndarray]:
        """The log's rows so far, one array per column."""
        return {n: np.asarray(v) for n, v in self.history.items()}

    # ----------------------------------------------------------------------- resume
    def resume(
        self,
        like: dict[str, Any],
        accept: Callable[[dict[str, Any]], bool] | None = None,
        restart: str | None = None,
    ) -> dict[str, Any] | None:
        """The state of the newest usable checkpoint on every process (the parts of
        ``like``, which also gives their shapes and dtypes), its rows read back into
        :attr:`history`; None if there is none (start afresh).

        ``accept(saved)`` (saved: step, tag, state, history) says whether it belongs to this
        phase. ``restart`` ends the warning about an unusable checkpoint ("evaluating from
        the first step"); without it, an unusable checkpoint is a RunError.
        """
        if self.files is None:
            return None
        part = like
        like = {**like, "scale": 1.0, "bad_in_row": 0}
        if self._rolls_back():
            like = {**like, "anchor": part, "anchor_step": 0}
        found, error = None, ""
        if is_main_process():
            try:
                found = self._read(like, accept, restart)
            except RunError as err:
                error = str(err)
        header = np.array([2 if error else found is not None, found["step"] if found else 0])
        status, step = (int(v) for v in broadcast_from_main(header))
        if status == 2:
            raise RunError(error or f"process 0 could not read {self.files[0]}")
        if status == 0:
            return None
        if process_count() > 1:
            found = broadcast_from_main(self._payload(found, like, step))
        state = found["state"]
        if self.guard is not None:
            self.guard.scale, self.guard.in_row = float(state["scale"]), int(state["bad_in_row"])
        if self._rolls_back():
            self.anchor = (int(state.pop("anchor_step")), state.pop("anchor"))
        self.start = self.last = step
        self.earlier = float(found["seconds"])
        self.history = {n: list(v) for n, v in found["history"].items()}
        self.n_rows = len(next(iter(self.history.values()), []))
        return state

    def _read(self, like: dict[str, Any], accept, restart: str | None) -> dict[str, Any] | None:
        """Process 0: the checkpoint with its rows, None to start afresh; RunError if the
        phase cannot go on."""
        path, previous, log = self.files

        def unusable(why: str) -> None:
            if restart is None:
                raise RunError(f"no usable checkpoint: {why}")
            self._discard()
            warn(f"{why}; {restart}")

        def load(p: Path) -> dict[str, Any]:  # a log short of its checkpoint: try the previous
            saved = io.load_checkpoint(p, like, optional=ANCHOR)
            if saved["format"] == io.CHECKPOINT_FORMAT:
                saved["history"] = io.read_rows(log, saved["rows"])
                state = saved["state"]
                if "anchor" in like and "anchor" not in state:  # on the grid: its own state
                    state["anchor"] = {n: state[n] for n in like["anchor"]}
                    state["anchor_step"] = saved["step"]
            return saved

        try:
            saved, warnings = io.read_newest(path, previous, load)
        except (OSError, io.CheckpointError) as err:
            return unusable(str(err))
        for message in warnings:
            warn(message)
        if saved is None:
            return None
        if saved["format"] != io.CHECKPOINT_FORMAT:
            if restart is not None:
                return unusable(f"{path} is a checkpoint of an older nnqmc")
            raise RunError(
                f"{path} is a checkpoint of an older nnqmc (format {saved['format']}), which "
                "cannot be resumed; start over with --force or another --out"
            )
        for name, value in like.items():
            have, want = _shapes(saved["state"][name]), _shapes(value)
            if have != want:
                return unusable(f"{path} holds {name} of shape {have}; this run's are {want}")
        cast = lambda x, t: np.asarray(x, np.asarray(t).dtype)
        saved["state"] = jax.tree_util.tree_map(cast, saved["state"], like)
        if accept is not None and not accept(saved):
            self._discard()
            return None
        return saved

    def _rolls_back(self) -> bool:
        return self.guard is not None and self.guard.rollback > 0

    def _discard(self) -> None:
        """Process 0: remove checkpoints this phase starts afresh without, so that none of
        them is later paired with the new log."""
        if self.files is not None:
            for stale in self.files[:2]:
                stale.unlink(missing_ok=True)

    def _payload(self, found: dict[str, Any] | None, like: dict[str, Any], step: int):
        """What process 0 broadcasts: its checkpoint, or on the others a template of it."""
        columns = self.columns()
        if found is None:
            found = {"state": like, "seconds": 0.0, "history": {}}
        history = {
            n: found["history"].get(n, np.zeros((step, *c.shape), c.dtype))
            for n, c in columns.items()
        }
        payload = {"state": found["state"], "seconds": found["seconds"], "history": history}
        return jax.tree_util.tree_map(np.asarray, payload)

    # ----------------------------------------------------------------------- the loop
    def run(
        self,
        state: Any,
        step: Step,
        saved: Callable[[Any], dict[str, Any]],
        *,
        total: int,
        every: int,
        label: str,
        stop: StopCheck | None = None,
        progress: Progress | None = None,
        after: Callable[[int, Any], None] | None = None,
        first_checkpoint: bool = False,
        timed: bool = False,
        log_attrs: Callable[[dict[str, np.ndarray]], dict[str, Any]] | None = None,
        restore: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        """Steps :attr:`start` to ``total`` from ``state``; returns the last state.

        A row of the log per step (``timed``: with its ``wall_time``); ``saved(state)``,
        called on every process, gives what a checkpoint holds, written every ``every`` steps,
        at the end, before the first step with ``first_checkpoint`` (unless resumed), and
        when ``stop()`` asks to stop. ``label``: a step in messages ("DMC step"); ``after(done,
        state)``: called after each step; ``log_attrs(rows)``: attributes of the log, set at
        each checkpoint; ``restore(saved)``: the state from what ``saved`` gave (with it, a
        guard's ``rollback`` acts; the anchor goes into checkpoints off the grid).
        """
        stop = stop or never_stop
        rollback = self._rolls_back() and restore is not None
        anchor_step, anchor = self.start, state
        if rollback and self.anchor is not None and self.anchor[0] != self.start:
            anchor_step, anchor = self.anchor[0], restore(self.anchor[1])

        def save(k: int) -> None:
            if self.files is not None:
                scale, in_row = (self.guard.scale, self.guard.in_row) if self.guard else (1.0, 0)
                content = {**saved(state), "scale": scale, "bad_in_row": in_row}
                if rollback:
                    content["anchor_step"] = anchor_step
                    if anchor_step != k:
                        content["anchor"] = saved(anchor)
                self.seconds_saved = self.elapsed()
                on_main(lambda: self._write(k, content, label, log_attrs))
                self.last = k

        if self.files is not None:
            self.log = on_main(self._open_log)
        try:
            if first_checkpoint and self.last is None:
                save(0)
            k = self.start
            while k < total:
                signum = stop()
                if signum:
                    save(k)
                    where = f"; checkpoint: {self.files[0]}" if self.files else ""
                    what = f"{label} {k} of {total}"
                    raise Interrupted(
                        signum, f"stopped by {signal_name(signum)} after {what}{where}"
                    )
                new, row = step(state, k)
                good = self.guard is None or bool(self.guard.finite(row))
                if good or not self.guard.retry:
                    state, k = new, k + 1
                    row = {**row, "wall_time": self.elapsed()} if timed else row
                    self._append(row, label, k)
                ends = self.guard is not None and self.guard.check(good, k)
                if not good and rollback and self.guard.in_row == self.guard.rollback:
                    state = anchor
                    warn(
                        f"step {k}: {self.guard.in_row} rejected steps in a row; the state "
                        f"(parameters, optimizer, walkers) back to that of step {anchor_step}"
                    )
                if ends:
                    save(k)
                    since = anchor_step if rollback else None
                    raise self.guard.error(k, self.files and self.files[0], since)
                if not good and self.guard.retry:
                    continue
                if k % every == 0 or k == total:
                    if good:  # a rejected step's state is the last accepted one, maybe run away
                        anchor_step, anchor = k, state
                    save(k)
                if progress:
                    progress(self.phase, k, total, {n: float(np.mean(v)) for n, v in row.items()})
                if after:
                    after(k, state)
            done_saving = self.seconds_saved is not None and self.last == total
            self.ended = self.seconds_saved if done_saving else self.elapsed()
        finally:
            if self.log is not None:
                self.log.close()
                self.log = None
        return state

    def _open_log(self) -> io.AppendLog:
        """Process 0: the log, new, or cut to the rows of the checkpoint resumed from."""
        path = self.files[2]
        try:
            return io.AppendLog(path, self.n_rows)
        except OSError as err:
            raise RunError(cannot_write(path, err)) from None

    def _append(self, row: dict[str, Any], label: str, done: int) -> None:
        """Keep a row; process 0 appends it to the log (a write error stops the phase at its
        next checkpoint)."""
        for name, value in row.items():
            self.history.setdefault(name, []).append(value)
        self.n_rows += 1
        if self.log is None:
            return
        try:
            self.log.append(row)
        except OSError as err:
            self.log_error = f"{cannot_write(self.files[2], err)} at {label} {done}"
            self.log.close()
            self.log = None

    def _write(self, k: int, content: dict[str, Any], label: str, log_attrs) -> None:
        """Process 0: the checkpoint after ``k`` steps; RunError if it cannot be written."""
        path, previous, _ = self.files
        if self.log_error:
            raise RunError(self.log_error)
        try:
            if self.log is not None:
                if log_attrs is not None:
                    self.log.set_attrs(log_attrs(self.rows()))
                self.log.sync()  # on disk before the checkpoint that counts its rows
            io.save_checkpoint(
                path,
                step=k,
                rows=self.n_rows,
                seconds=self.seconds_saved,
                tag=self.tag,
                previous=previous,
                **content,
            )
        except OSError as err:
            kept = "no earlier checkpoint" if self.last is None else f"{path.name} still holds"
            kept += "" if self.last is None else f" {label} {self.last}"
            raise RunError(f"{cannot_write(path, err)} at {label} {k}; {kept}") from None
        except ValueError as err:
            raise RunError(str(err)) from None


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return [np.shape(x) for x in jax.tree_util.tree_leaves(tree)]
