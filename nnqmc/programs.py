"""The compiled steps of a run, shared by every run of the same shape in one process.

A step here is ``pmap``ped over the devices with the run's geometry arrays
(:attr:`nnqmc.run_setup.Run.geometry`: nuclear positions, MO and cusp coefficients, the
nuclear energy) as its first, broadcast argument; the ansatz and Hamiltonian are rebuilt
from them inside the trace. Runs with the same :attr:`~nnqmc.run_setup.Run.program_key`
(same atoms, basis, occupations and settings: the geometries of a scan) therefore reuse
one traced and compiled program: after the first geometry, a scan neither traces nor
compiles again. On top of that the persistent compilation cache (:mod:`nnqmc.compile_cache`)
serves the same programs to the next process.

:func:`compilations` counts the programs built in this process (for tests and benches).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

from .diffusion import DMCControl, DMCWalkers, dmc_step, walker_start
from .executables import StoredProgram
from .external import standard_observables
from .hamiltonian import nonlocal_of
from .optimize import AXIS
from .run_setup import Run, with_nuclei
from .steps import NucleiLogPsi, TrainState, eval_step, sample_step, train_step

__all__ = [
    "ObservablesOf",
    "burn_in_program",
    "clear",
    "compilations",
    "dmc_ecp_points",
    "dmc_nonlocal",
    "dmc_program",
    "eval_program",
    "observables_of",
    "train_program",
    "with_ecp_points",
]

ObservablesOf = Callable[[Any], dict[str, Any]]
"""``hamiltonian -> {name: observable}``: observables built from the (possibly traced)
Hamiltonian's nuclei, so that they follow the geometry (see :func:`observables_of`)."""

_PROGRAMS: OrderedDict[Hashable, Callable[..., Any]] = OrderedDict()
_MAX_PROGRAMS = 16
_built = 0


def compilations() -> int:
    """How many step programs this process has built (each traced, or loaded from disk, and
    compiled once)."""
    return _built


def clear() -> None:
    """Forget the shared programs (the next runs build their own)."""
    _PROGRAMS.clear()


def _key(run: Run, name: Hashable) -> Hashable | None:
    """What names ``run``'s step ``name``, in this process and on disk
    (:mod:`nnqmc.executables`): its program key, which says what the trace depends on
    besides code and versions, and the name; None without a program key."""
    return None if run.program_key is None else (run.program_key, name)


def _shared(run: Run, name: Hashable, make: Callable[[], Callable[..., Any]]) -> Callable:
    """The program ``name`` of runs shaped like ``run``, built by ``make`` if new; bound to
    ``run``'s geometry. Runs without a program key get a program of their own."""
    global _built
    key = _key(run, name)
    program = _PROGRAMS.get(key) if key is not None else None
    if program is None:
        program = make()
        _built += 1
        if key is not None:
            _PROGRAMS[key] = program
            while len(_PROGRAMS) > _MAX_PROGRAMS:
                _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    if run.geometry is None:  # not an empty pytree: pmap would misplace its in_axes
        geometry = jnp.zeros(())
    else:
        geometry = jax.tree_util.tree_map(jnp.asarray, run.geometry)
    return functools.partial(program, geometry)


def train_program(run: Run) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, keys, lr_scale=1.0) -> (state, stats)``: :func:`nnqmc.steps.train_step`
    with the run's settings on every device."""
    cfg = run.config
    physics_of = run.physics

    def make() -> Callable[..., Any]:
        def step(geometry, state, key, lr_scale):
            physics = physics_of(geometry)
            one = train_step(
                physics.ansatz,
                with_ecp_points(physics.hamiltonian, cfg.train.ecp_points),
                run.optimizer_for(physics),
                sweeps=cfg.sampler.decorrelation,
                clip_width=cfg.train.clip_width,
                target_acceptance=cfg.sampler.target_acceptance,
                engine=cfg.train.laplacian,
                chunk=cfg.train.local_energy_chunk,
                step_scale=physics.step_scale,
            )
            return one(state, key, lr_scale)

        pmapped = StoredProgram(
            jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0, None)), _key(run, "train")
        )

        def run_step(geometry, state: TrainState, keys: jax.Array, lr_scale: float = 1.0):
            return pmapped(geometry, state, keys, jnp.asarray(lr_scale, jnp.float64))

        return run_step

    return _shared(run, "train", make)


def with_ecp_points(hamiltonian: Any, ecp_points: int) -> Any:
    """``hamiltonian`` with ``ecp_points`` quadrature points for its nonlocal term (0, or no
    ECP: itself). Under the random rotation every rule gives the angular integral without
    bias; fewer points only add variance to the local energies (training's, DMC's)."""
    if not ecp_points or getattr(hamiltonian, "ecp", None) is None:
        return hamiltonian
    if not dataclasses.is_dataclass(hamiltonian) or not hasattr(hamiltonian, "ecp_points"):
        return hamiltonian
    return dataclasses.replace(hamiltonian, ecp_points=ecp_points)


def burn_in_program(run: Run) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array]]:
    """``step(params, walkers, width, keys) -> (walkers, width, acceptance)``: Metropolis
    sweeps with the step width adapted, parameters frozen."""
    cfg = run.config.sampler
    physics_of = run.physics

    def make() -> Callable[..., Any]:
        def step(geometry, params, walkers, width, key):
            physics = physics_of(geometry)
            one = sample_step(
                physics.ansatz,
                sweeps=cfg.decorrelation,
                target_acceptance=cfg.target_acceptance,
                step_scale=physics.step_scale,
            )
            return one(params, walkers, width, key)

        return StoredProgram(
            jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0, 0, 0)), _key(run, "burn-in")
        )

    return _shared(run, "burn-in", make)


def observables_of(run: Run, extra: dict[str, Any] | ObservablesOf | None) -> ObservablesOf:
    """``hamiltonian -> observables`` of an evaluation: the dipole moment unless
    ``eval.dipole = false``, then ``extra`` (a dict, or a function of the Hamiltonian)."""
    dipole = run.config.eval.dipole

    def of(hamiltonian: Any) -> dict[str, Any]:
        own = standard_observables(hamiltonian) if dipole else {}
        more = extra(hamiltonian) if callable(extra) else (extra or {})
        return {**own, **more}

    return of


def _nuclei(physics_of: Callable[[Any], Any], geometry: Any) -> tuple[Any, NucleiLogPsi] | None:
    """The nuclei of a molecular run's geometry and ``(params, coords, r) -> log|psi|``
    with them moved to ``coords`` (:func:`~nnqmc.run_setup.with_nuclei`); None without."""
    if not (isinstance(geometry, dict) and "coords" in geometry):
        return None

    def log_psi_at(params: Any, coords: jax.Array, r: jax.Array) -> jax.Array:
        return physics_of(with_nuclei(geometry, coords)).ansatz.log_psi(params, r)

    return geometry["coords"], log_psi_at


def eval_program(
    run: Run, extra: dict[str, Any] | ObservablesOf | None = None
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``step(params, walkers, width, keys) -> (walkers, stats)``: frozen parameters, the
    local energy and the observables of :func:`observables_of`. Only a function of the
    Hamiltonian (or nothing) for ``extra`` lets runs share the program: a dict's
    observables are closed over and belong to this run."""
    cfg = run.config
    physics_of = run.physics
    if isinstance(extra, dict) and not extra:
        extra = None
    of = observables_of(run, extra)

    def make() -> Callable[..., Any]:
        def step(geometry, params, walkers, width, key):
            physics = physics_of(geometry)
            one = eval_step(
                physics.ansatz,
                physics.hamiltonian,
                sweeps=cfg.eval.decorrelation,
                engine=cfg.train.laplacian,
                chunk=cfg.train.local_energy_chunk,
                observables=of(physics.hamiltonian),
                step_scale=physics.step_scale,
                nuclei=_nuclei(physics_of, geometry),
            )
            return one(params, walkers, width, key)

        stored = _key(run, "eval") if extra is None else None
        return StoredProgram(jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0, 0, 0)), stored)

    if isinstance(extra, dict) and extra:
        return _shared(dataclasses.replace(run, program_key=None), "eval", make)
    return _shared(run, ("eval", extra), make)


def dmc_program(run: Run) -> tuple[Callable[..., DMCWalkers], Callable[..., Any]]:
    """``(start, step)`` of fixed-node DMC with ``dmc.nonlocal_scheme``: ``start(params, r)
    -> walkers`` (:func:`nnqmc.diffusion.walker_start`) and ``step(params, walkers, control,
    key, tau) -> (walkers, control, stats)`` (:func:`nnqmc.diffusion.dmc_step`). The time
    step is an argument: every τ of a series runs the same program. The scheme names the
    programs only where there is a nonlocal term (an ECP) for it to act on."""
    engine, scheme = run.config.train.laplacian, run.config.dmc.nonlocal_scheme
    points = run.config.dmc.ecp_points
    physics_of = run.physics
    start_name, step_name = _dmc_names(run)

    def make_start() -> Callable[..., Any]:
        def start(geometry, params, r):
            physics = physics_of(geometry)
            hamiltonian = with_ecp_points(physics.hamiltonian, points)
            return walker_start(physics.ansatz, hamiltonian, engine, scheme)(params, r)

        pmapped = jax.pmap(start, axis_name=AXIS, in_axes=(None, 0, 0))
        return StoredProgram(pmapped, _key(run, start_name))

    def make_step() -> Callable[..., Any]:
        def step(geometry, params, walkers, control, key, tau):
            physics = physics_of(geometry)
            hamiltonian = with_ecp_points(physics.hamiltonian, points)
            one = dmc_step(physics.ansatz, hamiltonian, engine=engine, nonlocal_mode=scheme)
            return one(params, walkers, control, key, tau)

        in_axes = (None, 0, 0, 0, None, None)
        pmapped = StoredProgram(
            jax.pmap(step, axis_name=AXIS, in_axes=in_axes), _key(run, step_name)
        )

        def run_step(geometry, params, walkers: DMCWalkers, control: DMCControl, key, tau):
            return pmapped(geometry, params, walkers, control, key, jnp.asarray(tau, jnp.float64))

        return run_step

    start = _shared(run, start_name, make_start)
    return start, _shared(run, step_name, make_step)


def _dmc_names(run: Run) -> tuple[Hashable, Hashable]:
    """The names of DMC's start and step programs: with ``dmc.nonlocal_scheme`` and the
    quadrature's points where the run has a nonlocal term, else without (they change
    nothing there)."""
    if nonlocal_of(run.hamiltonian) is None:
        return ("dmc-start",), ("dmc",)
    scheme = run.config.dmc.nonlocal_scheme
    points = dmc_ecp_points(run)
    return ("dmc-start", scheme, points), ("dmc", scheme, points)


def dmc_nonlocal(run: Run) -> dict[str, Any] | None:
    """How DMC treats the run's ECP nonlocal term (``scheme``, ``ecp_points``); None
    without an ECP. It names a DMC checkpoint and is reported in result.json."""
    if getattr(run.hamiltonian, "ecp", None) is None:
        return None
    return {"nonlocal_scheme": run.config.dmc.nonlocal_scheme, "ecp_points": dmc_ecp_points(run)}


def dmc_nonlocal_report(run: Run) -> dict[str, Any] | None:
    """:func:`dmc_nonlocal` as result.json and ``nnqmc bench`` report it: ``scheme``,
    ``ecp_points``."""
    settings = dmc_nonlocal(run)
    if settings is None:
        return None
    return {"scheme": settings["nonlocal_scheme"], "ecp_points": settings["ecp_points"]}


def dmc_ecp_points(run: Run) -> int | None:
    """The points of DMC's nonlocal quadrature: ``dmc.ecp_points``, or the system's (0);
    None for a Hamiltonian without a rule to set (a custom nonlocal term)."""
    used = with_ecp_points(run.hamiltonian, run.config.dmc.ecp_points)
    return getattr(used, "ecp_points", None)
