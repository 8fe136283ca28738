"""Metropolis walkers sampling |psi|^2 with all-electron Gaussian moves.

The move of electron i has the width ``w * s_i(r)``: ``w`` adapts to the target acceptance,
``s_i`` is 1 (``proposal = "uniform"``) or grows with the electron's distance to its nearest
nucleus (``"nucleus"``, :func:`nucleus_step_scale`), so that core electrons take small steps
and valence electrons large ones. A position-dependent width makes the proposal asymmetric;
the Metropolis–Hastings ratio q(r|r') / q(r'|r) corrects for it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .hamiltonian import positions

BatchLogPsi = Callable[[jax.Array], jax.Array]  # (n_walkers, n_elec, 3) -> (n_walkers,)
StepScale = Callable[[jax.Array], jax.Array]  # (n_walkers, n_elec, 3) -> (n_walkers, n_elec)

MIN_WIDTH, MAX_WIDTH = 1e-3, 5.0


def electrons_per_atom(charges: np.ndarray, charge: int) -> np.ndarray:
    """Neutral atoms, then electrons removed from (added to) the most (least) charged atoms."""
    counts = np.asarray(charges, dtype=int).copy()
    order = np.argsort(-counts, kind="stable")
    for k in range(abs(charge)):
        atom = order[k % len(order)] if charge > 0 else order[::-1][k % len(order)]
        counts[atom] += -1 if charge > 0 else 1
    return np.maximum(counts, 0)


def assign_spins(counts: np.ndarray, n_up: int, n_down: int) -> tuple[list[int], list[int]]:
    """Atom index of each up and each down electron: pairs per atom, odd electrons
    alternate, then electrons change spin where needed for ``n_up`` and ``n_down``."""
    up, down, odd = [], [], []
    for atom, n in enumerate(counts):
        up += [atom] * (n // 2)
        down += [atom] * (n // 2)
        if n % 2:
            odd.append(atom)
    for k, atom in enumerate(odd):
        (up if k % 2 == 0 else down).append(atom)
    while len(up) > n_up:
        _move_one(up, down)
    while len(down) > n_down:
        _move_one(down, up)
    return up, down


def _move_one(source: list[int], target: list[int]) -> None:
    """One electron from ``source`` to ``target`` spin, from the atom (the first of equal
    ones) where ``source`` most outnumbers ``target``: each atom's spins stay as even as
    the total allows."""
    atom = max(sorted(set(source)), key=lambda a: source.count(a) - target.count(a))
    source.remove(atom)
    target.append(atom)


def init_walkers(
    key: jax.Array,
    coords: np.ndarray,
    charges: np.ndarray,
    charge: int,
    n_up: int,
    n_down: int,
    n_walkers: int,
    dtype=jnp.float64,
) -> jax.Array:
    """Walkers (n_walkers, n_elec, 3): electrons around their atoms, spin-up first."""
    counts = electrons_per_atom(charges, charge)
    up, down = assign_spins(counts, n_up, n_down)
    centers = np.asarray(coords)[np.array(up + down, dtype=int)]
    z = np.maximum(np.asarray(charges)[np.array(up + down, dtype=int)], 1.0)
    spread = jnp.asarray(np.clip(1.0 / np.sqrt(z), 0.2, 1.0))[None, :, None]
    noise = jax.random.normal(key, (n_walkers, len(up) + len(down), 3), dtype)
    return (jnp.asarray(centers, dtype)[None] + spread * noise).astype(dtype)


SCALE_RANGE = (0.2, 2.0)
"""Bounds of the nucleus-distance step scale (bohr): steps stay finite on a nucleus and do
not blow up for an electron far out."""


def nucleus_step_scale(coords: np.ndarray, bounds: tuple[float, float] = SCALE_RANGE) -> StepScale:
    """s_i = clip(min_I |r_i - R_I|, *bounds): the step scale of each electron."""
    lo, hi = bounds
    centres = positions(coords)

    def scale(walkers: jax.Array) -> jax.Array:
        diff = walkers[..., None, :] - jnp.asarray(centres, walkers.dtype)
        d = jnp.sqrt(jnp.min(jnp.sum(diff * diff, axis=-1), axis=-1))
        return jnp.clip(d, lo, hi)

    return scale


def _log_proposal_density(step: jax.Array, sigma: jax.Array) -> jax.Array:
    """log q of an all-electron Gaussian move ``step`` (W, n, 3) with widths ``sigma``
    (W, n), up to a constant."""
    return jnp.sum(-jnp.sum(step * step, axis=-1) / (2.0 * sigma**2) - 3.0 * jnp.log(sigma), -1)


def metropolis_step(
    log_psi: BatchLogPsi,
    walkers: jax.Array,
    log_psi_now: jax.Array,
    key: jax.Array,
    width: jax.Array,
    step_scale: StepScale | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One all-electron Gaussian move per walker, accepted with
    min(1, |psi'/psi|^2 q(r|r') / q(r'|r)) (the q ratio is 1 without ``step_scale``)."""
    key_move, key_accept = jax.random.split(key)
    noise = jax.random.normal(key_move, walkers.shape, walkers.dtype)
    if step_scale is None:
        proposal = walkers + width * noise
        log_psi_new = log_psi(proposal)
        log_ratio = 2.0 * (log_psi_new - log_psi_now)
    else:
        sigma = width * step_scale(walkers)
        step = sigma[..., None] * noise
        proposal = walkers + step
        sigma_back = width * step_scale(proposal)
        log_psi_new = log_psi(proposal)
        hastings = _log_proposal_density(step, sigma_back) - _log_proposal_density(step, sigma)
        log_ratio = 2.0 * (log_psi_new - log_psi_now) + hastings
    u = jax.random.uniform(key_accept, log_ratio.shape, walkers.dtype)
    accept = jnp.log(u) < log_ratio
    walkers = jnp.where(accept[:, None, None], proposal, walkers)
    log_psi_now = jnp.where(accept, log_psi_new, log_psi_now)
    return walkers, log_psi_now, jnp.mean(accept.astype(walkers.dtype))


def sample(
    log_psi: BatchLogPsi,
    walkers: jax.Array,
    log_psi_now: jax.Array,
    key: jax.Array,
    width: jax.Array,
    n_steps: int,
    step_scale: StepScale | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``n_steps`` Metropolis steps; returns walkers, their log|psi| and the mean acceptance."""

    def body(k, carry):
        walkers, log_psi_now, accepted = carry
        walkers, log_psi_now, acc = metropolis_step(
            log_psi, walkers, log_psi_now, jax.random.fold_in(key, k), width, step_scale
        )
        return walkers, log_psi_now, accepted + acc

    zero = jnp.zeros((), walkers.dtype)
    walkers, log_psi_now, accepted = jax.lax.fori_loop(
        0, n_steps, body, (walkers, log_psi_now, zero)
    )
    return walkers, log_psi_now, accepted / n_steps


def adapt_width(width: jax.Array, acceptance: jax.Array, target: float) -> jax.Array:
    """Multiplicative step-width update towards the target acceptance."""
    return jnp.clip(width * jnp.exp(acceptance - target), MIN_WIDTH, MAX_WIDTH)
