"""The same orbital in the same slot at every geometry of a molecule.

An SCF solves each geometry on its own: the signs of its MOs are arbitrary, nearly
degenerate ones may come out in another order, and exactly degenerate ones (N2's pi pair)
in any rotation among themselves. A network shared by several geometries
(:mod:`nnqmc.pes.shared`) attaches its backflow to orbital slots, so the occupied orbitals
of every geometry are rotated onto those of a reference geometry. With the overlap
``S = C_ref^T S_AB C_new`` of the occupied orbitals of one spin (``S_AB``: the AO cross
overlap of the two geometries, :func:`nnqmc.scf.ao_cross_overlap`) and its singular value
decomposition ``S = A Sigma B^T``, the occupied orbitals become ``C_new B A^T``: the
orthogonal Procrustes solution, the rotation of the new occupied space that maximises
``trace(C_ref^T S_AB C_new U)``. The new overlap is then the symmetric positive matrix
``A Sigma A^T``: every slot holds the orbital closest to the reference's, a permutation
with sign flips is undone exactly, and any mixing among (near-)degenerate orbitals too.

Only occupied orbitals are rotated, among themselves (the virtual columns are not used by
the single-determinant ansatz and stay as they are). A rotation ``U`` of the occupied
columns multiplies that spin's Slater determinant by ``det U = +-1``: the same state, at
most with the global sign of psi flipped, which no estimator sees (``|psi|^2`` sampling,
the local energy ``H psi / psi``, forces and the fixed-node DMC all are blind to a
global sign), so ``U`` is not forced to ``det U = +1`` (that would leave one orbital with a
negative overlap wherever the SCF flipped the sign of an odd number of them). A singular
value (the cosine of a principal angle between the two occupied spaces) below
:data:`MIN_OVERLAP` is no match (:class:`AlignmentError`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .molecule import Molecule
from .scf import SCFResult, ao_cross_overlap

__all__ = [
    "MIN_OVERLAP",
    "AlignmentError",
    "align_scf",
    "mo_overlap",
    "procrustes",
]

MIN_OVERLAP = 0.5
"""The smallest singular value of the occupied orbitals' overlap that still counts as the
same occupied space."""


class AlignmentError(ValueError):
    """The orbitals of a geometry cannot be matched to those of the reference."""


def procrustes(overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orthogonal ``U`` (new x new) that maximises ``trace(overlap @ U)`` (``overlap``:
    reference i x new j), and the singular values of ``overlap``: ``overlap = A Sigma B^T``
    gives ``U = B A^T`` and ``overlap @ U = A Sigma A^T``."""
    a, sigma, bt = np.linalg.svd(np.asarray(overlap, np.float64))
    return bt.T @ a.T, sigma


def mo_overlap(reference: np.ndarray, new: np.ndarray, ao_overlap: np.ndarray) -> np.ndarray:
    """``<phi_i(reference) | phi_j(new)>`` from MO coefficients (n_ao, n) of each geometry
    and their AO cross overlap (n_ao_reference, n_ao_new)."""
    return np.asarray(reference).T @ np.asarray(ao_overlap) @ np.asarray(new)


def _aligned_columns(
    reference: np.ndarray, new: np.ndarray, columns: np.ndarray, ao_overlap: np.ndarray
) -> tuple[np.ndarray, float]:
    """``new`` with its ``columns`` rotated onto those of ``reference`` (:func:`procrustes`);
    and the smallest singular value of their overlap (1 without columns)."""
    if columns.size == 0:
        return new, 1.0
    rotation, sigma = procrustes(mo_overlap(reference[:, columns], new[:, columns], ao_overlap))
    out = np.array(new, np.float64, copy=True)
    out[:, columns] = new[:, columns] @ rotation
    return out, float(np.min(sigma))


def align_scf(
    reference: SCFResult,
    reference_molecule: Molecule,
    scf: SCFResult,
    molecule: Molecule,
    basis: str | dict[str, str],
    min_overlap: float | None = None,
) -> SCFResult:
    """``scf`` (of ``molecule``) with its occupied orbitals rotated onto ``reference``'s (of
    ``reference_molecule``: the same atoms and electrons elsewhere; see the module doc).

    Single determinants only (ValueError for more); :class:`AlignmentError` where the two
    occupied spaces of a spin overlap with a singular value below ``min_overlap`` (default
    :data:`MIN_OVERLAP`)."""
    min_overlap = MIN_OVERLAP if min_overlap is None else min_overlap
    if len(reference.ci) != 1 or len(scf.ci) != 1:
        raise ValueError("orbital alignment handles single determinants only")
    ao = ao_cross_overlap(reference_molecule, molecule, basis)
    mos = {}
    for spin in ("up", "down"):
        columns = np.unique(getattr(scf, f"occ_{spin}"))
        ref_mo, new_mo = getattr(reference, f"mo_{spin}"), getattr(scf, f"mo_{spin}")
        mos[spin], weakest = _aligned_columns(ref_mo, new_mo, columns, ao)
        if weakest < min_overlap:
            raise AlignmentError(
                f"the occupied {spin}-spin orbitals overlap those at the reference geometry "
                f"with a singular value of {weakest:.2f} < {min_overlap}"
            )
    return dataclasses.replace(scf, mo_up=mos["up"], mo_down=mos["down"])
