"""Slater determinants of orbital matrices, combined in log space with signs."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def slogdet(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|det|)`` over the last two axes; an empty (0 x 0) matrix has det 1."""
    if matrices.shape[-1] == 0:
        batch = matrices.shape[:-2]
        return jnp.ones(batch, matrices.dtype), jnp.zeros(batch, matrices.dtype)
    return jnp.linalg.slogdet(matrices)


def log_sum_determinants(
    up: jax.Array, down: jax.Array, ci: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``log|sum_p ci_p det(up_p) det(down_p)|`` and its sign.

    ``up``/``down``: (n_det, n, n) orbital matrices (electron index first); ``ci``: (n_det,).
    """
    sign_up, log_up = slogdet(up)
    sign_down, log_down = slogdet(down)
    return combine_determinants(sign_up * sign_down, log_up + log_down, ci)


def combine_determinants(
    signs: jax.Array, logs: jax.Array, ci: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|sum_p ci_p sign_p exp(log_p)|)`` from per-determinant signs and logs."""
    logs = logs + jnp.log(jnp.abs(ci))
    signs = signs * jnp.sign(ci)
    if ci.shape[0] == 1:
        return signs[0], logs[0]
    shift = jax.lax.stop_gradient(jnp.max(logs))
    total = jnp.sum(signs * jnp.exp(logs - shift))
    return jnp.sign(total), jnp.log(jnp.abs(total)) + shift
