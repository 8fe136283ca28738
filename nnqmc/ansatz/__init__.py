"""Wavefunction ansatzes: ``init(key) -> params`` and ``apply(params, r) -> (sign, log|psi|)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..hamiltonian import positions
from ..scf import SCFResult
from .determinants import log_sum_determinants
from .jastrow import electron_cusp, init_simple_jastrow, simple_jastrow
from .slater import SlaterPart, slater_part

Params = Any


@dataclass(frozen=True)
class Ansatz:
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]
    n_up: int
    n_down: int
    kinetic_jet: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array, jax.Array]] | None = None
    """A faster forward Laplacian for one walker that uses the ansatz's own structure:
    ``(log|psi|, grad log|psi|, T)``, or None; the ``"forward"`` engine takes it where there
    is one."""

    @property
    def kinetic_energy(self) -> Callable[[Params, jax.Array], jax.Array] | None:
        """The kinetic energy of :attr:`kinetic_jet`, or None."""
        jet = self.kinetic_jet
        if jet is None:
            return None
        return lambda params, r: jet(params, r)[2]

    def log_psi(self, params: Params, r: jax.Array) -> jax.Array:
        return self.apply(params, r)[1]


def slater_jastrow(
    scf: SCFResult,
    charges: np.ndarray,
    coords: np.ndarray,
    jastrow: bool = True,
    cusp: bool = True,
    dtype=jnp.float64,
) -> Ansatz:
    """HF (or CASSCF) determinants times exp(gamma + J) with the simple Jastrow J.

    With ``jastrow=False`` this is the bare determinant expansion: its energy is the HF one.
    """
    slater = slater_part(scf, charges, cusp=cusp, dtype=dtype)
    return slater_jastrow_from_part(slater, coords, jastrow=jastrow, dtype=dtype)


def slater_jastrow_from_part(
    slater: SlaterPart,
    coords: np.ndarray,
    jastrow: bool = True,
    dtype=jnp.float64,
    ee_cusp_range: float = 1.0,
) -> Ansatz:
    """:func:`slater_jastrow` for any determinant part (HF orbitals or user orbitals);
    ``coords`` (n_atoms, 3), possibly empty, are the centres of the e–n Jastrow terms;
    ``ee_cusp_range`` that of gamma (:func:`~nnqmc.ansatz.jastrow.electron_cusp`)."""
    n_up, n_down = slater.n_up, slater.n_down
    coords = positions(coords)
    coords_j = jnp.asarray(coords, dtype)
    multi = slater.ci.shape[0] > 1

    def init(key: jax.Array) -> Params:
        del key
        params: dict[str, Any] = {}
        if jastrow:
            params["jastrow"] = init_simple_jastrow(len(coords))
        if multi:
            params["ci"] = jnp.asarray(slater.ci)
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)

    def apply(params: Params, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        up, down = slater.matrices(r)
        ci = params["ci"] if multi else jnp.asarray(slater.ci, r.dtype)
        sign, log = log_sum_determinants(up, down, ci)
        if jastrow:
            log = log + electron_cusp(r, n_up, n_down, ee_cusp_range)
            log = log + simple_jastrow(params["jastrow"], r, coords_j, n_up, n_down)
        return sign, log

    return Ansatz(init, apply, n_up, n_down)


__all__ = ["Ansatz", "slater_jastrow", "slater_jastrow_from_part"]
