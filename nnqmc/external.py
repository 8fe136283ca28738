"""Built-in external potentials and observables.

Sign conventions (atomic units, electron charge -1, nuclear charges +Z_I):

* :class:`UniformField` ``F``: ``V = + F . sum_i r_i - F . sum_I Z_I R_I``, the energy of the
  charges in the potential ``phi(r) = -F . r``. The field pushes electrons towards ``-F``;
  the dipole moment ``mu = sum_I Z_I R_I - sum_i r_i`` then points along ``+F`` and
  ``E(F) = E(0) - mu_0 . F - alpha F^2 / 2 - ...``.
* :class:`PointCharges` ``q_c`` at ``R_c``: ``V = - sum_{i,c} q_c / |r_i - R_c|
  + sum_{I,c} Z_I q_c / |R_I - R_c|`` (the charges do not interact with each other).
* :class:`HarmonicTrap` ``omega`` centred at ``c``: ``V = 1/2 omega^2 sum_i |r_i - c|^2``
  (electrons only; nuclei are fixed).

Each term also gives its one-electron AO matrix (``hcore``) for the Hartree–Fock run, so the
orbitals of the ansatz are those of the molecule *in* the external potential.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .hamiltonian import ExternalPotential, Hamiltonian, nuclei
from .molecule import MIN_NUCLEAR_DISTANCE, closest_overlap

__all__ = [
    "HarmonicTrap",
    "Observable",
    "PointCharges",
    "UniformField",
    "dipole_moment",
    "external_terms",
    "hcore_function",
    "scf_external",
    "standard_observables",
]

# One walker's positions (n_elec, 3) -> an array of any fixed shape.
Observable = Callable[[jax.Array], jax.Array]


def _vector3(value: Sequence[float], name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be three finite numbers, got {value!r}")
    return v


@dataclass(frozen=True)
class UniformField:
    """A uniform electric field ``F`` (a.u., 1 a.u. = 5.14e11 V/m): ``V = F . (sum_i r_i -
    sum_I Z_I R_I)``."""

    field: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", tuple(_vector3(self.field, "field").tolist()))

    def electron_potential(self, r: jax.Array) -> jax.Array:
        """``F . sum_i r_i``."""
        return jnp.sum(r @ jnp.asarray(self.field, r.dtype))

    def nuclear_energy(self, charges: np.ndarray, coords: np.ndarray) -> float:
        """``-F . sum_I Z_I R_I``."""
        return -float(np.sum(charges[:, None] * coords @ np.asarray(self.field)))

    def hcore(self, mol: Any) -> np.ndarray:
        """``F . <mu| r |nu>`` (dipole integrals about the origin)."""
        with mol.with_common_orig((0.0, 0.0, 0.0)):
            ints = mol.intor("int1e_r")  # (3, n_ao, n_ao)
        return np.einsum("k,kij->ij", np.asarray(self.field), ints)


@dataclass(frozen=True)
class PointCharges:
    """Fixed classical point charges ``charges[c]`` at ``coords[c]`` (bohr)."""

    charges: tuple[float, ...]
    coords: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        q = np.asarray(self.charges, dtype=np.float64).reshape(-1)
        c = np.asarray(self.coords, dtype=np.float64).reshape(-1, 3)
        if len(q) != len(c) or not (np.all(np.isfinite(q)) and np.all(np.isfinite(c))):
            raise ValueError("point charges need one finite (x, y, z) per finite charge")
        object.__setattr__(self, "charges", tuple(q.tolist()))
        object.__setattr__(self, "coords", tuple(map(tuple, c.tolist())))

    def check_nuclei(self, coords: np.ndarray) -> None:
        """ValueError if a charge sits on a nucleus (closer than the limit for two atoms,
        :data:`nnqmc.molecule.MIN_NUCLEAR_DISTANCE`): its energy would be infinite."""
        close = closest_overlap(np.asarray(self.coords), coords)
        if close is not None:
            c, i, d = close
            where = ", ".join(f"{x:g}" for x in self.coords[c])
            raise ValueError(
                f"point charge {c + 1} at ({where}) lies {d:.3g} bohr from nucleus {i + 1}; "
                f"point charges must be at least {MIN_NUCLEAR_DISTANCE:g} bohr from every nucleus"
            )

    def electron_potential(self, r: jax.Array) -> jax.Array:
        """``- sum_{i,c} q_c / |r_i - R_c|``."""
        q = jnp.asarray(self.charges, r.dtype)
        d = r[:, None, :] - jnp.asarray(self.coords, r.dtype).reshape(-1, 3)[None]
        return -jnp.sum(q / jnp.sqrt(jnp.sum(d * d, axis=-1)))

    def nuclear_energy(self, charges: np.ndarray, coords: np.ndarray) -> float:
        """``sum_{I,c} Z_I q_c / |R_I - R_c|``; ValueError for a charge on a nucleus."""
        self.check_nuclei(coords)
        c = np.asarray(self.coords).reshape(-1, 3)
        d = np.linalg.norm(coords[:, None, :] - c[None], axis=-1)
        return float(np.sum(charges[:, None] * np.asarray(self.charges)[None] / d))

    def hcore(self, mol: Any) -> np.ndarray:
        """``- sum_c q_c <mu| 1/|r - R_c| |nu>``."""
        total = np.zeros((mol.nao, mol.nao))
        for q, center in zip(self.charges, self.coords, strict=True):
            with mol.with_rinv_origin(center):
                total -= q * mol.intor("int1e_rinv")
        return total


@dataclass(frozen=True)
class HarmonicTrap:
    """An isotropic harmonic confinement ``1/2 omega^2 sum_i |r_i - center|^2``."""

    omega: float
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.omega) and self.omega > 0):
            raise ValueError(f"omega must be > 0, got {self.omega!r}")
        object.__setattr__(self, "center", tuple(_vector3(self.center, "center").tolist()))

    def electron_potential(self, r: jax.Array) -> jax.Array:
        """``1/2 omega^2 sum_i |r_i - center|^2``."""
        d = r - jnp.asarray(self.center, r.dtype)
        return 0.5 * self.omega**2 * jnp.sum(d * d)

    def nuclear_energy(self, charges: np.ndarray, coords: np.ndarray) -> float:
        """Zero: the trap acts on the electrons only."""
        return 0.0

    def hcore(self, mol: Any) -> np.ndarray:
        """``1/2 omega^2 <mu| |r - center|^2 |nu>``."""
        with mol.with_common_orig(self.center):
            return 0.5 * self.omega**2 * mol.intor("int1e_r2")


def external_terms(settings: Any) -> tuple[ExternalPotential, ...]:
    """The terms of a ``[hamiltonian]`` section (:class:`nnqmc.config.HamiltonianConfig`)."""
    if settings is None:
        return ()
    terms: list[ExternalPotential] = []
    if settings.field is not None:
        terms.append(UniformField(settings.field))
    if settings.point_charges:
        table = np.asarray(settings.point_charges, dtype=np.float64).reshape(-1, 4)
        terms.append(PointCharges(tuple(table[:, 0]), tuple(map(tuple, table[:, 1:]))))
    if settings.harmonic is not None:
        terms.append(HarmonicTrap(settings.harmonic, settings.harmonic_center))
    return tuple(terms)


def hcore_function(
    external: Sequence[ExternalPotential],
) -> Callable[[Any], np.ndarray] | None:
    """``mol -> sum of the terms' AO matrices`` for the SCF, or None without terms."""
    external = tuple(external)
    if not external:
        return None
    return lambda mol: sum(term.hcore(mol) for term in external)


def dipole_moment(charges: np.ndarray, coords: Any) -> Observable:
    """The observable ``mu(r) = sum_I Z_I R_I - sum_i r_i`` (e bohr; 1 a.u. = 2.5417 D);
    ``coords`` may be a (traced) JAX array."""
    charges = np.asarray(charges, np.float64).reshape(-1, 1)

    def mu(r: jax.Array) -> jax.Array:
        z = jnp.asarray(charges, r.dtype)
        nuclear = jnp.sum(z * jnp.asarray(coords, r.dtype).reshape(-1, 3), axis=0)
        return nuclear - jnp.sum(r, axis=0)

    return mu


def standard_observables(hamiltonian: Hamiltonian) -> dict[str, Observable]:
    """The observables every evaluation reports: the dipole moment (about the origin)."""
    return {"dipole": dipole_moment(*nuclei(hamiltonian))}


def scf_external(
    external: Sequence[ExternalPotential], charges: np.ndarray, coords: np.ndarray
) -> dict[str, Any]:
    """Keyword arguments of :func:`nnqmc.scf.run_scf` that put ``external`` into the SCF."""
    charges = np.asarray(charges, np.float64).reshape(-1)
    coords = np.asarray(coords, np.float64).reshape(-1, 3)
    return {
        "hcore_extra": hcore_function(external),
        "energy_shift": float(sum(t.nuclear_energy(charges, coords) for t in external)),
    }
