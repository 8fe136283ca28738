"""Slater determinants of orbital matrices, combined in log space with signs."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gauss_jordan(
    a: jax.Array, inverse: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``(sign, log|det a|, a^-1)`` (``a^-1`` only with ``inverse``, else None) of one
    square matrix by Gauss–Jordan elimination with partial pivoting, in plain XLA
    operations.

    Why not LAPACK: jaxlib's CPU LU splits a large batch of matrices over XLA's intra-op
    thread pool and waits for the pieces on a pool thread. Two such LUs running at once on
    a 2-core machine hold both pool threads while their pieces wait in the queue, and the
    process hangs (seen with the ECP quadrature's ψ ratios: 256 walkers x 96 points of
    4 x 4 determinants). Column ``k`` of the elimination picks the largest remaining entry
    as its pivot; det a = (-1)^swaps prod pivots, and the right half of [a | 1] becomes a^-1
    (not meaningful for a singular matrix, whose sign is 0 and log -inf).
    """
    n = a.shape[-1]
    rows = jnp.arange(n)
    m = jnp.concatenate([a, jnp.eye(n, dtype=a.dtype)], axis=-1) if inverse else a

    def column(k, carry):
        m, sign, log = carry
        score = jnp.where(rows >= k, jnp.abs(m[:, k]), -1.0)
        p = jnp.argmax(score)
        row_k, row_p = m[k], m[p]
        m = m.at[p].set(row_k).at[k].set(row_p)
        pivot = m[k, k]
        sign = sign * jnp.sign(pivot) * jnp.where(p == k, 1.0, -1.0).astype(a.dtype)
        log = log + jnp.log(jnp.abs(pivot))
        scaled = m[k] / jnp.where(pivot == 0, 1.0, pivot)  # singular: sign 0, log -inf
        factors = jnp.where(rows == k, 0.0, m[:, k])
        m = (m - factors[:, None] * scaled[None, :]).at[k].set(scaled)
        return m, sign, log

    init = (m, jnp.ones((), a.dtype), jnp.zeros((), a.dtype))
    m, sign, log = jax.lax.fori_loop(0, n, column, init)
    return sign, log, m[:, n:] if inverse else None


def _batched_gauss_jordan(a: jax.Array, inverse: bool):
    """:func:`gauss_jordan` over the leading axes of ``a``."""
    batch = a.shape[:-2]
    flat = a.reshape(-1, *a.shape[-2:])
    sign, log, inv = jax.vmap(lambda x: gauss_jordan(x, inverse))(flat)
    return sign.reshape(batch), log.reshape(batch), inv


@jax.custom_jvp
def _slogdet(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    sign, log, _ = _batched_gauss_jordan(a, inverse=False)
    return sign, log


@_slogdet.defjvp
def _slogdet_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    sign, log, inv = _batched_gauss_jordan(a, inverse=True)
    dlog = jnp.einsum("bji,bij->b", inv, da.reshape(inv.shape)).reshape(sign.shape)
    return (sign, log), (jnp.zeros_like(sign), dlog)


def _named_slogdet(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _slogdet(a)


_named_slogdet.__name__ = "slogdet"
_jitted_slogdet = jax.jit(_named_slogdet)
"""Jitted under the name ``slogdet``: folx's forward Laplacian finds its own sparse rule
for it by that name (there the batch is one chunk of walkers)."""


def slogdet(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|det|)`` over the last two axes (:func:`gauss_jordan`, with the
    derivative d log|det a| = tr(a^-1 da)); an empty (0 x 0) matrix has det 1."""
    if matrices.shape[-1] == 0:
        batch = matrices.shape[:-2]
        return jnp.ones(batch, matrices.dtype), jnp.zeros(batch, matrices.dtype)
    return _jitted_slogdet(matrices)


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
