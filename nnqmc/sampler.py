"""Metropolis walkers sampling |psi|^2 with all-electron Gaussian moves."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

BatchLogPsi = Callable[[jax.Array], jax.Array]  # (n_walkers, n_elec, 3) -> (n_walkers,)

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
    """Atom index of each up and each down electron: pairs per atom, odd electrons alternate."""
    up, down, odd = [], [], []
    for atom, n in enumerate(counts):
        up += [atom] * (n // 2)
        down += [atom] * (n // 2)
        if n % 2:
            odd.append(atom)
    for k, atom in enumerate(odd):
        (up if k % 2 == 0 else down).append(atom)
    while len(up) > n_up:
        down.append(up.pop())
    while len(down) > n_down:
        up.append(down.pop())
    return up, down


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


def metropolis_step(
    log_psi: BatchLogPsi,
    walkers: jax.Array,
    log_psi_now: jax.Array,
    key: jax.Array,
    width: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One all-electron Gaussian move per walker, accepted with min(1, |psi'/psi|^2)."""
    key_move, key_accept = jax.random.split(key)
    proposal = walkers + width * jax.random.normal(key_move, walkers.shape, walkers.dtype)
    log_psi_new = log_psi(proposal)
    log_ratio = 2.0 * (log_psi_new - log_psi_now)
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
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``n_steps`` Metropolis steps; returns walkers, their log|psi| and the mean acceptance."""

    def body(k, carry):
        walkers, log_psi_now, accepted = carry
        walkers, log_psi_now, acc = metropolis_step(
            log_psi, walkers, log_psi_now, jax.random.fold_in(key, k), width
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
