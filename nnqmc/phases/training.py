"""The training phase: optimise the ansatz, checkpointed and resumable (:func:`train`).

The jitted training step itself is :func:`nnqmc.steps.train_step` (compiled by
:func:`nnqmc.programs.train_program`); this module
gives the loop (:class:`nnqmc.driver.Driver`) its start (fresh, warm or from a checkpoint,
burnt in), its step and its state, and halves the learning rate on a rejected step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..config import TrainConfig
from ..driver import Driver, NanGuard
from ..errors import RunError
from ..parallel import device_keys, first_replica, gather_walkers, replicate, scatter_walkers
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
from ..rundir import Progress, StopCheck
from ..steps import TrainState
from ..threads import single_threaded_blas

__all__ = ["StepHook", "TrainResult", "saved_training", "train", "trained_state"]

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
def train_log_attrs(history: dict[str, Any]) -> dict[str, Any]:
    """The attributes of train.h5: the number of rejected steps."""
    return {"rejected_steps": int(np.sum(np.asarray(history.get("finite", [])) == 0))}


ROLLBACK = 2
"""Rejected training steps in a row that return parameters, optimizer state and walkers to
those of the last checkpoint step (:class:`nnqmc.driver.NanGuard`): one non-finite step is
a walker's accident, two in a row a wavefunction that may already have run away (H2O with
momentum 0.99: energies 0.6 Ha below exact for 15 steps before the first non-finite one)."""


def _driver(run: Run, out_dir: str | Path | None) -> Driver:
    guard = NanGuard(
        run.config.train.max_bad_steps,
        "train.max_bad_steps",
        "training",
        "non-finite local energies, gradient or update",
        "learning rate",
        finite=lambda row: row["finite"] > 0,
        rollback=ROLLBACK,
        hint=(
            " (continue with --resume after lowering train.learning_rate; if the log's"
            " variance had run away before, start over with it lower)"
        ),
    )
    columns = {
        c: jax.ShapeDtypeStruct((), np.int64 if c == "step" else np.float64)
        for c in io.TRAIN_COLUMNS
    }
    return Driver(out_dir, "train", guard=guard, columns=lambda: columns)


def _resume(
    run: Run, drive: Driver, params: Any, opt_state: Any, key: Any
) -> dict[str, Any] | None:
    """The saved training state in ``drive``'s directory (RunError if unusable), or None."""
    shape = (run.config.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
    like = {
        "params": params,
        "opt_state": opt_state,
        "walkers": np.zeros(shape),
        "width": 0.0,
        "key": np.asarray(key),
    }
    return drive.resume(jax.tree_util.tree_map(np.asarray, like))


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


def saved_training(run: Run, run_dir: str | Path) -> TrainResult | None:
    """The training state and history of the newest checkpoint in ``run_dir``, read with
    ``run``'s ansatz as the template (another geometry of the same molecule fits); None if
    there is none."""
    key, params, _, opt_state = initial_parameters(run)
    drive = _driver(run, run_dir)
    saved = _resume(run, drive, params, opt_state, key)
    if saved is None:
        return None
    return TrainResult(
        params=saved["params"],
        walkers=saved["walkers"],
        width=float(saved["width"]),
        history=drive.rows(),
        steps=drive.start,
        wall_seconds=drive.earlier,
    )


def trained_state(run: Run, run_dir: str | Path) -> tuple[Any, np.ndarray]:
    """(parameters, walkers) of the newest checkpoint in ``run_dir``, read with ``run``'s
    ansatz as the template (another geometry of the same molecule fits); RunError if none."""
    saved = saved_training(run, run_dir)
    if saved is None:
        raise RunError(f"{run_dir} holds no checkpoint")
    return saved.params, np.asarray(saved.walkers)


def checkpoint_contents(state: Any, walkers: Any, width: Any, key: jax.Array) -> dict[str, Any]:
    """What a training checkpoint holds: the parameters and optimizer state of ``state``'s
    first replica, the (gathered) ``walkers``, the step ``width`` and the run's ``key``."""
    return {
        "params": first_replica(state.params),
        "opt_state": first_replica(state.opt_state),
        "walkers": walkers,
        "width": width,
        "key": np.asarray(key),
    }


def drive_training(
    drive: Driver,
    state: Any,
    step: Callable[[Any, int], tuple[Any, dict[str, Any]]],
    saved_state: Callable[[Any], dict[str, Any]],
    settings: TrainConfig,
    *,
    label: str,
    stop: StopCheck | None,
    progress: Progress | None,
    after: Callable[[int, Any], None] | None = None,
    restore: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """``drive.run`` of a training (one geometry's or a shared one): ``settings.steps``
    steps, timed, checkpointed before the first, every ``settings.checkpoint_every`` and at
    the end, the log with :func:`train_log_attrs`; returns the last state. ``restore``: as
    for :meth:`~nnqmc.driver.Driver.run` (the guard's rollback needs it)."""
    return drive.run(
        state,
        step,
        saved_state,
        total=settings.steps,
        every=settings.checkpoint_every,
        label=label,
        stop=stop,
        progress=progress,
        after=after,
        first_checkpoint=True,
        timed=True,
        log_attrs=train_log_attrs,
        restore=restore,
    )


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
    in a row end the run with a RunError, the last accepted state checkpointed; the
    :data:`ROLLBACK`-th in a row first returns the state to that of the last checkpoint step.

    With several processes every process calls this; only process 0 reads or writes files,
    and a checkpoint holds the walkers of all devices of all processes.
    """
    cfg = run.config
    n_devices = check_devices(cfg.train.walkers)
    key, params, optimizer, opt_state = initial_parameters(run)
    dtype = run.dtype
    drive = _driver(run, out_dir)
    saved = _resume(run, drive, params, opt_state, key) if resume else None

    def restore(saved: dict[str, Any]) -> TrainState:
        walkers = scatter_walkers(jnp.asarray(saved["walkers"], dtype), n_devices)
        width = replicate(jnp.asarray(saved["width"], dtype), n_devices)
        params = replicate(saved["params"], n_devices)
        return TrainState(params, replicate(saved["opt_state"], n_devices), walkers, width)

    if saved is not None:
        start = restore(saved)
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
        start = TrainState(
            replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width
        )

    step_fn = train_program(run)
    train_key = jax.random.fold_in(key, STREAM_TRAIN)
    guard = drive.guard

    def step(state: TrainState, k: int) -> tuple[TrainState, dict[str, Any]]:
        state, stats = step_fn(state, device_keys(train_key, k, n_devices), guard.scale)
        return state, {**_float_stats(stats), "step": k, "lr_scale": guard.scale}

    def saved_state(state: TrainState) -> dict[str, Any]:
        walkers = gather_walkers(state.walkers)  # collective: every process
        return checkpoint_contents(state, walkers, float(state.width[0]), key)

    state = drive_training(
        drive,
        start,
        step,
        saved_state,
        cfg.train,
        label="step",
        stop=stop,
        progress=progress,
        after=(lambda done, state: on_step(done, first_replica(state.params))) if on_step else None,
        restore=restore,
    )
    return TrainResult(
        params=first_replica(state.params),
        walkers=gather_walkers(state.walkers),
        width=float(state.width[0]),
        history=drive.rows(),
        steps=max(drive.start, cfg.train.steps),
        wall_seconds=drive.elapsed(),  # with a resumed run's past
    )
