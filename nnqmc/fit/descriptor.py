"""The GDML descriptor and the permutations of identical atoms.

The descriptor of a geometry x (n_atoms, 3) is the vector of inverse interatomic distances

    d(x)_{ij} = 1 / |x_i - x_j|,   i < j   (bohr⁻¹),

invariant under translations and rotations of x. Permuting identical atoms, x -> P x,
permutes the entries of d; the kernel is averaged over every such P (:mod:`.kernel`), so the
fitted energy is invariant under them too.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np

from .errors import FitError

MAX_PERMUTATIONS = 720


class SymmetryError(FitError):
    """Too many permutations of identical atoms to enumerate."""


def pairs(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """The atom indices (i, j), i < j, of the descriptor's entries, in order."""
    i, j = np.triu_indices(n_atoms, k=1)
    return i, j


def inverse_distances(x: jnp.ndarray) -> jnp.ndarray:
    """d(x) = (1/|x_i - x_j|)_{i<j} of one geometry x (n_atoms, 3), bohr⁻¹."""
    i, j = pairs(x.shape[0])
    diff = x[i] - x[j]
    return 1.0 / jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def permutation_count(atomic_numbers: np.ndarray) -> int:
    """|G| = prod_Z n_Z!, the number of permutations of same-element atoms."""
    _, counts = np.unique(np.asarray(atomic_numbers), return_counts=True)
    return math.prod(math.factorial(int(c)) for c in counts)


def atom_permutations(atomic_numbers: np.ndarray, limit: int = MAX_PERMUTATIONS) -> np.ndarray:
    """Every permutation P of atoms that only exchanges atoms of the same element, as rows
    of atom indices (|G|, n_atoms), identity first: geometry x -> x[P].

    SymmetryError if there are more than ``limit`` (the kernel sums over all of them)."""
    z = np.asarray(atomic_numbers)
    count = permutation_count(z)
    if count > limit:
        raise SymmetryError(
            f"{count} permutations of identical atoms (more than {limit}); fit without "
            "permutation symmetry (symmetric=False, nnqmc fit --no-symmetry)"
        )
    groups = [np.flatnonzero(z == element) for element in np.unique(z)]
    rows = []
    for choice in itertools.product(*(itertools.permutations(g) for g in groups)):
        perm = np.arange(len(z))
        for group, image in zip(groups, choice, strict=True):
            perm[group] = image
        rows.append(perm)
    rows.sort(key=lambda p: (not np.array_equal(p, np.arange(len(z))), tuple(p)))
    return np.array(rows, dtype=np.int64).reshape(count, len(z))


def identity_permutation(n_atoms: int) -> np.ndarray:
    """The trivial group (no symmetrization), shape (1, n_atoms)."""
    return np.arange(n_atoms, dtype=np.int64)[None]


def pair_permutations(atom_perms: np.ndarray) -> np.ndarray:
    """For each atom permutation P, the index map of descriptor entries: d(x[P]) = d(x)[Q]
    with Q (|G|, n_pairs)."""
    n_atoms = atom_perms.shape[1]
    i, j = pairs(n_atoms)
    index = np.full((n_atoms, n_atoms), -1, np.int64)
    index[i, j] = np.arange(len(i))
    index[j, i] = index[i, j]
    return np.stack([index[p[i], p[j]] for p in atom_perms]).reshape(len(atom_perms), len(i))
