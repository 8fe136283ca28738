"""The training phase: optimise the ansatz, checkpointed and resumable (:func:`train`).

The jitted training step itself is :func:`nnqmc.steps.train_step` (compiled by
:func:`nnqmc.programs.train_program`); this module
owns the loop around it: the start (fresh, warm or from a checkpoint), burn-in, checkpoints,
signals and the guard against non-finite steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..errors import RunError
from ..parallel import (
    broadcast_from_main,
    device_keys,
    first_replica,
    gather_walkers,
    is_main_process,
    replicate,
    scatter_walkers,
)
from ..programs import burn_in_program, train_program
from ..run_setup import (
    STREAM_BURN_IN,
    STREAM_INIT,
    STREAM_TRAIN,
    STREAM_WALKERS,
    Run,
    check_devices,
    initial_walkers,
)
from ..rundir import (
    NanGuard,
    Progress,
    StopCheck,
    cannot_write,
    checkpoint_due,
    never_stop,
    on_main,
    read_rotated,
    stop_if_asked,
)
from ..steps import TrainState
from ..threads import single_threaded_blas

__all__ = ["StepHook", "TrainResult", "load_checkpoint", "train", "trained_state"]

# Called after every training step with the number of steps done and the parameters.
StepHook = Callable[[int, Any], None]


@dataclass
class TrainResult:
    params: Any
    walkers: np.ndarray
    width: float
    history: dict[str, np.ndarray]
    steps: int
    wall_seconds: float


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(
    run_dir: Path, params: Any, opt_state: Any, walker_shape: tuple[int, ...]
) -> dict[str, Any] | None:
    """Process 0 reads the newest valid checkpoint (falling back to the previous one), every
    process gets its contents; None if there is none."""
    saved, error = None, ""
    if is_main_process():
        saved, error = read_rotated(
            run_dir / io.CHECKPOINT,
            run_dir / io.PREVIOUS_CHECKPOINT,
            lambda p: io.load_checkpoint(p, params, opt_state),
        )
        error = f"no usable checkpoint: {error}" if error else ""
    n_rows = len(saved["history"].get("step", [])) if saved else 0
    header = np.array(
        [
            saved is not None,
            bool(error),
            saved["step"] if saved else 0,
            n_rows,
            saved["walkers"].shape[0] if saved else 0,
            saved["bad_in_row"] if saved else 0,
        ],
        dtype=np.int64,
    )
    present, failed, step, n_rows, n_walkers, bad_in_row = (
        int(v) for v in broadcast_from_main(header)
    )
    if failed:
        raise RunError(error or f"{run_dir}: process 0 could not read the checkpoint")
    if not present:
        return None
    if n_walkers != walker_shape[0]:
        raise RunError(
            f"{run_dir / io.CHECKPOINT} holds {n_walkers} walkers; the config asks for "
            f"train.walkers = {walker_shape[0]}"
        )

    def column(name: str, values: Any) -> np.ndarray:
        values = np.asarray(values, np.int64 if name == "step" else np.float64)
        if name == "lr_scale" and values.shape != (n_rows,):
            return np.ones(n_rows)  # a checkpoint from before the column existed
        return values if values.shape == (n_rows,) else np.zeros(n_rows, values.dtype)

    if saved is None:  # another process: templates of the right shapes for the broadcast
        saved = {
            "params": params,
            "opt_state": opt_state,
            "walkers": np.zeros(walker_shape),
            "width": 0.0,
            "lr_scale": 1.0,
            "history": {},
        }
    payload = {
        "params": jax.tree_util.tree_map(np.asarray, saved["params"]),
        "opt_state": jax.tree_util.tree_map(np.asarray, saved["opt_state"]),
        "walkers": np.asarray(saved["walkers"], np.float64),
        "width": np.asarray(saved["width"], np.float64),
        "lr_scale": np.asarray(saved["lr_scale"], np.float64),
        "history": {c: column(c, saved["history"].get(c, [])) for c in io.TRAIN_COLUMNS},
    }
    payload = broadcast_from_main(payload)
    payload["step"] = step
    payload["bad_in_row"] = bad_in_row
    payload["width"] = float(payload["width"])
    payload["lr_scale"] = float(payload["lr_scale"])
    return payload


def train_log_attrs(history: dict[str, Any]) -> dict[str, Any]:
    """The attributes of train.h5: the number of rejected steps."""
    return {"rejected_steps": int(np.sum(np.asarray(history["finite"]) == 0))}


def _write_checkpoint(run_dir: Path, step: int, last: int | None, **state: Any) -> None:
    """checkpoint.h5 (the previous one kept) and train.h5; RunError if they cannot be written."""
    path = run_dir / io.CHECKPOINT
    columns = state["history"]
    try:
        io.save_checkpoint(path, step=step, previous=run_dir / io.PREVIOUS_CHECKPOINT, **state)
        io.write_table(run_dir / io.TRAIN_LOG, columns, train_log_attrs(columns))
    except OSError as err:
        kept = "no earlier checkpoint" if last is None else f"{path.name} still holds step {last}"
        raise RunError(f"{cannot_write(path, err)} at step {step}; {kept}") from None
    except ValueError as err:
        raise RunError(str(err)) from None


# --------------------------------------------------------------------------- the start
def _float_stats(stats: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in first_replica(stats).items()}


def _burn_in(run: Run, params, walkers, width, key, n_devices, progress):
    cfg = run.config.sampler
    n_burn = math.ceil(cfg.burn_in / cfg.decorrelation)
    if n_burn == 0:
        return walkers, width
    step = burn_in_program(run)
    params_r = replicate(params, n_devices)
    for k in range(n_burn):
        walkers, width, acc = step(params_r, walkers, width, device_keys(key, k, n_devices))
        if progress:
            progress("burn-in", k + 1, n_burn, {"acceptance": float(acc[0])})
    return walkers, width


def initial_parameters(run: Run) -> tuple[jax.Array, Any, Any, Any]:
    """(seed key, parameters, optimizer, optimizer state) of a fresh run."""
    cfg = run.config
    key = jax.random.PRNGKey(cfg.train.seed)
    params = run.ansatz.init(jax.random.fold_in(key, STREAM_INIT))
    optimizer = run.optimizer()
    return key, params, optimizer, optimizer.init(params)


def _check_initial(
    run: Run, template: Any, params: Any, walkers: np.ndarray
) -> tuple[Any, jax.Array]:
    """Warm-start parameters and walkers cast to the run's dtype; RunError if their shapes
    do not fit the ansatz and ``train.walkers``."""
    shape = (run.config.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
    if np.shape(walkers) != shape:
        raise RunError(f"warm start: walkers of shape {np.shape(walkers)}, expected {shape}")
    same_tree = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template)
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(params)]
    if not same_tree or shapes != [np.shape(x) for x in jax.tree_util.tree_leaves(template)]:
        raise RunError("warm start: the parameters do not fit this ansatz")
    cast = lambda x, t: jnp.asarray(x, jnp.asarray(t).dtype)
    params = jax.tree_util.tree_map(cast, params, template)
    return params, jnp.asarray(walkers, run.dtype)


def trained_state(run: Run, run_dir: str | Path) -> tuple[Any, np.ndarray]:
    """(parameters, walkers) of the newest checkpoint in ``run_dir``, read with ``run``'s
    ansatz as the template (another geometry of the same molecule fits); RunError if none."""
    _, params, _, opt_state = initial_parameters(run)
    path = Path(run_dir)
    shape = (run.config.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
    saved = load_checkpoint(path, params, opt_state, shape)
    if saved is None:
        raise RunError(f"{path} holds no checkpoint")
    return saved["params"], np.asarray(saved["walkers"])


# --------------------------------------------------------------------------- the loop
@single_threaded_blas
def train(
    run: Run,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    stop: StopCheck | None = None,
    initial: tuple[Any, np.ndarray] | None = None,
) -> TrainResult:
    """Optimise the ansatz; with ``out_dir``, log and checkpoint there (resumable).

    ``initial = (params, walkers)`` starts a fresh run (not one resumed from a checkpoint)
    from these parameters (the same pytree shapes as ``run.ansatz.init``'s) and walkers
    (all walkers), which are then burnt in: a warm start, e.g. from a neighbouring geometry.

    Checkpoints are written before the first step, every ``train.checkpoint_every`` steps,
    at the end, and when ``stop()`` asks to stop (then :class:`Interrupted` is raised). A
    rejected (non-finite) step halves the learning-rate scale; ``train.max_bad_steps`` of them
    in a row end the run with a RunError, the last good state checkpointed.

    With several processes every process calls this; only process 0 reads or writes files,
    and a checkpoint holds the walkers of all devices of all processes.
    """
    cfg = run.config
    t_start = time.perf_counter()
    stop = stop or never_stop
    n_devices = check_devices(cfg.train.walkers)
    key, params, optimizer, opt_state = initial_parameters(run)
    dtype = run.dtype
    history: dict[str, list[float]] = {c: [] for c in io.TRAIN_COLUMNS}
    run_dir = Path(out_dir) if out_dir is not None else None
    checkpoint = run_dir / io.CHECKPOINT if run_dir is not None else None
    start = 0
    guard = NanGuard(cfg.train.max_bad_steps, "train.max_bad_steps")

    saved = None
    if resume and run_dir is not None:
        shape = (cfg.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
        saved = load_checkpoint(run_dir, params, opt_state, shape)
    if saved is not None:
        params, opt_state, start = saved["params"], saved["opt_state"], saved["step"]
        guard.scale, guard.in_row = saved["lr_scale"], saved["bad_in_row"]
        walkers = scatter_walkers(jnp.asarray(saved["walkers"], dtype), n_devices)
        width = replicate(jnp.asarray(saved["width"], dtype), n_devices)
        history = {c: list(saved["history"][c]) for c in io.TRAIN_COLUMNS}
    else:
        if initial is not None:
            params, start_walkers = _check_initial(run, params, *initial)
            opt_state = optimizer.init(params)
        else:  # every process draws all walkers from the same key and keeps its share
            start_walkers = initial_walkers(
                run, jax.random.fold_in(key, STREAM_WALKERS), cfg.train.walkers
            )
        walkers = scatter_walkers(start_walkers, n_devices)
        width = replicate(jnp.asarray(cfg.sampler.initial_width, dtype), n_devices)
        walkers, width = _burn_in(
            run,
            params,
            walkers,
            width,
            jax.random.fold_in(key, STREAM_BURN_IN),
            n_devices,
            progress,
        )

    step_fn = train_program(run)
    state = TrainState(
        replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width
    )
    train_key = jax.random.fold_in(key, STREAM_TRAIN)
    wall_offset = history["wall_time"][-1] if history["wall_time"] else 0.0
    t_loop = time.perf_counter()
    last_saved = start if saved is not None else None

    def save(step: int) -> None:
        nonlocal last_saved
        if run_dir is None:
            return
        all_walkers = gather_walkers(state.walkers)  # collective: every process
        on_main(
            lambda: _write_checkpoint(
                run_dir,
                step,
                last_saved,
                params=first_replica(state.params),
                opt_state=first_replica(state.opt_state),
                walkers=all_walkers,
                width=float(state.width[0]),
                key=np.asarray(key),
                history={c: np.asarray(v) for c, v in history.items()},
                lr_scale=guard.scale,
                bad_in_row=guard.in_row,
            )
        )
        last_saved = step

    if saved is None:
        save(0)  # so that --resume works from any moment on
    for step in range(start, cfg.train.steps):
        stop_if_asked(stop, save, step, f"step {step} of {cfg.train.steps}", checkpoint)
        state, stats = step_fn(state, device_keys(train_key, step, n_devices), guard.scale)
        row = _float_stats(stats)
        row["step"] = step
        row["lr_scale"] = guard.scale
        row["wall_time"] = wall_offset + time.perf_counter() - t_loop
        for c in io.TRAIN_COLUMNS:
            history[c].append(row[c])
        done = step + 1
        rejected = "non-finite local energies, gradient or update"
        if guard.check(row["finite"] > 0, done, rejected, "learning rate"):
            save(done)
            where = (
                f"the last good state is in {checkpoint} (continue with --resume after "
                "lowering train.learning_rate)"
                if checkpoint
                else "parameters left at the last good step"
            )
            raise guard.error("training", done, where)
        if checkpoint_due(done, cfg.train.checkpoint_every, cfg.train.steps):
            save(done)
        if progress:
            progress("train", done, cfg.train.steps, row)
        if on_step:
            on_step(done, first_replica(state.params))

    return TrainResult(
        params=first_replica(state.params),
        walkers=gather_walkers(state.walkers),
        width=float(state.width[0]),
        history={c: np.asarray(v) for c, v in history.items()},
        steps=max(start, cfg.train.steps),
        wall_seconds=wall_offset + time.perf_counter() - t_start,  # with a resumed run's past
    )
