"""Kinetic-energy engines for a log-amplitude ``f(r) = log|psi(r)|`` of one walker.

The local kinetic energy is ``T = -1/2 (nabla^2 f + |nabla f|^2)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LogPsi = Callable[[jax.Array], jax.Array]


def kinetic_energy_exact(log_psi: LogPsi, r: jax.Array) -> jax.Array:
    """Exact Laplacian as 3N Hessian-vector products (jvp of grad) over the unit vectors."""
    shape = r.shape
    x = r.reshape(-1)
    grad_f = jax.grad(lambda x: log_psi(x.reshape(shape)))

    def second_derivative(v: jax.Array) -> jax.Array:
        return jnp.vdot(jax.jvp(grad_f, (x,), (v,))[1], v)

    eye = jnp.eye(x.size, dtype=x.dtype)
    laplacian = jnp.sum(jax.vmap(second_derivative)(eye))
    g = grad_f(x)
    return -0.5 * (laplacian + jnp.vdot(g, g))


def kinetic_energy_forward(log_psi: LogPsi, r: jax.Array) -> jax.Array:
    """Forward Laplacian (folx): value, gradient and Laplacian in one forward pass."""
    import folx

    shape = r.shape
    result = folx.forward_laplacian(lambda x: log_psi(x.reshape(shape)), sparsity_threshold=0)(
        r.reshape(-1)
    )
    g = result.jacobian.dense_array
    return -0.5 * (result.laplacian + jnp.vdot(g, g))


KINETIC_ENGINES = {"exact": kinetic_energy_exact, "forward": kinetic_energy_forward}
