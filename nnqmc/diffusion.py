"""Fixed-node diffusion Monte Carlo: the jitted, pmapped step and its pieces (docs/dmc.md).

A fixed population of ``W`` weighted walkers. Each step proposes R' = R + v̄ τ + sqrt(τ) χ
with the drift v = ∇ log|ψ| limited per electron (Umrigar, Nightingale & Runge, J. Chem.
Phys. 99, 2865 (1993)): v̄ = v (-1 + sqrt(1 + 2 a v² τ)) / (a v² τ), a = 1; accepts it with the
Metropolis–Hastings probability p of the drift–diffusion Green's function, p = 0 where the
sign of ψ changes (fixed node); and multiplies the weight by

    w <- w exp(τ_eff [p (S(R') + S(R)) / 2 + (1 - p) S(R)]),   S = E_ref - E_L,

E_L limited to E_avg ± 0.2 sqrt(N_elec / τ) in S only (Zen et al., Phys. Rev. B 93, 241118
(2016)), τ_eff = τ <p |χ|²> / <|χ|²>. A comb draws ``W`` walkers ∝ w, each with weight Σw/W,
and E_ref = E_avg - log(Σw / W) / (T_fb τ) controls the population. Random numbers come
from each walker's index in the whole population and sums are taken over the gathered
population, so 1 and several devices give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .ansatz import Ansatz
from .ecp import configuration_key, t_move_choice
from .hamiltonian import Hamiltonian, electron_nonlocal_of, nonlocal_of
from .optimize import AXIS
from .steps import batch_local_jet, batch_local_jet_elements

ENERGY_CUTOFF_ALPHA = 0.2
"""``E_cut = α sqrt(N_elec / τ)`` (Zen et al. 2016)."""

FEEDBACK_STEPS = 10.0
"""Steps over which the population-control feedback restores the total weight."""

AVERAGE_STEPS = 100
"""Memory (steps) of the running energy average ``E_avg`` used by the feedback."""


class DMCWalkers(NamedTuple):
    """One device's walkers and what the next step needs of them (leading axis: walkers).

    With T-moves, ``elements`` (n_elec, n_points) and ``targets`` (n_elec, n_points, 3) are
    the nonlocal elements the local energy summed and where they lead; None without."""

    r: jax.Array
    sign: jax.Array
    log_psi: jax.Array
    grad: jax.Array
    e_local: jax.Array
    weight: jax.Array
    elements: jax.Array | None = None
    targets: jax.Array | None = None


class DMCControl(NamedTuple):
    """Replicated scalars of the population: reference and running average energies, and
    the number of steps the average has seen."""

    e_ref: jax.Array
    e_avg: jax.Array
    count: jax.Array


def limited_drift(grad: jax.Array, tau: float | jax.Array, a: float = 1.0) -> jax.Array:
    """Per-electron drift ``v (-1 + sqrt(1 + 2 a v² τ)) / (a v² τ)`` for ``grad`` (..., 3).

    Tends to ``v`` where ``a v² τ -> 0`` and has length at most ``sqrt(2 / (a τ))``.
    """
    v2 = jnp.sum(grad * grad, axis=-1, keepdims=True)
    x = a * v2 * tau
    safe = jnp.where(x > 1e-8, x, 1.0)
    factor = jnp.where(x > 1e-8, (jnp.sqrt(1.0 + 2.0 * safe) - 1.0) / safe, 1.0 - 0.5 * x)
    return grad * factor


def energy_cutoff(n_elec: int, tau: float | jax.Array) -> jax.Array:
    """The limit on ``|E_L - E_avg|`` in the branching factor."""
    return ENERGY_CUTOFF_ALPHA * jnp.sqrt(n_elec / tau)


def comb_indices(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Systematic resampling: ``W`` indices drawn with probabilities ``weights / Σ weights``
    by one comb of ``W`` evenly spaced teeth shifted by ``u`` in [0, 1).

    Walker ``i`` is drawn ``floor`` or ``ceil`` of ``W w_i / Σw`` times, so every weighted
    mean over the population is kept in expectation.
    """
    n = weights.shape[0]
    cumulative = jnp.cumsum(weights)
    teeth = (u + jnp.arange(n, dtype=weights.dtype)) * (cumulative[-1] / n)
    return jnp.minimum(jnp.searchsorted(cumulative, teeth, side="right"), n - 1)


def reference_energy(e_avg: jax.Array, total_weight: jax.Array, n_walkers: int, tau) -> jax.Array:
    """``E_avg - log(Σw / W) / (T_fb τ)``: population-control feedback."""
    return e_avg - jnp.log(total_weight / n_walkers) / (FEEDBACK_STEPS * tau)


def batch_sign(ansatz: Ansatz) -> Callable[[Any, jax.Array], jax.Array]:
    """Batched ``(params, r) -> sign ψ`` (one forward pass)."""
    return jax.vmap(lambda params, r: ansatz.apply(params, r)[0], in_axes=(None, 0))


def _gather(x: jax.Array) -> jax.Array:
    return jax.lax.all_gather(x, AXIS, tiled=True)


def _walker_keys(key: jax.Array, n_local: int) -> jax.Array:
    first = jax.lax.axis_index(AXIS) * n_local
    return jax.vmap(lambda g: jax.random.fold_in(key, g))(first + jnp.arange(n_local))


def _local_slice(x: jax.Array, n_local: int) -> jax.Array:
    start = jax.lax.axis_index(AXIS) * n_local
    return jax.lax.dynamic_slice_in_dim(x, start, n_local)


ROTATION_KEY = 104729
"""Seeds the ECP quadrature's rotations in DMC, hashed with each configuration
(:func:`nnqmc.ecp.configuration_key`): a walker's local energy is a function of its
position, so a resumed run recomputes the stored one bit for bit."""


def configuration_keys(r: jax.Array) -> jax.Array:
    """One quadrature key per walker of ``r`` (n_walkers, n_elec, 3)."""
    base = jax.random.PRNGKey(ROTATION_KEY)
    return jax.vmap(configuration_key, in_axes=(None, 0))(base, r)


def walker_start(
    ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str = "forward", nonlocal_mode: str = "tmoves"
) -> Callable[[Any, jax.Array], DMCWalkers]:
    """One device's ``(params, r) -> DMCWalkers`` with unit weights (start of a DMC run)."""
    signs = batch_sign(ansatz)
    if _uses_t_moves(hamiltonian, nonlocal_mode):
        jets = batch_local_jet_elements(ansatz, hamiltonian, engine)

        def start(params, r):
            log_psi, grad, e, elements, targets = jets(params, r, configuration_keys(r))
            one = jnp.ones_like(e)
            return DMCWalkers(r, signs(params, r), log_psi, grad, e, one, elements, targets)

    else:
        local_jets = batch_local_jet(ansatz, hamiltonian, engine)

        def start(params, r):
            log_psi, grad, e = local_jets(params, r, configuration_keys(r))
            return DMCWalkers(r, signs(params, r), log_psi, grad, e, jnp.ones_like(e))

    return start


SUBSET_FRACTION = 8
"""T-moves move few walkers per step (a few per cent in H2O with ccECP at τ = 0.05): what
must be recomputed for them is computed for ``ceil(W / SUBSET_FRACTION)`` walkers, or for
all ``W`` in a step where more moved (:func:`on_subset`)."""


def per_walker(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` where the walker's ``mask`` (leading axis) is set, else ``old``."""
    return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def on_subset(
    fn: Callable[..., Any],
    mask: jax.Array,
    args: tuple[jax.Array, ...],
    default: Any,
    capacity: int,
) -> Any:
    """``where(mask, fn(*args), default)`` per walker (leading axis), evaluating ``fn`` on
    only ``capacity`` walkers, those of ``mask`` first, when no more than ``capacity`` are
    in ``mask``; on all of them otherwise. ``fn`` maps a batch to a pytree like ``default``."""
    n = mask.shape[0]

    def everyone(_):
        out = fn(*args)
        return jax.tree_util.tree_map(lambda new, old: per_walker(mask, new, old), out, default)

    if capacity >= n:
        return everyone(None)
    chosen = jnp.argsort(jnp.logical_not(mask), stable=True)[:capacity]

    def some(_):
        out = fn(*(a[chosen] for a in args))
        take = mask[chosen]
        return jax.tree_util.tree_map(
            lambda new, old: old.at[chosen].set(per_walker(take, new, old[chosen])), out, default
        )

    return jax.lax.cond(jnp.sum(mask) <= capacity, some, everyone, None)


def _uses_t_moves(hamiltonian: Hamiltonian, nonlocal_mode: str) -> bool:
    if nonlocal_mode not in NONLOCAL_MODES:
        raise ValueError(f"nonlocal_mode must be one of {NONLOCAL_MODES}, not {nonlocal_mode!r}")
    return nonlocal_mode == "tmoves" and nonlocal_of(hamiltonian) is not None


NONLOCAL_MODES = ("tmoves", "locality")
"""How DMC treats a nonlocal (ECP) potential: size-consistent T-moves (the default), or the
locality approximation (the nonlocal term only in the local energy)."""


def dmc_step(
    ansatz: Ansatz,
    hamiltonian: Hamiltonian,
    *,
    engine: str = "forward",
    drift_a: float = 1.0,
    nonlocal_mode: str = "tmoves",
) -> Callable[..., tuple[DMCWalkers, DMCControl, dict[str, jax.Array]]]:
    """One device's ``step(params, walkers, control, key, tau) -> (walkers, control, stats)``
    (inside ``pmap`` over the axis :data:`AXIS`).

    ``key`` and ``tau`` are the same on every device. ``stats`` (replicated): ``energy``
    (the step's weighted mixed estimate), ``total_weight`` (Σw before resampling, over W),
    ``acceptance``, ``tau_eff``, ``e_ref``, ``n_nonfinite`` (proposals rejected for a
    non-finite local energy or log|ψ|), ``t_moves`` (electrons moved by T-moves per walker).

    With a nonlocal potential and ``nonlocal_mode = "tmoves"`` the walkers, after the
    drift-diffusion move and its branching factor, make one sweep of T-moves
    (:func:`nnqmc.ecp.t_move_choice`), and their local energies are computed anew where they
    moved; the branching keeps the full local energy (its nonlocal part included), whose
    diagonal part and the T-moves' normalisation agree to O(τ²) per step.
    """
    t_moves = _uses_t_moves(hamiltonian, nonlocal_mode)
    signs = batch_sign(ansatz)
    n_elec = ansatz.n_up + ansatz.n_down
    if t_moves:
        jets = batch_local_jet_elements(ansatz, hamiltonian, engine)
    else:
        local_jets = batch_local_jet(ansatz, hamiltonian, engine)
        jets = lambda params, r, keys: (*local_jets(params, r, keys), None, None)

    def signed_jets(params, r, keys):
        return signs(params, r), *jets(params, r, keys)

    def step(params, walkers: DMCWalkers, control: DMCControl, key, tau):
        n_local = walkers.r.shape[0]
        dtype = walkers.r.dtype
        tau = tau.astype(dtype)
        keys = _walker_keys(jax.random.fold_in(key, 0), n_local)
        noise = jax.vmap(lambda k: jax.random.normal(k, walkers.r.shape[1:], dtype))(keys)
        u_accept = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (), dtype))(keys)
        drift = limited_drift(walkers.grad, tau, drift_a)
        proposal = walkers.r + drift * tau + jnp.sqrt(tau) * noise
        sign_new, log_psi_new, grad_new, e_new, elements_new, targets_new = signed_jets(
            params, proposal, configuration_keys(proposal)
        )
        drift_back = limited_drift(grad_new, tau, drift_a)
        forward = jnp.sum((proposal - walkers.r - drift * tau) ** 2, axis=(1, 2))
        backward = jnp.sum((walkers.r - proposal - drift_back * tau) ** 2, axis=(1, 2))
        log_ratio = 2.0 * (log_psi_new - walkers.log_psi) + (forward - backward) / (2.0 * tau)
        finite = jnp.isfinite(e_new) & jnp.isfinite(log_psi_new)
        finite &= jnp.all(jnp.isfinite(grad_new), axis=(1, 2))
        same_side = sign_new == walkers.sign
        p = jnp.where(finite & same_side, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
        accept = u_accept < p

        chi2 = jnp.sum(noise * noise, axis=(1, 2))
        g_p, g_chi2, g_w = _gather(p), _gather(chi2), _gather(walkers.weight)
        tau_eff = tau * jnp.sum(g_w * g_p * g_chi2) / jnp.sum(g_w * g_chi2)

        cutoff = energy_cutoff(n_elec, tau)
        e_new_safe = jnp.where(finite, e_new, walkers.e_local)

        def limited(e):
            return jnp.clip(e, control.e_avg - cutoff, control.e_avg + cutoff)

        s_old = control.e_ref - limited(walkers.e_local)
        s_new = control.e_ref - limited(e_new_safe)
        log_branch = tau_eff * (p * 0.5 * (s_new + s_old) + (1.0 - p) * s_old)
        weight = walkers.weight * jnp.exp(log_branch)
        e_mixed = p * e_new_safe + (1.0 - p) * walkers.e_local

        kept = lambda new, old: per_walker(accept, new, old)
        moved = DMCWalkers(
            kept(proposal, walkers.r),
            kept(sign_new, walkers.sign),
            kept(log_psi_new, walkers.log_psi),
            kept(grad_new, walkers.grad),
            kept(e_new_safe, walkers.e_local),
            weight,
            None if elements_new is None else kept(elements_new, walkers.elements),
            None if targets_new is None else kept(targets_new, walkers.targets),
        )
        n_moved = jnp.zeros((n_local,), jnp.int32)
        if t_moves:
            moved, n_moved = _t_moves(moved, keys, tau, params)
        population = jax.tree_util.tree_map(_gather, moved)
        g_weight, g_mixed = population.weight, _gather(e_mixed)
        n_total = g_weight.shape[0]
        total = jnp.sum(g_weight)
        energy = jnp.sum(g_weight * g_mixed) / total

        u_comb = jax.random.uniform(jax.random.fold_in(key, 1), (), dtype)
        chosen = _local_slice(comb_indices(g_weight, u_comb), n_local)
        resampled = jax.tree_util.tree_map(lambda x: x[chosen], population)
        resampled = resampled._replace(weight=jnp.full((n_local,), total / n_total, dtype))

        count = control.count + 1
        memory = jnp.minimum(count, AVERAGE_STEPS).astype(dtype)
        e_avg = control.e_avg + (energy - control.e_avg) / memory
        e_ref = reference_energy(e_avg, total, n_total, tau)
        stats = {
            "energy": energy,
            "total_weight": total / n_total,
            "acceptance": jnp.sum(_gather(accept.astype(dtype))) / n_total,
            "tau_eff": tau_eff,
            "e_ref": control.e_ref,
            "n_nonfinite": jnp.sum(_gather((~finite).astype(jnp.int32))),
            "t_moves": jnp.sum(_gather(n_moved).astype(dtype)) / n_total,
        }
        return resampled, DMCControl(e_ref, e_avg, count), stats

    def _t_moves(walkers: DMCWalkers, keys, tau, params) -> tuple[DMCWalkers, jax.Array]:
        """One size-consistent sweep of T-moves (:func:`nnqmc.ecp.t_move_choice` for each
        electron in turn), then the local jets where it moved (a walker whose new local
        energy is not finite stays where it was). An electron chooses from the elements
        its walker's local energy summed until an electron before it has moved; only the
        walkers where one has are recomputed, and only they need new local jets."""
        if walkers.elements is None:
            raise ValueError(
                "these walkers hold no nonlocal elements: make them with "
                'make_walkers(..., nonlocal_mode="tmoves")'
            )
        n_local = walkers.r.shape[0]
        capacity = -(-n_local // SUBSET_FRACTION)
        signed = lambda x: ansatz.apply(params, x)
        electron_term = electron_nonlocal_of(hamiltonian)
        sweep_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)

        def electron(i, carry):
            r, count = carry
            k_i = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i)))(sweep_keys)

            def fresh(r_batch, k_batch):
                one = lambda x, k: electron_term(signed, x, i, k)
                return jax.vmap(one)(r_batch, k_batch)

            cached = (walkers.elements[:, i], walkers.targets[:, i])
            elements, targets = on_subset(fresh, count > 0, (r, k_i[:, 0]), cached, capacity)
            u = jax.vmap(lambda k: jax.random.uniform(k, (), r.dtype))(k_i[:, 1])
            choose = jax.vmap(t_move_choice, in_axes=(0, 0, 0, 0, None))
            position, move = choose(elements, targets, r[:, i], u, tau)
            return r.at[:, i].set(position), count + move.astype(jnp.int32)

        start = (walkers.r, jnp.zeros((n_local,), jnp.int32))
        r_new, count = jax.lax.fori_loop(0, walkers.r.shape[1], electron, start)
        current = (walkers.sign, walkers.log_psi, walkers.grad, walkers.e_local)
        current += (walkers.elements, walkers.targets)
        fresh_jets = lambda r, k: signed_jets(params, r, k)
        where_moved = (r_new, configuration_keys(r_new))
        new = on_subset(fresh_jets, count > 0, where_moved, current, capacity)
        sign, log_psi, grad, e, elements, targets = new
        ok = (count > 0) & jnp.isfinite(e) & jnp.isfinite(log_psi)
        ok &= jnp.all(jnp.isfinite(grad), axis=(1, 2))
        pick = lambda new, old: per_walker(ok, new, old)
        updated = walkers._replace(
            r=pick(r_new, walkers.r),
            sign=pick(sign, walkers.sign),
            log_psi=pick(log_psi, walkers.log_psi),
            grad=pick(grad, walkers.grad),
            e_local=pick(e, walkers.e_local),
            elements=pick(elements, walkers.elements),
            targets=pick(targets, walkers.targets),
        )
        return updated, jnp.where(ok, count, 0)

    return step


def initial_control(energy: float, n_devices: int, dtype: Any = jnp.float64) -> DMCControl:
    """Reference and running average both at ``energy`` (e.g. the VMC energy), replicated."""
    e = jnp.asarray(energy, dtype)
    one = DMCControl(e, e, jnp.asarray(0, jnp.int32))
    return jax.tree_util.tree_map(lambda x: jnp.stack([x] * n_devices), one)


def extrapolate_timestep(
    taus: np.ndarray, energies: np.ndarray, errors: np.ndarray
) -> tuple[float, float, float]:
    """Weighted least-squares line ``E(τ) = E_0 + b τ``; returns ``(E_0, σ(E_0), b)``.

    With one time step there is nothing to extrapolate: its energy and error come back.
    """
    taus, energies, errors = (np.asarray(x, np.float64) for x in (taus, energies, errors))
    if taus.size == 1:
        return float(energies[0]), float(errors[0]), 0.0
    design = np.stack([np.ones_like(taus), taus], axis=1) / errors[:, None]
    covariance = np.linalg.inv(design.T @ design)
    coef = covariance @ design.T @ (energies / errors)
    return float(coef[0]), float(np.sqrt(covariance[0, 0])), float(coef[1])


def line_chi2_per_dof(
    taus: np.ndarray, energies: np.ndarray, errors: np.ndarray, e0: float, slope: float
) -> float | None:
    """χ² per degree of freedom of the line ``E_0 + b τ`` through ``E(τ) ± σ``: about 1 when
    the time steps lie in the linear regime; None with two time steps or fewer."""
    taus, energies, errors = (np.asarray(x, np.float64) for x in (taus, energies, errors))
    if taus.size <= 2:
        return None
    residual = (energies - e0 - slope * taus) / errors
    return float(np.sum(residual**2) / (taus.size - 2))
