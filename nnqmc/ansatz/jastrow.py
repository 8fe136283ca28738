"""Jastrow factors: the fixed electron–electron cusp gamma and a simple trainable J.

gamma(r) = sum_{i<j} -c_ij L / (1 + r_ij / L),  c = 1/2 (opposite spins), 1/4 (same),
which has d gamma / d r_ij = c_ij at r_ij = 0 (Kato's cusp) for every range L and is flat
beyond it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..hamiltonian import electron_nuclear_distances


def pair_spin_masks(n_up: int, n_down: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (i, j) of pairs i < j and a boolean mask that is True for same-spin pairs."""
    n = n_up + n_down
    i, j = np.triu_indices(n, k=1)
    same = (i < n_up) == (j < n_up)
    return i, j, same


def _pair_distances(r: jax.Array, i: np.ndarray, j: np.ndarray) -> jax.Array:
    d = r[i] - r[j]
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def electron_cusp(r: jax.Array, n_up: int, n_down: int, length: float = 1.0) -> jax.Array:
    """The fixed e–e cusp factor gamma(r) = -sum_pairs c L / (1 + r_ij / L) (the log of the
    factor): slope c = 1/2 (opposite spins) or 1/4 (same spins) at r_ij = 0, flat beyond
    the range ``length`` L."""
    i, j, same = pair_spin_masks(n_up, n_down)
    if i.size == 0:
        return jnp.zeros((), r.dtype)
    c = jnp.where(same, 0.25, 0.5).astype(r.dtype)
    d = _pair_distances(r, i, j)
    return jnp.sum(-c * length / (1.0 + d / length))


def gaussian_widths(n: int) -> np.ndarray:
    return np.geomspace(0.25, 6.0, n)


def init_simple_jastrow(n_atoms: int, n_basis: int = 8) -> dict[str, jax.Array]:
    """Parameters of :func:`simple_jastrow`, all zero so that J = 0 at the start."""
    return {
        "ee": jnp.zeros((2, n_basis)),
        "en": jnp.zeros((n_atoms, n_basis)),
    }


def simple_jastrow(
    params: dict[str, jax.Array], r: jax.Array, coords: jax.Array, n_up: int, n_down: int
) -> jax.Array:
    """J = sum_pairs sum_k w_{s,k} g_k(r_ij) + sum_{i,I} sum_k v_{I,k} g_k(r_iI).

    g_k(r) = exp(-(r / s_k)^2) have zero slope at r = 0, so J leaves both cusps intact.
    """
    widths = jnp.asarray(gaussian_widths(params["ee"].shape[1]), r.dtype)
    total = jnp.zeros((), r.dtype)
    i, j, same = pair_spin_masks(n_up, n_down)
    if i.size:
        d = _pair_distances(r, i, j)
        g = jnp.exp(-((d[:, None] / widths) ** 2))
        w = jnp.where(same[:, None], params["ee"][0], params["ee"][1])
        total = total + jnp.sum(w * g)
    d_en = electron_nuclear_distances(r, coords)
    g_en = jnp.exp(-((d_en[..., None] / widths) ** 2))
    return total + jnp.sum(params["en"][None] * g_en)


__all__ = ["electron_cusp", "init_simple_jastrow", "simple_jastrow", "pair_spin_masks"]
