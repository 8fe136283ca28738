"""The diffusion Monte Carlo phase: fixed-node DMC on a trained wavefunction, one block of
equilibration and production steps per time step, checkpointed and resumable (:func:`dmc`).

The compiled step is :func:`nnqmc.programs.dmc_program`'s (one for every geometry of a scan
and every time step); this module gives it to the loop
(:class:`nnqmc.driver.Driver`, which logs each step to dmc.h5 and checkpoints) with the
schedule over time steps, a new key for a retried non-finite step, the energy of each time
step by a blocking analysis, and the τ -> 0 extrapolation.

After every step all walkers carry the same weight (the comb), so a checkpoint holds the
walkers' positions; the weight and the population-control state come back from the last
row of the log; sign, log|ψ|, drift and local energy are recomputed from the positions with
the same functions, so a resumed run gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion import DMCControl, extrapolate_timestep, line_chi2_per_dof
from ..driver import Driver, NanGuard
from ..errors import RunError
from ..estimate import estimate
from ..parallel import first_replica, gather_walkers, replicate, scatter_walkers
from ..programs import dmc_nonlocal, dmc_program
from ..run_setup import STREAM_DMC, Run, check_devices
from ..rundir import Progress, StopCheck, warn
from ..threads import single_threaded_blas

__all__ = ["DMCResult", "dmc", "dmc_schedule"]

COLUMNS = {
    "timestep": np.float64,
    "energy": np.float64,
    "total_weight": np.float64,
    "acceptance": np.float64,
    "tau_eff": np.float64,
    "e_ref": np.float64,
    "n_nonfinite": np.int64,
    "t_moves": np.float64,
    "e_ref_next": np.float64,
    "e_avg": np.float64,
    "production": np.int8,
    "wall_time": np.float64,
}
"""The columns of dmc.h5, one row per step (``e_ref``: the reference energy the step used;
``e_ref_next``, ``e_avg``: the population-control state after it; ``total_weight``: Σw / W
before resampling; ``production``: 0 for equilibration steps; ``t_moves``: electrons moved
by T-moves per walker, 0 without an ECP or in the locality approximation)."""


@dataclass
class DMCResult:
    """``energy`` ± ``energy_err``: extrapolated to τ -> 0 when there are several time
    steps; ``rows``: one per time step; ``records``: one row per step (dmc.h5)."""

    energy: float
    energy_err: float
    slope: float
    chi2_per_dof: float | None
    rows: list[dict[str, float]]
    steps: int
    walkers: int
    wall_seconds: float
    records: dict[str, np.ndarray] = field(default_factory=dict)


def dmc_schedule(timesteps: list[float], equilibration: int, steps: int) -> np.ndarray:
    """The time step of every DMC step, in order: each τ for ``equilibration`` + ``steps``."""
    return np.repeat(np.asarray(timesteps, np.float64), equilibration + steps)


def timestep_rows(
    records: dict[str, np.ndarray], timesteps: list[float], equilibration: int, steps: int
) -> list[dict[str, float]]:
    """One row per time step from the per-step records (production steps only)."""
    rows = []
    block = equilibration + steps
    for j, tau in enumerate(timesteps):
        part = slice(j * block + equilibration, (j + 1) * block)
        est = estimate(np.asarray(records["energy"][part], np.float64))
        rows.append(
            {
                "timestep": float(tau),
                "energy": est.mean,
                "energy_err": est.error,
                "autocorrelation_time": est.tau,
                "acceptance": float(np.mean(records["acceptance"][part])),
                "timestep_eff": float(np.mean(records["tau_eff"][part])),
                "steps": int(steps),
            }
        )
    return rows


def _start_walkers(walkers: np.ndarray, n_walkers: int) -> np.ndarray:
    """``n_walkers`` of the VMC walkers (repeated in order if more are asked for)."""
    return np.asarray(walkers)[np.arange(n_walkers) % walkers.shape[0]]


@single_threaded_blas
def dmc(
    run: Run,
    params: Any,
    walkers: np.ndarray,
    *,
    timesteps: list[float] | None = None,
    steps: int | None = None,
    equilibration: int | None = None,
    n_walkers: int | None = None,
    energy: float | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    tag: dict[str, Any] | None = None,
    stop: StopCheck | None = None,
) -> DMCResult:
    """Fixed-node DMC from the VMC ``walkers`` of the trained ``params``.

    Defaults come from the run's ``[dmc]`` section; ``n_walkers`` (default: all of
    ``walkers``) is the fixed population; ``energy`` (default: the mean local energy of
    the starting walkers) starts the reference energy. With ``out_dir``, every step is
    appended to dmc.h5 and the walkers are checkpointed every ``train.checkpoint_every``
    steps, so a DMC of the same trained state and settings (``tag``) continues where an
    earlier one stopped; a longer schedule extends it.
    """
    cfg = run.config.dmc
    timesteps = sorted(cfg.timestep if timesteps is None else timesteps, reverse=True)
    steps = cfg.steps if steps is None else steps
    equilibration = cfg.equilibration if equilibration is None else equilibration
    n_walkers = n_walkers or cfg.walkers or walkers.shape[0]
    n_devices = check_devices(n_walkers)
    schedule = dmc_schedule(timesteps, equilibration, steps)
    total = len(schedule)
    key = jax.random.fold_in(jax.random.PRNGKey(run.config.train.seed), STREAM_DMC)
    start_fn, step_fn = dmc_program(run)
    params_d = replicate(params, n_devices)
    positions = _start_walkers(walkers, n_walkers)
    tag = {
        **(tag or {}),
        "seed": run.config.train.seed,
        "walkers": n_walkers,
        "precision": run.config.precision,
        "equilibration": equilibration,
        **(dmc_nonlocal(run) or {}),
    }
    guard = NanGuard(
        cfg.max_bad_steps,
        "dmc.max_bad_steps",
        "DMC",
        "non-finite DMC energy or weights",
        "nothing",
        finite=lambda row: bool(np.isfinite(row["energy"]) and np.isfinite(row["total_weight"])),
        retry=True,
    )
    columns = {n: jax.ShapeDtypeStruct((), dtype) for n, dtype in COLUMNS.items()}
    drive = Driver(out_dir, "dmc", tag=tag, guard=guard, columns=lambda: columns)
    saved = drive.resume(
        {"walkers": np.zeros(positions.shape)},
        _continues(tag, schedule, getattr(run.hamiltonian, "ecp_points", None)),
        "running DMC from its first step",
    )
    if saved is not None:
        positions = saved["walkers"]
    walkers_d = start_fn(params_d, scatter_walkers(jnp.asarray(positions, run.dtype), n_devices))
    if drive.start == 0:
        e0 = np.asarray(gather_walkers(walkers_d.e_local))
        if not np.all(np.isfinite(e0)):
            raise RunError("DMC: a starting walker has a non-finite local energy")
        e_ref = float(np.mean(e0)) if energy is None else float(energy)
        control = DMCControl(
            jnp.asarray(e_ref, run.dtype), jnp.asarray(e_ref, run.dtype), jnp.asarray(0, jnp.int32)
        )
    else:
        last = {n: float(v[-1]) for n, v in drive.history.items()}
        weight = last["total_weight"]
        walkers_d = walkers_d._replace(weight=jnp.full_like(walkers_d.weight, weight))
        control = DMCControl(
            jnp.asarray(last["e_ref_next"], run.dtype),
            jnp.asarray(last["e_avg"], run.dtype),
            jnp.asarray(drive.start, jnp.int32),
        )

    def step(state: tuple[Any, DMCControl], k: int) -> tuple[Any, dict[str, np.ndarray]]:
        walkers_d, control_d = state
        step_key = jax.random.fold_in(jax.random.fold_in(key, k), guard.in_row)  # a retry
        walkers_d, control_d, stats = step_fn(
            params_d, walkers_d, control_d, step_key, float(schedule[k])
        )
        control_now = first_replica(control_d)
        values = {
            **{n: np.asarray(v) for n, v in first_replica(stats).items()},
            "timestep": schedule[k],
            "e_ref_next": control_now.e_ref,
            "e_avg": control_now.e_avg,
            "production": _is_production(k, equilibration, steps),
        }
        row = {n: np.asarray(values[n], dtype) for n, dtype in COLUMNS.items() if n in values}
        return (walkers_d, control_d), row

    drive.run(
        (walkers_d, replicate(control, n_devices)),
        step,
        lambda state: {"walkers": gather_walkers(state[0].r)},
        total=total,
        every=run.config.train.checkpoint_every,
        label="DMC step",
        stop=stop,
        progress=progress,
        timed=True,
    )
    records = drive.rows()
    rows = timestep_rows(records, timesteps, equilibration, steps)
    fit = [np.array([r[k] for r in rows]) for k in ("timestep", "energy", "energy_err")]
    e0, err0, slope = extrapolate_timestep(*fit)
    return DMCResult(
        energy=e0,
        energy_err=err0,
        slope=slope,
        chi2_per_dof=line_chi2_per_dof(*fit, e0, slope),
        rows=rows,
        steps=total,
        walkers=n_walkers,
        wall_seconds=drive.elapsed(),
        records=records,
    )


def _is_production(k: int, equilibration: int, steps: int) -> bool:
    return k % (equilibration + steps) >= equilibration


def _continues(tag: dict[str, Any], schedule: np.ndarray, system_points: int | None = None):
    """Whether a saved DMC continues this one: the same trained state and settings (``tag``),
    and its steps so far ran the same time steps as the start of ``schedule`` (so a longer
    last block, or more time steps after the saved ones, extend it). A saved ECP tag
    without ``ecp_points`` (written before DMC had its own rule) used the system's."""

    def accept(saved: dict[str, Any]) -> bool:
        done = saved["history"].get("timestep", np.zeros(0))
        saved_tag = dict(saved["tag"])
        if "nonlocal_scheme" in saved_tag and "ecp_points" not in saved_tag:
            saved_tag["ecp_points"] = system_points
        same = (
            saved_tag == tag
            and len(done) == saved["step"] <= len(schedule)
            and np.array_equal(done, schedule[: len(done)])
        )
        if not same:
            warn("the saved DMC belongs to other settings; running DMC from its first step")
        return same

    return accept
