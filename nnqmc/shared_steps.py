"""One network trained on several geometries at once (``[scan] train = "shared"``).

A shared step takes the walkers of ``S`` geometries, ``(S, W, n_elec, 3)`` per device,
and the geometries' arrays (:attr:`nnqmc.run_setup.Run.geometry` of each, stacked along a
leading axis). Each geometry samples with its own Metropolis step width and gets its
local energies, clipped around its own median, and the Jacobian of log|psi| of its
walkers, all from the per-geometry physics vmapped over the geometry axis inside one
pmapped program. Energies and Jacobian rows are centred per geometry (over the walkers
of that geometry on all devices) and the rows of all geometries are stacked into ONE
SPRING update (:func:`nnqmc.optimize.spring_step`): with the joint kernel over all rows
(``scan.shared_kernel = "joint"``), or with one kernel per geometry and the mean of their
directions (``"per_geometry"``, :func:`nnqmc.optimize.per_group_direction`), G times
cheaper to form for G geometries.

Why per-geometry centring: the energy gradient of geometry ``g`` is
``2 <(E_L - E_g)(O - <O>_g)>_g`` with its own mean energy ``E_g``; centring around the mean
over all geometries would weigh every geometry's score by its offset from the others'
energies (Hartrees apart along a dissociation curve) and drown the gradient. With the
rows centred per geometry, ``Ō^T eps`` is the mean over geometries of their energy
gradients, and ``Ō^T Ō`` the mean of their Fisher matrices: the natural gradient of the
mean energy under the summed metric. A constant added to one geometry's energies changes
nothing (tests/test_shared_pes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config_schema import SHARED_KERNELS
from .optimize import (
    AXIS,
    cast_floats,
    clip_local_energies,
    gather_devices,
    jacobian_blocks,
    spring_settings,
    spring_step,
)
from .programs import with_ecp_points
from .run_setup import Run
from .steps import (
    ECP_STREAM,
    _energy_stats,
    _scale_update,
    _select,
    batch_local_energy,
    batch_log_psi,
    finite_step,
    metropolis,
    next_width,
    train_stats,
)

__all__ = [
    "SharedState",
    "centre_per_geometry",
    "clip_per_geometry",
    "selection",
    "shared_train_program",
    "stack_geometries",
    "stacked_rows",
]


class SharedState(NamedTuple):
    """The shared training's state on one device: parameters and optimizer state
    (replicated), walkers ``(G, W_local, n_elec, 3)`` and step widths ``(G,)``."""

    params: Any
    opt_state: Any
    walkers: jax.Array
    width: jax.Array


def stack_geometries(geometries: Sequence[Any]) -> Any:
    """The geometry arrays of several runs of the same shape stacked along a new leading
    axis (NumPy)."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *geometries)


def selection(step: int, n_geometries: int, per_step: int) -> np.ndarray:
    """The geometries of training step ``step``: ``per_step`` of them, round robin (all of
    them, in order, when ``per_step >= n_geometries``)."""
    per_step = min(per_step, n_geometries)
    return (step * per_step + np.arange(per_step)) % n_geometries


def centre_per_geometry(x: jax.Array) -> jax.Array:
    """``x`` (S, W_local, ...) minus its mean over the walkers of each geometry on all
    devices (inside pmap over :data:`AXIS`)."""
    return x - jax.lax.pmean(jnp.mean(x, axis=1, keepdims=True), AXIS)


def clip_per_geometry(e: jax.Array, width: float) -> jax.Array:
    """Local energies ``e`` (S, W_local) clipped around each geometry's own median (over the
    walkers of that geometry on all devices; inside pmap over :data:`AXIS`): a geometry
    Hartrees below the others is not clipped against their median."""
    return jax.vmap(lambda x: clip_local_energies(x, width))(e)


def stacked_rows(
    blocks: Sequence[jax.Array], e_clipped: jax.Array
) -> tuple[list[jax.Array], jax.Array]:
    """Jacobian column blocks (each (S, W_local, P_b)) and clipped energies (S, W_local)
    centred per geometry, then the rows of all geometries of all devices stacked, each
    geometry's W rows (of all devices) together: ``([(S * W, P_b), ...], (S * W,))``, as
    :func:`nnqmc.optimize.spring_direction` takes them (its own centring over all rows
    then changes nothing) and :func:`nnqmc.optimize.per_group_direction` groups them."""
    rows = [gather_devices(centre_per_geometry(b), axis=1) for b in blocks]
    e = gather_devices(centre_per_geometry(e_clipped), axis=1)
    return [b.reshape(-1, b.shape[-1]) for b in rows], e.reshape(-1)


def _shared_step(run: Run, kernel: str) -> Callable[..., tuple[SharedState, dict[str, jax.Array]]]:
    """One device's shared step ``(geometries, state, key, lr_scale, index) -> (state,
    stats)``; ``index``: the geometries (rows of the stacked arrays) this step trains;
    ``kernel``: ``"joint"`` or ``"per_geometry"`` (see the module's docstring)."""
    cfg = run.config
    physics_of = run.physics
    gradient_dtype = run.gradient_dtype if cfg.precision == "mixed" else None
    settings = spring_settings(cfg.train)
    sweeps, clip_width = cfg.sampler.decorrelation, cfg.train.clip_width

    def one(params, geometry, walkers, width, key):
        physics = physics_of(geometry)
        hamiltonian = with_ecp_points(physics.hamiltonian, cfg.train.ecp_points)
        log_psi = batch_log_psi(physics.ansatz)
        walkers, acceptance = metropolis(
            log_psi, params, walkers, width, key, sweeps, physics.step_scale
        )
        energies = batch_local_energy(
            physics.ansatz, hamiltonian, cfg.train.laplacian, cfg.train.local_energy_chunk
        )
        e = energies(params, walkers, jax.random.fold_in(key, ECP_STREAM))
        p, r = params, walkers
        if gradient_dtype is not None:
            p, r = cast_floats(params, gradient_dtype), walkers.astype(gradient_dtype)
        blocks = jacobian_blocks(batch_log_psi(physics.gradient_ansatz or physics.ansatz), p, r)
        new_width = next_width(width, acceptance, cfg.sampler.target_acceptance)
        mean, variance = _energy_stats(e)
        return walkers, e, blocks, acceptance, new_width, mean, variance

    def step(geometries, state: SharedState, key, lr_scale, index):
        params = state.params
        chosen = jax.tree_util.tree_map(lambda x: x[index], geometries)
        keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(index)
        per_geometry = jax.vmap(one, in_axes=(None, 0, 0, 0, 0))
        walkers, e, blocks, acceptance, new_width, mean, variance = per_geometry(
            params, chosen, state.walkers[index], state.width[index], keys
        )
        rows, e_rows = stacked_rows(blocks, clip_per_geometry(e, clip_width))
        groups = index.shape[0] if kernel == "per_geometry" else 1
        new_params, new_opt_state, grad_norm = spring_step(
            params, state.opt_state, rows, e_rows, *settings, groups=groups
        )
        new_params = _scale_update(new_params, params, lr_scale)
        finite = finite_step(e, grad_norm, (new_params, new_opt_state, walkers))
        new_state = SharedState(
            _select(finite, new_params, params),
            _select(finite, new_opt_state, state.opt_state),
            jnp.where(finite, state.walkers.at[index].set(walkers), state.walkers),
            jnp.where(finite, state.width.at[index].set(new_width), state.width),
        )
        return new_state, train_stats(
            mean, variance, acceptance, state.width[index], grad_norm, finite
        )

    return step


def shared_train_program(
    run: Run, geometries: Any, kernel: str = "joint"
) -> Callable[..., tuple[SharedState, dict[str, jax.Array]]]:
    """``step(state, keys, lr_scale, index) -> (state, stats)`` pmapped over the devices:
    the shared step of ``run``'s settings and physics (any geometry of the scan, all of
    the same program key) on the stacked ``geometries`` (:func:`stack_geometries`), with
    SPRING's ``kernel`` (``"joint"`` or ``"per_geometry"``, see the module's docstring). The
    stats hold one value per trained geometry (``energy``, ``variance``, ``acceptance``,
    ``width``) or one for the step (``grad_norm``, ``finite``)."""
    if run.config.train.optimizer != "spring":
        raise ValueError('a shared training needs train.optimizer = "spring"')
    if kernel not in SHARED_KERNELS:
        raise ValueError(f"unknown shared kernel {kernel!r}")
    pmapped = jax.pmap(_shared_step(run, kernel), axis_name=AXIS, in_axes=(None, 0, 0, None, None))
    arrays = jax.tree_util.tree_map(jnp.asarray, geometries)

    def run_step(state: SharedState, keys: jax.Array, lr_scale: float, index: np.ndarray):
        scale = jnp.asarray(lr_scale, jnp.float64)
        return pmapped(arrays, state, keys, scale, jnp.asarray(index, jnp.int32))

    return run_step
