"""Hamiltonians: the potential energy of one walker and the local energy ``H psi / psi``.

A Hamiltonian is anything with ``n_up``, ``n_down`` and a JAX-traceable
``potential(r) -> scalar`` for one walker ``r`` of shape ``(n_elec, 3)``; the kinetic energy
``-1/2 sum_i nabla_i^2`` is generic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .laplacian import KINETIC_ENGINES


class Hamiltonian(Protocol):
    n_up: int
    n_down: int

    def potential(self, r: jax.Array) -> jax.Array: ...


def pair_distances(r: jax.Array) -> jax.Array:
    """Distances ``|r_i - r_j|`` for i < j, safe for gradients."""
    i, j = np.triu_indices(r.shape[0], k=1)
    d = r[i] - r[j]
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def electron_nuclear_distances(r: jax.Array, coords: jax.Array) -> jax.Array:
    d = r[:, None, :] - coords[None, :, :]
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


@dataclass(frozen=True)
class MolecularHamiltonian:
    """Electrons and fixed point nuclei interacting by Coulomb's law."""

    charges: np.ndarray
    coords: np.ndarray
    n_up: int
    n_down: int

    @property
    def nuclear_repulsion(self) -> float:
        z, c = np.asarray(self.charges), np.asarray(self.coords)
        i, j = np.triu_indices(len(z), k=1)
        return float(np.sum(z[i] * z[j] / np.linalg.norm(c[i] - c[j], axis=-1)))

    def potential(self, r: jax.Array) -> jax.Array:
        coords = jnp.asarray(self.coords, r.dtype)
        charges = jnp.asarray(self.charges, r.dtype)
        v_en = -jnp.sum(charges / electron_nuclear_distances(r, coords))
        v_ee = jnp.sum(1.0 / pair_distances(r)) if r.shape[0] > 1 else 0.0
        return v_en + v_ee + self.nuclear_repulsion


def local_energy(
    log_psi: Callable[[jax.Array], jax.Array],
    hamiltonian: Hamiltonian,
    r: jax.Array,
    engine: str = "exact",
) -> jax.Array:
    """``E_L(r) = -1/2 (nabla^2 log|psi| + |nabla log|psi||^2) + V(r)`` for one walker."""
    return KINETIC_ENGINES[engine](log_psi, r) + hamiltonian.potential(r)
