"""Forward Laplacian of the electron embedding, written out by hand to use its structure.

A generic forward Laplacian (folx) carries the Jacobian with respect to all 3N coordinates
through every intermediate, including each hidden unit of the pair filter networks. But a
filter depends on its pair only through one distance d, so its whole jet follows from the
scalar derivatives w'(d), w''(d) (two nested jvps in d) and the geometry of d:

    grad w(d_ij) = w'(d) grad d_ij,        lap w(d_ij) = w''(d) |grad d|^2 + w'(d) lap d,

with grad_{r_i} d_ij = u_ij = (r_i - r_j)/d_ij = -grad_{r_j} d_ij, |grad d|^2 = 2 and
lap d = 4/d for an electron pair, and |grad d|^2 = 1, lap d = 2/d for an electron and a
nucleus. Only the electron features x_i (n x dim) carry a full Jacobian, shape
(n, n, 3, dim): [i, m, a, :] = d x_i / d r_{m,a}.

A message z_i = sum_j w_ij h_j then has

    d z_i / d r_{m,a} = delta_im sum_j w'_ij h_j u_ija - w'_im h_m u_ima + sum_j w_ij dh_j/dr_{m,a},
    lap z_i = sum_j [ (lap w_ij) h_j + w_ij lap h_j + 2 w'_ij u_ij . (dh_j/dr_i - dh_j/dr_j) ].

Everything matches :func:`nnqmc.ansatz.embedding.make_embedding`'s ``apply`` (the tests check
value, Jacobian and Laplacian against autodiff).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .embedding import (
    electron_nuclear_inputs,
    filter_hidden,
    initial_features,
    nuclear_weights,
    pair_distances,
    radial_basis_parameters,
    radial_features,
)

Params = Any

__all__ = ["Jet", "make_embedding_laplacian", "kinetic_jet_from_embedding"]


class Jet(NamedTuple):
    """Features (n, dim) with their Jacobian (n, n, 3, dim) and Laplacian (n, dim)."""

    value: jax.Array
    jacobian: jax.Array
    laplacian: jax.Array


def kinetic_jet_from_embedding(
    log_psi: Callable[[jax.Array, jax.Array], jax.Array], r: jax.Array, jet: Jet
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(f, grad f, T)`` of ``f = log_psi(r, x)`` given the embedding's jet ``x(r)``: the
    Jacobian is laid out as folx wants it, (3N, n, dim), and folx does the rest."""
    from ..laplacian import kinetic_jet_forward_with_features

    x, jac, lap = jet
    n, dim = x.shape
    jac = jnp.transpose(jac, (1, 2, 0, 3)).reshape(3 * n, n, dim)
    return kinetic_jet_forward_with_features(log_psi, r, (x, jac, lap))


def _linear(jet: Jet, w: jax.Array, b: jax.Array | None = None) -> Jet:
    value = jet.value @ w
    return Jet(value if b is None else value + b, jet.jacobian @ w, jet.laplacian @ w)


def _add(*jets: Jet) -> Jet:
    return Jet(*(sum(parts) for parts in zip(*jets, strict=True)))


def _silu(jet: Jet) -> Jet:
    """silu(x) = x s(x): silu' = s (1 + x (1 - s)), silu'' = s (1 - s) (2 + x (1 - 2 s))."""
    x = jet.value
    s = jax.nn.sigmoid(x)
    d1 = s * (1.0 + x * (1.0 - s))
    d2 = s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s))
    grad2 = jnp.sum(jet.jacobian**2, axis=(1, 2))
    return Jet(x * s, d1[:, None, None, :] * jet.jacobian, d1 * jet.laplacian + d2 * grad2)


def scalar_jet(f: Callable[[jax.Array], jax.Array], d: jax.Array):
    """``f(d), f'(d), f''(d)`` for an ``f`` that acts on each element of ``d`` separately."""
    ones = jnp.ones_like(d)

    def first(t):
        return jax.jvp(f, (t,), (ones,))

    (value, d1), (_, d2) = jax.jvp(first, (d,), (ones,))
    return value, d1, d2


def _pair_message(w: jax.Array, w1: jax.Array, lap_w: jax.Array, h: Jet, u: jax.Array) -> Jet:
    """z_i = sum_j w_ij h_j; ``w``, ``w1`` = dw/dd, ``lap_w`` (n, n, dim), zero where
    the pair is not summed; ``u`` (n, n, 3) the unit vectors (r_i - r_j)/d_ij."""
    n = w.shape[0]
    value = jnp.sum(w * h.value[None], axis=1)
    t = (w1 * h.value[None])[:, :, None, :] * u[..., None]  # [i, m, a, d]
    own = jnp.eye(n, dtype=w.dtype)[:, :, None, None] * jnp.sum(t, axis=1)[:, None]
    # broadcast products and sums, not einsums: faster on CPU (docs/performance.md)
    jac = own - t + jnp.sum(w[:, :, None, None, :] * h.jacobian[None], axis=1)
    towards_i = jnp.swapaxes(h.jacobian, 0, 1)  # [i, j, a, d] = dh_j / dr_{i,a}
    towards_j = jnp.moveaxis(jnp.diagonal(h.jacobian, axis1=0, axis2=1), -1, 0)  # [j, a, d]
    cross = jnp.sum(u[..., None] * (towards_i - towards_j[None]), axis=2)
    lap = jnp.sum(lap_w * h.value[None] + w * h.laplacian[None] + 2.0 * w1 * cross, axis=1)
    return Jet(value, jac, lap)


def _input_jet(
    weights: jax.Array, r: jax.Array, coords: jax.Array, eye: jax.Array, scales: np.ndarray | None
) -> Jet:
    """Jet of ``electron_nuclear_inputs(r_i) @ weights``: it depends on r_i alone, so its
    Jacobian is diagonal in the electrons and three directions per electron suffice."""

    def one(r_i):
        f = lambda y: electron_nuclear_inputs(y, coords, scales)
        basis = jnp.eye(3, dtype=r_i.dtype)

        def along(v):
            first = lambda y: jax.jvp(f, (y,), (v,))[1]
            d1, d2 = jax.jvp(first, (r_i,), (v,))
            return d1, d2

        d1, d2 = jax.vmap(along)(basis)  # (3, F) each
        return f(r_i), d1, jnp.sum(d2, axis=0)

    value, d1, lap = jax.vmap(one)(r)  # (n, F), (n, 3, F), (n, F)
    return Jet(value @ weights, eye * (d1 @ weights)[:, None], lap @ weights)


def make_embedding_laplacian(
    n_up: int,
    n_down: int,
    *,
    n_rbf: int = 16,
    cutoff: float = 10.0,
    en_scales: np.ndarray | None = None,
) -> Callable[[Params, jax.Array, jax.Array], Jet]:
    """``jet(params, r, coords) -> Jet`` of the embedding that ``make_embedding`` makes with
    these arguments, for parameters from its ``init`` (which fix width, depth and nuclei)."""
    n = n_up + n_down
    mu_np, sigma_np = radial_basis_parameters(n_rbf, cutoff)
    spin = np.arange(n) < n_up
    same_np = (spin[:, None] == spin[None, :]) & ~np.eye(n, dtype=bool)
    anti_np = spin[:, None] != spin[None, :]

    def hidden_jet(params, which, d):
        def g(t):
            rbf, env = radial_features(t, mu_np, sigma_np, cutoff)
            return filter_hidden(params["filters"][which]["hidden"], rbf, env)

        return scalar_jet(g, d)

    def jet(params: Params, r: jax.Array, coords: jax.Array) -> Jet:
        dt = r.dtype
        diff_ee, d_ee, diff_en, d_en = pair_distances(r, coords)
        u_ee = diff_ee / d_ee[..., None]
        u_en = diff_en / d_en[..., None]

        pair_filters = {}
        for which, mask_np in (("same", same_np), ("anti", anti_np)):
            g, g1, g2 = hidden_jet(params, which, d_ee)
            mask = jnp.asarray(mask_np, dt)[..., None]
            lap_g = 2.0 * g2 + (4.0 / d_ee)[..., None] * g1
            pair_filters[which] = (g * mask, g1 * mask, lap_g * mask)
        gn, gn1, gn2 = hidden_jet(params, "nuc", d_en)
        lap_gn = gn2 + (2.0 / d_en)[..., None] * gn1
        gn1_u = gn1[:, :, None, :] * u_en[..., None]  # [i, atom, a, e]

        x0 = initial_features(params["spin"], n_up, n_down, dt)
        dim = x0.shape[1]
        eye = jnp.eye(n, dtype=dt)[:, :, None, None]
        x = Jet(x0, jnp.zeros((n, n, 3, dim), dt), jnp.zeros((n, dim), dt))
        if "input" in params:
            x = _add(x, _input_jet(params["input"].astype(dt), r, coords, eye, en_scales))

        for l, layer in enumerate(params["layers"]):
            h = _linear(x, layer["h"])
            upd = layer["update"]
            parts = []
            for k, which in enumerate(("same", "anti")):
                head = params["filters"][which]["heads"][l]
                g, g1, lap_g = pair_filters[which]
                z = _pair_message(g @ head, g1 @ head, lap_g @ head, h, u_ee)
                parts.append(_linear(z, upd["w"][k]))
            nuc_w = nuclear_weights(params["filters"]["nuc"]["heads"][l], layer["nuclei"])
            z_nuc = Jet(
                jnp.einsum("ike,ked->id", gn, nuc_w),
                eye * jnp.einsum("ikae,ked->iad", gn1_u, nuc_w)[:, None],
                jnp.einsum("ike,ked->id", lap_gn, nuc_w),
            )
            pre = _add(*parts, _linear(z_nuc, upd["w"][2], upd["b"]))
            x = _add(x, _silu(pre))
        return x

    return jet
