"""``nnqmc bench``: compile (or load) time, seconds per training step and per part of it (Metropolis
sampling, local energies, per-walker parameter gradients, SPRING solve; the rest is the
update and the step's bookkeeping),
peak memory and parameter count for one system, as numbers (not a timed test).

Seconds per step are reported against the number of devices (the same total walkers split
over the first 1, 2, 4, ... local devices: strong scaling)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import executables
from .config import LAPLACIANS
from .diffusion import initial_control
from .hamiltonian import batch_nonlocal_of, nonlocal_energy, nonlocal_of
from .optimize import Optimizer, cast_floats, jacobian_blocks, spring_direction
from .parallel import device_count, device_keys, replicate, split_walkers
from .programs import (
    burn_in_program,
    dmc_nonlocal_report,
    dmc_program,
    eval_program,
    train_program,
    with_ecp_points,
)
from .run_setup import Run, initial_walkers
from .steps import TrainState, batch_local_energy, nonlocal_blocks
from .threads import single_threaded_blas


def _peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _seconds(fn, *args, repeat: int = 5) -> float:
    """Median seconds of ``fn(*args)`` over ``repeat`` calls, after one call that compiles."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_parts(run: Run, params: Any, walkers: jax.Array) -> dict[str, float]:
    """Seconds of the main parts of a training step on one device's ``walkers``, each
    part the run's own program (:mod:`nnqmc.programs`) where it is one: the
    step's Metropolis sweeps (``sampler.decorrelation`` of them), local energies (the
    configured Laplacian engine), the per-walker parameter gradients
    O = d log|psi| / d theta (SPRING's Jacobian), and the SPRING solve from O; and a whole
    evaluation step (``eval.decorrelation`` sweeps and the local energies: what one step of
    the evaluation phase, or a training step without its optimiser, costs); and one fixed-node
    DMC step (one drift-diffusion move: log|psi|, its gradient and the local energy at the
    proposals, then the comb), at ``dmc.timestep``'s first value, with DMC's own nonlocal
    rule (``dmc_nonlocal`` in :func:`benchmark`'s result)."""
    cfg = run.config
    energies = jax.jit(
        batch_local_energy(
            run.ansatz, run.hamiltonian, cfg.train.laplacian, cfg.train.local_energy_chunk
        )
    )
    gradient_log_psi = run.gradient_log_psi()
    params_g = cast_floats(params, run.gradient_dtype)
    walkers_g = walkers.astype(run.gradient_dtype)
    jacobian = jax.jit(lambda p, r: jacobian_blocks(gradient_log_psi, p, r))
    o = jacobian(params_g, walkers_g)
    n_params = sum(b.shape[1] for b in o)
    e = energies(params, walkers)
    solve = jax.jit(
        lambda o, e: spring_direction(
            o, e, jnp.zeros(n_params, o[0].dtype), cfg.train.damping, cfg.train.momentum
        )
    )
    width = jnp.asarray(cfg.sampler.initial_width, walkers.dtype)
    key = jax.random.PRNGKey(cfg.train.seed)
    device_args = (replicate(params, 1), walkers[None], width[None], device_keys(key, 0, 1))
    dmc_start, dmc_step = dmc_program(run)
    dmc_walkers = dmc_start(replicate(params, 1), walkers[None])
    dmc_args = (
        replicate(params, 1),
        dmc_walkers,
        initial_control(float(jnp.mean(dmc_walkers.e_local)), 1, walkers.dtype),
        key,
        cfg.dmc.timestep[0],
    )
    return {
        **nonlocal_parts(run, params, walkers),
        "seconds_per_eval_step": _seconds(eval_program(run), *device_args),
        "seconds_per_dmc_step": _seconds(dmc_step, *dmc_args),
        "seconds_per_sampling": _seconds(burn_in_program(run), *device_args),
        "seconds_per_local_energy_batch": _seconds(energies, params, walkers),
        "seconds_per_jacobian": _seconds(jacobian, params_g, walkers_g),
        "seconds_per_spring_solve": _seconds(solve, o, e),
    }


def nonlocal_parts(run: Run, params: Any, walkers: jax.Array) -> dict[str, float]:
    """With an ECP: seconds of the nonlocal term alone over the batch (its quadrature's psi
    ratios for the electron–ECP-atom pairs, compacted to those inside the cutoff as the
    steps evaluate it) with the system's points and with the training's
    (``train.ecp_points``); nothing without one."""
    h = run.hamiltonian
    if nonlocal_of(h) is None:
        return {}
    out = {}
    points = {"": getattr(h, "ecp_points", 12), "_training": run.config.train.ecp_points}
    signed = lambda x: run.ansatz.apply(params, x)
    keys = jax.random.split(jax.random.PRNGKey(0), walkers.shape[0])
    for label, n in points.items():
        h_n = with_ecp_points(h, n)
        term = batch_nonlocal_of(h_n)
        if term is None:
            one = lambda r, key, h_n=h_n: nonlocal_energy(h_n, signed, r, key)
            energies = jax.jit(jax.vmap(one))
        else:
            energies = jax.jit(
                lambda r, k, term=term: jnp.sum(
                    term(signed, r, k, **nonlocal_blocks(r.shape[0], r.shape[0]))[0], (1, 2, 3)
                )
            )
        out[f"seconds_per_nonlocal_energy{label}"] = _seconds(energies, walkers, keys)
    return out


def laplacian_engines(
    run: Run, params: Any, walkers: jax.Array, known: dict[str, float] | None = None
) -> dict[str, float]:
    """Seconds per local-energy batch with each kinetic engine (same chunking), and how
    many times faster the default ``forward`` engine is than ``folx`` (generic folx over
    the whole log|psi|) and ``exact`` (jvp of grad). ``known``: engines already timed."""
    cfg = run.config
    seconds = dict(known or {})
    for engine in (e for e in LAPLACIANS if e not in seconds):
        energies = jax.jit(
            batch_local_energy(run.ansatz, run.hamiltonian, engine, cfg.train.local_energy_chunk)
        )
        seconds[engine] = _seconds(energies, params, walkers)
    return {
        **{f"seconds_per_local_energy_{k}": v for k, v in seconds.items()},
        "laplacian_speedup_over_folx": seconds["folx"] / seconds["forward"],
        "laplacian_speedup_over_exact": seconds["exact"] / seconds["forward"],
    }


def default_device_counts(n_devices: int, walkers: int) -> list[int]:
    """1, 2, 4, ... up to and including ``n_devices``, those that divide ``walkers``."""
    counts = [2**k for k in range(n_devices.bit_length()) if 2**k < n_devices] + [n_devices]
    return [k for k in counts if walkers % k == 0]


FIRST_STEP = ("compile_seconds", "load_seconds")
"""What the first step costs beyond a timed one: its program traced and compiled, or loaded
from the executable store (:mod:`nnqmc.executables`; compiled through the compilation
cache)."""


def time_steps(
    run: Run,
    optimizer: Optimizer,
    params: Any,
    r: jax.Array,
    n_devices: int,
    steps: int,
    key: jax.Array,
) -> dict[str, Any]:
    """One row of :func:`benchmark`'s ``scaling`` on the first ``n_devices`` devices: the
    median seconds per step after a first one, whose extra seconds are ``compile_seconds``
    or, where its program came from the executable store, ``load_seconds``."""
    cfg = run.config
    state = TrainState(
        replicate(params, n_devices),
        replicate(optimizer.init(params), n_devices),
        split_walkers(r, n_devices),
        replicate(jnp.asarray(cfg.sampler.initial_width, run.dtype), n_devices),
    )
    step = train_program(run)
    loaded = executables.loaded()
    t0 = time.perf_counter()
    state, stats = step(state, device_keys(key, 0, n_devices))
    jax.block_until_ready(stats)
    first = time.perf_counter() - t0
    label = "load_seconds" if executables.loaded() > loaded else "compile_seconds"
    times = []
    for k in range(1, steps + 1):
        t0 = time.perf_counter()
        state, stats = step(state, device_keys(key, k, n_devices))
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times)
    return {
        "devices": n_devices,
        "walkers_per_device": r.shape[0] // n_devices,
        "seconds_per_step": per_step,
        label: first - per_step,
    }


@single_threaded_blas
def benchmark(
    run: Run,
    walkers: int,
    steps: int = 10,
    devices: Sequence[int] | None = None,
    laplacians: bool = False,
) -> dict[str, Any]:
    """Time ``steps`` training steps after one warm-up step (which compiles or loads the
    program: :func:`time_steps`), for each device count.

    ``devices``: the numbers of local devices to time (default 1, 2, 4, ..., all); the
    top-level numbers are those of the largest, ``scaling`` has one row per count.
    ``laplacians``: also time the local energies with every kinetic engine
    (:func:`laplacian_engines`).
    """
    cfg = run.config
    available = device_count()
    counts = default_device_counts(available, walkers) if devices is None else list(devices)
    for n in counts:
        if not 1 <= n <= available:
            raise ValueError(f"--devices {n}: this process has {available} devices")
        if walkers % n:
            raise ValueError(f"{walkers} walkers cannot be split over {n} devices")
    if not counts:
        raise ValueError(f"{walkers} walkers cannot be split over {available} devices")
    key = jax.random.PRNGKey(cfg.train.seed)
    params = run.ansatz.init(key)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    optimizer = run.optimizer()
    r = initial_walkers(run, key, walkers)
    scaling = [time_steps(run, optimizer, params, r, n, steps, key) for n in sorted(set(counts))]
    for row in scaling:
        row["speedup"] = scaling[0]["seconds_per_step"] / row["seconds_per_step"]
    n_devices = scaling[-1]["devices"]

    parts = step_parts(run, params, r[: walkers // n_devices])
    if laplacians:
        known = {cfg.train.laplacian: parts["seconds_per_local_energy_batch"]}
        parts.update(laplacian_engines(run, params, r[: walkers // n_devices], known))
    return {
        "system": cfg.name,
        "ansatz": cfg.ansatz.kind,
        "optimizer": cfg.train.optimizer,
        "laplacian": cfg.train.laplacian,
        "precision": cfg.precision,
        "electrons": run.molecule.n_elec,
        "walkers": walkers,
        "devices": n_devices,
        "backend": jax.default_backend(),
        "parameters": int(n_params),
        **{k: v for k, v in scaling[-1].items() if k in FIRST_STEP},
        "seconds_per_step": scaling[-1]["seconds_per_step"],
        **parts,
        "dmc_nonlocal": dmc_nonlocal_report(run),
        "peak_memory_mb": _peak_memory_bytes() / 2**20,
        "timed_steps": steps,
        "scaling": scaling,
    }


def format_table(result: dict[str, Any]) -> str:
    scalars = {k: v for k, v in result.items() if k != "scaling"}
    width = max(len(k) for k in scalars)
    lines = []
    for k, v in scalars.items():
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}}  {text}")
    if result.get("scaling"):
        lines.append("")
        lines.append("devices  walkers/device  s/step    speedup  first step s")
        for row in result["scaling"]:
            (label,) = (k for k in FIRST_STEP if k in row)
            lines.append(
                f"{row['devices']:>7}  {row['walkers_per_device']:>14}  "
                f"{row['seconds_per_step']:<8.4g}  {row['speedup']:<7.3g}  "
                f"{row[label]:.3g} ({label.split('_')[0]})"
            )
    return "\n".join(lines)
