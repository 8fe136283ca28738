"""Clipped VMC gradient and the optimizers (optax Adam; natural gradient lives here too).

Every function here is written for one device's share of the walkers and reduces over the
named pmap axis, so one device is just the case n = 1 of the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

AXIS = "devices"

Params = Any
BatchLogPsi = Callable[[Params, jax.Array], jax.Array]


def all_walkers(x: jax.Array) -> jax.Array:
    """Values of every walker on every device, flattened (n_devices * n_local,)."""
    return jax.lax.all_gather(x, AXIS).reshape(-1)


def clip_local_energies(e: jax.Array, width: float) -> jax.Array:
    """Clip to median ± width * mean absolute deviation from the median (over all devices)."""
    everything = all_walkers(e)
    median = jnp.median(everything)
    spread = jnp.mean(jnp.abs(everything - median))
    return jnp.clip(e, median - width * spread, median + width * spread)


def vmc_gradient(
    log_psi: BatchLogPsi, params: Params, walkers: jax.Array, e_clipped: jax.Array
) -> Params:
    """grad E = 2 < (E_L - <E_L>) grad log|psi| > with clipped local energies."""
    center = jax.lax.pmean(jnp.mean(e_clipped), AXIS)
    weights = jax.lax.stop_gradient(e_clipped - center)

    def surrogate(p):
        return 2.0 * jnp.mean(weights * log_psi(p, walkers))

    return jax.lax.pmean(jax.grad(surrogate)(params), AXIS)


def learning_rate_schedule(lr: float, decay_steps: float) -> optax.Schedule:
    """lr / (1 + step / decay_steps)."""
    return lambda step: lr / (1.0 + step / decay_steps)


@dataclass(frozen=True)
class Optimizer:
    """``update(params, state, walkers, e_clipped) -> (params, state, grad_norm)``."""

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, jax.Array, jax.Array], tuple[Params, Any, jax.Array]]


def adam(
    log_psi: BatchLogPsi, learning_rate: float, decay_steps: float, max_grad_norm: float
) -> Optimizer:
    tx = optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adam(learning_rate_schedule(learning_rate, decay_steps)),
    )

    def update(params, state, walkers, e_clipped):
        grads = vmc_gradient(log_psi, params, walkers, e_clipped)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, optax.global_norm(grads)

    return Optimizer(tx.init, update)


def make_optimizer(name: str, log_psi: BatchLogPsi, train_config) -> Optimizer:
    if name == "adam":
        return adam(
            log_psi,
            train_config.learning_rate,
            train_config.lr_decay_steps,
            train_config.max_grad_norm,
        )
    raise ValueError(f"unknown optimizer {name!r}")
