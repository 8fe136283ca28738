"""The same orbital in the same slot at every geometry of a molecule (docs/pes.md,
"Shared training").

An SCF gives each geometry's MOs arbitrary signs, near-degenerate ones in any order and
degenerate ones (N2's pi pair) in any rotation; a network shared across geometries
(:mod:`nnqmc.pes.shared`) attaches its backflow to slots. So the occupied orbitals of each
spin are rotated onto a reference geometry's: with ``S = C_ref^T S_AB C_new``
(:func:`nnqmc.scf.ao_cross_overlap`) and ``S = A Sigma B^T``, ``C_new <- C_new B A^T``, the
orthogonal Procrustes rotation maximising ``trace(C_ref^T S_AB C_new U)``. The determinant
changes at most by its sign (``det U = +-1``), which no estimator sees, so ``det U = +1`` is
not forced. A singular value below :data:`MIN_OVERLAP` is no match (:class:`AlignmentError`).
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
