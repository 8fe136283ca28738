"""Hamiltonians: the potential energy of one walker and the local energy ``H psi / psi``.

A Hamiltonian is anything with ``n_up``, ``n_down`` and a JAX-traceable
``potential(r) -> scalar`` for one walker ``r`` of shape ``(n_elec, 3)`` (bohr, the first
``n_up`` rows spin-up); the kinetic energy ``-1/2 sum_i nabla_i^2`` is generic. A
Hamiltonian with nuclei also has ``charges`` (n_atoms,) and ``coords`` (n_atoms, 3); one
without (Hooke's atom, quantum dots) may leave them out.

External one-body potentials (:mod:`nnqmc.external`: a uniform field, point charges, a
harmonic trap) are added with ``MolecularHamiltonian(..., external=terms)`` or, for any
Hamiltonian, :func:`with_external`.

Effective core potentials (:mod:`nnqmc.ecp`): a Hamiltonian with ``ecp`` arrays has the
local channel in its ``potential`` and a nonlocal term, which needs the wavefunction:
``nonlocal_elements(signed_log_psi, r, key)`` (see :func:`nonlocal_of`). The charges are
then the effective ones, ``Z - core``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from .ecp import (
    batch_nonlocal_elements,
    electron_elements,
    local_potential,
    nonlocal_elements,
    quadrature,
    random_rotation,
)
from .laplacian import KINETIC_ENGINES, KINETIC_JETS

__all__ = [
    "ExtendedHamiltonian",
    "ExternalPotential",
    "batch_nonlocal_of",
    "Hamiltonian",
    "MolecularHamiltonian",
    "electron_nuclear_distances",
    "local_energy",
    "electron_nonlocal_of",
    "nonlocal_energy",
    "nonlocal_of",
    "nuclei",
    "pair_distances",
    "positions",
    "with_external",
]


@runtime_checkable
class Hamiltonian(Protocol):
    """Electron counts and the potential energy of one walker (atomic units).

    ``potential(r)`` must be JAX-traceable; ``r`` has shape ``(n_up + n_down, 3)``.
    """

    n_up: int
    n_down: int

    def potential(self, r: jax.Array) -> jax.Array: ...


@runtime_checkable
class ExternalPotential(Protocol):
    """A one-body external potential ``sum_i v(r_i)`` plus its energy with the nuclei.

    ``hcore(mol)`` is the same potential as an AO matrix of a PySCF ``Mole``, so that the
    Hartree–Fock orbitals (and hence the ansatz) feel it too.
    """

    def electron_potential(self, r: jax.Array) -> jax.Array: ...

    def nuclear_energy(self, charges: np.ndarray, coords: np.ndarray) -> float: ...

    def hcore(self, mol: Any) -> np.ndarray: ...


def pair_distances(r: jax.Array) -> jax.Array:
    """Distances ``|r_i - r_j|`` for i < j, safe for gradients."""
    i, j = np.triu_indices(r.shape[0], k=1)
    d = r[i] - r[j]
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def electron_nuclear_distances(r: jax.Array, coords: jax.Array) -> jax.Array:
    """Distances ``|r_i - R_I|``, shape (n_elec, n_atoms)."""
    d = r[:, None, :] - coords[None, :, :]
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def positions(coords: Any) -> Any:
    """Nuclear positions as (n_atoms, 3): a NumPy float64 array, or the JAX array itself
    when ``coords`` is one (e.g. traced, when one compiled program serves many geometries)."""
    if isinstance(coords, jax.Array):
        return coords.reshape(-1, 3)
    return np.asarray(coords, dtype=np.float64).reshape(-1, 3)


def nuclei(hamiltonian: Hamiltonian) -> tuple[np.ndarray, np.ndarray]:
    """``(charges, coords)`` of a Hamiltonian's nuclei; empty arrays if it has none (the
    coordinates stay a JAX array if they are one, see :func:`positions`)."""
    charges = np.asarray(getattr(hamiltonian, "charges", np.zeros(0)), np.float64).reshape(-1)
    return charges, positions(getattr(hamiltonian, "coords", np.zeros((0, 3))))


def _check_external(
    external: Sequence[ExternalPotential], charges: np.ndarray, coords: np.ndarray
) -> None:
    """Let each term refuse the nuclei it is placed with (``check_nuclei``, optional: e.g.
    a point charge on a nucleus), so that the error comes when the Hamiltonian is built."""
    for term in external:
        check = getattr(term, "check_nuclei", None)
        if check is not None and len(charges):
            check(coords)


def _external_energy(
    external: Sequence[ExternalPotential], r: jax.Array, charges: np.ndarray, coords: np.ndarray
) -> jax.Array:
    total = jnp.zeros((), r.dtype)
    for term in external:
        total = total + term.electron_potential(r) + term.nuclear_energy(charges, coords)
    return total


@dataclass(frozen=True)
class MolecularHamiltonian:
    """Electrons and fixed point nuclei interacting by Coulomb's law, plus external terms.

    ``charges``/``coords`` may be empty (no nuclei): then the potential is the electron–
    electron repulsion plus the ``external`` terms (e.g. a harmonic trap: Hooke's atom).
    ``coords`` may be a JAX array, also a traced one (one compiled program for every
    geometry of a scan), with the energy without electrons then given as ``constant``.

    ``constant`` is that energy *at* ``coords`` (nuclear repulsion plus the external terms'
    energy with the nuclei), not an offset: with concrete ``coords`` it must equal the one
    computed from them, so one left over from other positions
    (``dataclasses.replace(h, coords=...)``) is refused; pass ``constant=None`` with new
    ``coords`` to have it computed.
    """

    charges: np.ndarray
    coords: np.ndarray
    n_up: int
    n_down: int
    external: tuple[ExternalPotential, ...] = ()
    # effective core potentials: :func:`nnqmc.ecp.ecp_arrays` of the atoms (charges are then
    # Z - core) and the points of the nonlocal quadrature
    ecp: dict[str, np.ndarray] | None = None
    ecp_points: int = 12
    # the energy without electrons (possibly traced); None: :attr:`constant_energy`'s sum
    constant: Any = None

    def __post_init__(self) -> None:
        if self.external and not isinstance(self.coords, jax.core.Tracer):
            _check_external(self.external, *nuclei(self))
        if self.ecp is not None:
            quadrature(self.ecp_points)  # an unknown rule fails here
        if self.constant is not None:
            self._check_constant()

    def _check_constant(self) -> None:
        """ValueError unless ``constant`` is the energy without electrons at ``coords``
        (unchecked where either is traced)."""
        if any(isinstance(x, jax.core.Tracer) for x in (self.coords, self.constant)):
            return
        computed = self._energy_without_electrons()
        if not np.allclose(self.constant, computed, rtol=1e-10, atol=1e-10):
            raise ValueError(
                f"constant = {np.asarray(self.constant).tolist()!r} is not the energy without "
                f"electrons at these nuclei ({computed!r}): left over from other coords? "
                "Give constant=None"
            )

    @classmethod
    def without_nuclei(
        cls, n_up: int, n_down: int, external: Sequence[ExternalPotential] = ()
    ) -> MolecularHamiltonian:
        """Interacting electrons in the ``external`` potentials only."""
        return cls(np.zeros(0), np.zeros((0, 3)), n_up, n_down, tuple(external))

    @property
    def nuclear_repulsion(self) -> float:
        """Coulomb energy of the nuclei among themselves (external terms not included)."""
        z, c = np.asarray(self.charges), np.asarray(self.coords).reshape(-1, 3)
        i, j = np.triu_indices(len(z), k=1)
        return float(np.sum(z[i] * z[j] / np.linalg.norm(c[i] - c[j], axis=-1)))

    @property
    def constant_energy(self) -> Any:
        """The part of the potential without electrons: ``constant`` where given, else the
        nuclear repulsion plus the external terms' energy with the nuclei."""
        if self.constant is not None:
            return self.constant
        return self._energy_without_electrons()

    def _energy_without_electrons(self) -> float:
        charges, coords = nuclei(self)
        return self.nuclear_repulsion + sum(
            (t.nuclear_energy(charges, coords) for t in self.external), 0.0
        )

    def potential(self, r: jax.Array) -> jax.Array:
        """Electron–nucleus + electron–electron + the constant energy + the external
        one-body terms + the local channel of the ECPs."""
        charges, coords = nuclei(self)
        coords = jnp.asarray(coords, r.dtype)
        charges = jnp.asarray(charges, r.dtype)
        v_en = -jnp.sum(charges / electron_nuclear_distances(r, coords))
        v_ee = jnp.sum(1.0 / pair_distances(r)) if r.shape[0] > 1 else 0.0
        v_ext = sum((t.electron_potential(r) for t in self.external), jnp.zeros((), r.dtype))
        v_ecp = _ecp_local(self.ecp, coords, r)
        return v_en + v_ee + jnp.asarray(self.constant_energy, r.dtype) + v_ext + v_ecp

    def nonlocal_elements(
        self, signed_log_psi: Callable[[jax.Array], tuple[jax.Array, jax.Array]], r, key
    ) -> tuple[jax.Array, jax.Array]:
        """The ECPs' nonlocal matrix elements of one walker and the positions they lead to
        (:func:`nnqmc.ecp.nonlocal_elements`); their sum is ``(V_nl psi)/psi``."""
        return _ecp_nonlocal(self.ecp, self.ecp_points, self.coords, signed_log_psi, r, key)

    def electron_nonlocal_elements(self, signed_log_psi, r: jax.Array, i: jax.Array, key):
        """Electron ``i``'s nonlocal elements of one walker, flattened over atoms and points
        (:func:`nnqmc.ecp.electron_elements`): what its T-move chooses from."""
        return _ecp_electron(self, signed_log_psi, r, i, key)


@dataclass(frozen=True)
class ExtendedHamiltonian:
    """Any Hamiltonian ``base`` plus external one-body terms (see :func:`with_external`)."""

    base: Hamiltonian
    external: tuple[ExternalPotential, ...]

    def __post_init__(self) -> None:
        if self.external:
            _check_external(self.external, *nuclei(self.base))

    @property
    def n_up(self) -> int:
        """Spin-up electrons of ``base``."""
        return self.base.n_up

    @property
    def n_down(self) -> int:
        """Spin-down electrons of ``base``."""
        return self.base.n_down

    @property
    def charges(self) -> np.ndarray:
        """Nuclear charges of ``base`` (empty if it has none)."""
        return nuclei(self.base)[0]

    @property
    def coords(self) -> np.ndarray:
        """Nuclear positions of ``base`` in bohr (empty if it has none)."""
        return nuclei(self.base)[1]

    @property
    def ecp(self) -> Any:
        """The ECP arrays of ``base`` (None without)."""
        return getattr(self.base, "ecp", None)

    def potential(self, r: jax.Array) -> jax.Array:
        """``base.potential(r)`` plus the external terms."""
        charges, coords = nuclei(self.base)
        return self.base.potential(r) + _external_energy(self.external, r, charges, coords)

    def nonlocal_elements(self, signed_log_psi, r, key) -> tuple[jax.Array, jax.Array]:
        """The nonlocal term of ``base``."""
        return self.base.nonlocal_elements(signed_log_psi, r, key)

    def electron_nonlocal_elements(self, signed_log_psi, r: jax.Array, i: jax.Array, key):
        """One electron's nonlocal elements of ``base``."""
        return electron_nonlocal_of(self.base)(signed_log_psi, r, i, key)


def _ecp_local(ecp: Any, coords: jax.Array, r: jax.Array) -> jax.Array:
    if ecp is None:
        return jnp.zeros((), r.dtype)
    return local_potential(ecp, coords, r)


def _ecp_nonlocal(ecp, points, coords, signed_log_psi, r, key) -> tuple[jax.Array, jax.Array]:
    if ecp is None:
        raise ValueError("this Hamiltonian has no effective core potential")
    nodes, weights = quadrature(points)
    return nonlocal_elements(signed_log_psi, ecp, positions(coords), r, key, nodes, weights)


def _ecp_electron(hamiltonian, signed_log_psi, r, i, key) -> tuple[jax.Array, jax.Array]:
    nodes, weights = quadrature(hamiltonian.ecp_points)
    coords = positions(hamiltonian.coords)
    rotation = random_rotation(key, r.dtype)
    return electron_elements(
        signed_log_psi, hamiltonian.ecp, coords, r, i, rotation, nodes, weights
    )


NonlocalTerm = Callable[
    [Callable[[jax.Array], tuple[jax.Array, jax.Array]], jax.Array, jax.Array],
    tuple[jax.Array, jax.Array],
]
"""``(signed_log_psi, r, key) -> (elements, moved)`` of one walker (see :mod:`nnqmc.ecp`)."""


def nonlocal_of(hamiltonian: Any) -> NonlocalTerm | None:
    """The Hamiltonian's nonlocal term, or None if it has none: any Hamiltonian may add
    one by a ``nonlocal_elements`` method and a non-None ``ecp`` attribute (a custom
    nonlocal operator may define ``nonlocal_elements`` with ``ecp = True``)."""
    method = getattr(hamiltonian, "nonlocal_elements", None)
    if method is None or getattr(hamiltonian, "ecp", None) is None:
        return None
    return method


BatchNonlocalTerm = Callable[..., tuple[jax.Array, jax.Array]]
"""``(signed_log_psi, r, keys, **blocks) -> (elements, moved)`` of a batch of walkers ``r``
(W, n, 3) with one key per walker (W, 2), ``blocks`` the keywords ``blocks`` or
``block_evaluations`` of :func:`nnqmc.ecp.batch_nonlocal_elements`."""


def batch_nonlocal_of(hamiltonian: Any) -> BatchNonlocalTerm | None:
    """The ECP nonlocal term over a batch of walkers, evaluating ψ only inside the cutoff,
    for a :class:`MolecularHamiltonian` with ECPs (or an
    :class:`ExtendedHamiltonian` around one); None for any other Hamiltonian, whose
    ``nonlocal_elements`` is evaluated walker by walker. Walker ``w`` gets the rotation
    ``nonlocal_elements(..., keys[w])`` would draw."""
    if isinstance(hamiltonian, ExtendedHamiltonian):
        return batch_nonlocal_of(hamiltonian.base)
    # not subclasses: they may override the term
    if type(hamiltonian) is not MolecularHamiltonian or hamiltonian.ecp is None:
        return None
    nodes, weights = quadrature(hamiltonian.ecp_points)

    def term(signed_log_psi, r, keys, **blocks):
        coords = positions(hamiltonian.coords)
        return batch_nonlocal_elements(
            signed_log_psi, hamiltonian.ecp, coords, r, keys, nodes, weights, **blocks
        )

    return term


def electron_nonlocal_of(hamiltonian: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``(signed_log_psi, r, i, key) -> (elements, moved)``: electron ``i``'s row of the
    nonlocal term, flattened (what its T-move chooses from). The Hamiltonian's own
    ``electron_nonlocal_elements`` where it has one; else row ``i`` of its
    ``nonlocal_elements``, whose leading axis must be the electrons (correct, and n times
    dearer)."""
    method = getattr(hamiltonian, "electron_nonlocal_elements", None)
    if method is not None:
        return method
    term = nonlocal_of(hamiltonian)
    if term is None:
        raise ValueError("this Hamiltonian has no nonlocal term")

    def row(signed_log_psi, r, i, key):
        elements, moved = term(signed_log_psi, r, key)
        n = r.shape[0]
        return elements.reshape(n, -1)[i], moved.reshape(n, -1, 3)[i]

    return row


def with_external(hamiltonian: Hamiltonian, external: Sequence[ExternalPotential]) -> Hamiltonian:
    """``hamiltonian`` with the ``external`` one-body terms added (itself if there are none)."""
    external = tuple(external)
    if not external:
        return hamiltonian
    if isinstance(hamiltonian, MolecularHamiltonian):
        return dataclasses.replace(hamiltonian, external=hamiltonian.external + external)
    return ExtendedHamiltonian(hamiltonian, external)


def local_energy(
    log_psi: Callable[[jax.Array], jax.Array],
    hamiltonian: Hamiltonian,
    r: jax.Array,
    engine: str = "exact",
    *,
    signed_log_psi: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """``E_L(r) = -1/2 (nabla^2 log|psi| + |nabla log|psi||^2) + V(r)`` for one walker,
    plus ``(V_nl psi)/psi`` for a Hamiltonian with a nonlocal term (which needs
    ``signed_log_psi: r -> (sign, log|psi|)`` and a random ``key`` for the quadrature)."""
    e = KINETIC_ENGINES[engine](log_psi, r) + hamiltonian.potential(r)
    return e + nonlocal_energy(hamiltonian, signed_log_psi, r, key)


def nonlocal_energy(
    hamiltonian: Hamiltonian,
    signed_log_psi: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None,
    r: jax.Array,
    key: jax.Array | None,
) -> jax.Array:
    """``(V_nl psi)/psi`` of one walker; 0 for a Hamiltonian without a nonlocal term."""
    term = nonlocal_of(hamiltonian)
    if term is None:
        return jnp.zeros((), r.dtype)
    if signed_log_psi is None or key is None:
        raise ValueError("a nonlocal potential needs signed_log_psi and a key")
    return jnp.sum(term(signed_log_psi, r, key)[0])


def local_jet(
    log_psi: Callable[[jax.Array], jax.Array],
    hamiltonian: Hamiltonian,
    r: jax.Array,
    engine: str = "exact",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log|psi|, grad log|psi|, E_L)`` for one walker, from one pass of the engine."""
    f, g, t = KINETIC_JETS[engine](log_psi, r)
    return f, g, t + hamiltonian.potential(r)
