"""Ansatzes from user orbitals: any JAX function of one electron position.

``orbitals(x) -> values`` maps one position ``x`` (3,) (bohr) to the values (n_orb,) of the
orbitals at ``x``; the first ``n_up`` (``n_down``) of them are occupied by the spin-up
(spin-down) electrons. It must be JAX-traceable (it is differentiated twice for the kinetic
energy). This is how systems without nuclei (Hooke's atom, quantum dots) get an ansatz.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..config import AnsatzConfig
from . import Ansatz, slater_jastrow_from_part
from .generalized import generalized_from_options
from .paulinet import paulinet_from_options
from .slater import SlaterPart

__all__ = ["OrbitalFunction", "ansatz_from_orbitals", "orbital_slater_part"]

OrbitalFunction = Callable[[jax.Array], jax.Array]  # x (3,) -> orbital values (n_orb,)


def _per_electron(orbitals: OrbitalFunction, n_occ: int, dtype) -> Callable:
    """Vectorise over electrons and check that at least ``n_occ`` orbitals come back."""
    shape = jax.eval_shape(orbitals, jax.ShapeDtypeStruct((3,), dtype)).shape
    if len(shape) != 1 or shape[0] < n_occ:
        raise ValueError(
            f"orbitals(x) must return a vector of at least {n_occ} values, got shape {shape}"
        )
    return jax.vmap(orbitals)


def orbital_slater_part(
    orbitals: OrbitalFunction,
    n_up: int,
    n_down: int,
    orbitals_down: OrbitalFunction | None = None,
    dtype=jnp.float64,
) -> SlaterPart:
    """One determinant per spin of the first ``n_up`` / ``n_down`` user orbitals."""
    if n_up < 0 or n_down < 0 or n_up + n_down == 0:
        raise ValueError(f"need n_up, n_down >= 0 and at least one electron, got {n_up}, {n_down}")
    up = _per_electron(orbitals, n_up, dtype)
    down = _per_electron(orbitals_down or orbitals, n_down, dtype)
    return SlaterPart(
        up,
        down,
        np.arange(n_up)[None],
        np.arange(n_down)[None],
        np.ones(1),
        n_up,
        n_down,
    )


def ansatz_from_orbitals(
    orbitals: OrbitalFunction,
    n_up: int,
    n_down: int,
    *,
    kind: str = "paulinet",
    coords: np.ndarray | None = None,
    charges: np.ndarray | None = None,
    orbitals_down: OrbitalFunction | None = None,
    options: AnsatzConfig | None = None,
    dtype=jnp.float64,
) -> Ansatz:
    """A wavefunction built on user orbitals.

    ``kind``: ``"paulinet"`` (neural backflow and Jastrow, sizes from ``options``),
    ``"generalized"`` (:mod:`nnqmc.ansatz.generalized`, switches from ``options``),
    ``"jastrow"`` (determinant x exp(gamma + simple J)) or ``"hf"`` (the bare determinant).
    ``coords`` (n_atoms, 3): nuclei the Jastrow/embedding may use (default: none);
    ``charges`` (n_atoms,): their charges, which the generalized ansatz's envelopes need.
    ``orbitals_down``: separate spin-down orbitals (default: the same as spin-up).
    """
    options = options or AnsatzConfig(kind=kind)
    slater = orbital_slater_part(orbitals, n_up, n_down, orbitals_down, dtype)
    coords = np.zeros((0, 3)) if coords is None else np.asarray(coords, np.float64)
    if kind in ("hf", "jastrow"):
        jastrow = kind == "jastrow"
        return slater_jastrow_from_part(slater, coords, jastrow, dtype, options.ee_cusp_range)
    if kind == "generalized":
        if len(coords) and charges is None:
            raise ValueError("kind 'generalized' with nuclei needs their charges")
        charges = np.zeros(0) if charges is None else np.asarray(charges, np.float64)
        return generalized_from_options(slater, coords, charges, options, dtype)
    if kind != "paulinet":
        raise ValueError(f"kind must be 'paulinet', 'generalized', 'jastrow' or 'hf', got {kind!r}")
    return paulinet_from_options(slater, coords, options, dtype)
