"""The evaluation phase: sample with frozen parameters, energy ± error from a blocking
analysis, checkpointed and resumable (:func:`evaluate`).

The jitted evaluation step is :func:`nnqmc.steps.eval_step` (compiled with a run's settings
by :func:`nnqmc.programs.eval_program`); this module gives it to the loop
(:class:`nnqmc.driver.Driver`) with the walkers to start from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..driver import Driver
from ..estimate import estimate
from ..parallel import device_keys, first_replica, gather_walkers, replicate, scatter_walkers
from ..programs import ObservablesOf, eval_program, observables_of
from ..run_setup import STREAM_EVAL, Run, check_devices
from ..rundir import Progress, StopCheck
from ..steps import NuclearObservable, WaveObservable
from ..threads import single_threaded_blas

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    energy: float
    energy_err: float
    variance: float
    tau: float
    steps: int
    energies: np.ndarray
    wall_seconds: float
    observables: dict[str, Any] = field(default_factory=dict)
    records: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- the loop
@single_threaded_blas
def evaluate(
    run: Run,
    params: Any,
    walkers: np.ndarray,
    width: float,
    steps: int | None = None,
    progress: Progress | None = None,
    observables: dict[str, Callable[[jax.Array], jax.Array] | WaveObservable | NuclearObservable]
    | ObservablesOf
    | None = None,
    out_dir: str | Path | None = None,
    tag: dict[str, Any] | None = None,
    stop: StopCheck | None = None,
) -> EvalResult:
    """Sample with frozen parameters; energy ± standard error from a blocking analysis.

    ``observables``: extra ones beside the dipole moment, a dict or a function of the
    Hamiltonian that builds them (:data:`nnqmc.programs.ObservablesOf`; only that lets the
    geometries of a scan share one compiled program). Each is a function of one walker's
    positions, a :class:`~nnqmc.steps.WaveObservable` (it also sees log|psi| and E_L) or,
    in a molecular run, a :class:`~nnqmc.steps.NuclearObservable` (it also sees log|psi| as
    a function of the nuclei).

    ``walkers`` are all walkers (of all processes); each process evaluates its share. With
    ``out_dir``, every step's averages are appended to eval.h5 (flushed) and the walkers are
    checkpointed every ``train.checkpoint_every`` steps, so an evaluation of the same state
    (``tag``: e.g. the training step) continues where an earlier one stopped.
    """
    cfg = run.config
    steps = cfg.eval.steps if steps is None else steps
    names = sorted(observables_of(run, observables)(run.hamiltonian))
    n_devices = check_devices(walkers.shape[0])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), STREAM_EVAL)
    walkers_d = scatter_walkers(jnp.asarray(walkers, run.dtype), n_devices)
    width_d = replicate(jnp.asarray(width, run.dtype), n_devices)
    params_d = replicate(params, n_devices)
    step_fn = eval_program(run, observables)
    tag = {
        **(tag or {}),
        "seed": cfg.train.seed,
        "decorrelation": cfg.eval.decorrelation,
        "precision": cfg.precision,
        "observables": ",".join(names),
    }

    def columns() -> dict[str, jax.ShapeDtypeStruct]:
        keys = device_keys(key, 0, n_devices)
        _, stats = jax.eval_shape(step_fn, params_d, walkers_d, width_d, keys)
        return {n: jax.ShapeDtypeStruct(s.shape[1:], s.dtype) for n, s in stats.items()}

    def step(walkers_d: jax.Array, k: int) -> tuple[jax.Array, dict[str, np.ndarray]]:
        walkers_d, stats = step_fn(params_d, walkers_d, width_d, device_keys(key, k, n_devices))
        return walkers_d, {n: np.asarray(v) for n, v in first_replica(stats).items()}

    drive = Driver(out_dir, "eval", tag=tag, columns=columns)
    saved = drive.resume(
        {"walkers": np.zeros(walkers.shape)},  # another state or settings: start over
        lambda saved: saved["tag"] == tag,
        "evaluating from the first step",
    )
    if saved is not None:
        walkers_d = scatter_walkers(jnp.asarray(saved["walkers"], run.dtype), n_devices)
    drive.run(
        walkers_d,
        step,
        lambda walkers_d: {"walkers": gather_walkers(walkers_d)},
        total=steps,
        every=cfg.train.checkpoint_every,
        label="evaluation step",
        stop=stop,
        progress=progress,
    )
    records = {n: v[:steps] for n, v in drive.rows().items()}
    energies = np.asarray(records["energy"], dtype=np.float64)
    est = estimate(energies)
    variance = float(np.mean(records["energy_sq"]) - np.mean(energies) ** 2)
    extra = {}
    for name in names:
        series = np.asarray(records[name], dtype=np.float64).reshape(steps, -1)
        parts = [estimate(series[:, i]) for i in range(series.shape[1])]
        extra[name] = {"value": [p.mean for p in parts], "error": [p.error for p in parts]}
    return EvalResult(
        energy=est.mean,
        energy_err=est.error,
        variance=variance,
        tau=est.tau,
        steps=steps,
        energies=energies,
        wall_seconds=drive.elapsed(),
        observables=extra,
        records=records,
    )
