"""The symmetrized Matérn-5/2 kernel on inverse distances and its derivative blocks (GDML).

With d = d(x) the descriptor (:mod:`.descriptor`), Q_P the descriptor permutation of an atom
permutation P of the group G of identical atoms, and v = 5 |d(x) - d(y)[Q_P]|² / σ², a = √v:

    k(x, y) = 1/|G| Σ_P (1 + a + a²/3) exp(-a)              (unit amplitude, k ≤ 1)

For an energy E ~ GP(μ, s² k) the forces F = -∇E are jointly Gaussian with it, with

    cov(E(x), E(y)) = s² k(x, y)
    cov(E(x), F(y)) = -s² ∇_y k(x, y)                        (3N,)
    cov(F(x), F(y)) =  s² ∇_x ∇_yᵀ k(x, y)                   (3N, 3N), the GDML Hessian kernel

all obtained here by JAX autodiff of k in Cartesian positions (bohr), so a prediction's
forces are exactly minus the gradient of its energy. The Matérn function is written in v
with hand-written first and second derivatives (g'(v) = -(1+a) e^{-a}/6,
g''(v) = e^{-a}/12), finite at v = 0 where autodiff through √v is not: the diagonal of the
force block needs the second derivative at x = y.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .descriptor import inverse_distances


@jax.custom_jvp
def matern52(v: jnp.ndarray) -> jnp.ndarray:
    """g(v) = (1 + √v + v/3) exp(-√v): Matérn-5/2 of r with v = 5 r²/σ²."""
    a = jnp.sqrt(v)
    return (1.0 + a + v / 3.0) * jnp.exp(-a)


@jax.custom_jvp
def _matern52_d1(v: jnp.ndarray) -> jnp.ndarray:
    """g'(v) = -(1 + √v) exp(-√v) / 6."""
    a = jnp.sqrt(v)
    return -(1.0 + a) * jnp.exp(-a) / 6.0


def _matern52_d2(v: jnp.ndarray) -> jnp.ndarray:
    """g''(v) = exp(-√v) / 12 (its own derivative, third order, is not needed)."""
    return jnp.exp(-jnp.sqrt(v)) / 12.0


@matern52.defjvp
def _matern52_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    return matern52(v), _matern52_d1(v) * dv


@_matern52_d1.defjvp
def _matern52_d1_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    return _matern52_d1(v), _matern52_d2(v) * dv


def energy_kernel(
    x: jnp.ndarray, y: jnp.ndarray, sigma: float, pair_perms: jnp.ndarray
) -> jnp.ndarray:
    """k(x, y) of two geometries (n_atoms, 3), averaged over the permutations of y."""
    dx, dy = inverse_distances(x), inverse_distances(y)
    diff = dx[None, :] - dy[pair_perms]
    v = 5.0 * jnp.sum(diff * diff, axis=-1) / sigma**2
    return jnp.mean(matern52(v))


def energy_force_kernel(
    x: jnp.ndarray, y: jnp.ndarray, sigma: float, pair_perms: jnp.ndarray
) -> jnp.ndarray:
    """cov(E(x), F(y)) / s² = -∇_y k(x, y), flattened (3 n_atoms,)."""
    return -jax.grad(energy_kernel, argnums=1)(x, y, sigma, pair_perms).reshape(-1)


def force_kernel(
    x: jnp.ndarray, y: jnp.ndarray, sigma: float, pair_perms: jnp.ndarray
) -> jnp.ndarray:
    """cov(F(x), F(y)) / s² = ∇_x ∇_yᵀ k(x, y), (3 n_atoms, 3 n_atoms)."""
    n = 3 * x.shape[0]
    grad_y = jax.grad(energy_kernel, argnums=1)
    jac = jax.jacfwd(grad_y, argnums=0)(x, y, sigma, pair_perms)  # [y index, x index]
    return jac.reshape(n, n).T


def _pairwise(kernel, xs, ys, sigma, pair_perms):
    inner = jax.vmap(kernel, in_axes=(None, 0, None, None))
    return jax.vmap(inner, in_axes=(0, None, None, None))(xs, ys, sigma, pair_perms)


@jax.jit
def gram(
    energy_positions: jnp.ndarray,
    force_positions: jnp.ndarray,
    sigma: float,
    pair_perms: jnp.ndarray,
) -> jnp.ndarray:
    """The unit-amplitude covariance of the observations [E(x_e) for x_e in energy_positions;
    F(x_f) flattened, for x_f in force_positions], (n_e + 3N n_f) square."""
    n_e, n_f = energy_positions.shape[0], force_positions.shape[0]
    m = 3 * force_positions.shape[1] if n_f else 0
    blocks_e, blocks_f = [], []
    if n_e:
        blocks_e.append(
            _pairwise(energy_kernel, energy_positions, energy_positions, sigma, pair_perms)
        )
    if n_e and n_f:
        ef = _pairwise(energy_force_kernel, energy_positions, force_positions, sigma, pair_perms)
        ef = ef.reshape(n_e, n_f * m)
        blocks_e.append(ef)
        blocks_f.append(ef.T)
    if n_f:
        ff = _pairwise(force_kernel, force_positions, force_positions, sigma, pair_perms)
        blocks_f.append(ff.transpose(0, 2, 1, 3).reshape(n_f * m, n_f * m))
    rows = [jnp.concatenate(b, axis=1) for b in (blocks_e, blocks_f) if b]
    return jnp.concatenate(rows, axis=0)


def cross(
    x: jnp.ndarray,
    energy_positions: jnp.ndarray,
    force_positions: jnp.ndarray,
    sigma: float,
    pair_perms: jnp.ndarray,
) -> jnp.ndarray:
    """c(x): the unit-amplitude covariance of E(x) with every observation (n_obs,)."""
    parts = []
    if energy_positions.shape[0]:
        kernel = jax.vmap(energy_kernel, in_axes=(None, 0, None, None))
        parts.append(kernel(x, energy_positions, sigma, pair_perms))
    if force_positions.shape[0]:
        kernel = jax.vmap(energy_force_kernel, in_axes=(None, 0, None, None))
        parts.append(kernel(x, force_positions, sigma, pair_perms).reshape(-1))
    return jnp.concatenate(parts)
