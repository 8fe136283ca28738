"""The same orbital in the same slot at every geometry of a molecule.

An SCF solves each geometry on its own: the signs of its MOs are arbitrary, and nearly
degenerate ones may come out in another order. A network shared by several geometries
(:mod:`nnqmc.pes.shared`) attaches its backflow to orbital slots, so the occupied orbitals
of every geometry are matched to those of a reference geometry by their overlap
``S[i, j] = <phi_i(reference) | phi_j(new)>`` (the AO cross overlap of the two geometries,
:func:`nnqmc.scf.ao_cross_overlap`): a Hungarian assignment maximises ``sum |S[i, j]|``
over the occupied orbitals of each spin, and each matched orbital takes the sign of its
overlap. Only occupied orbitals are permuted, among themselves: the single determinant
stays the same state (a rotation among its occupied orbitals changes it only by a sign).
A match weaker than :data:`MIN_OVERLAP` is no match (:class:`AlignmentError`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .molecule import Molecule
from .scf import SCFResult, ao_cross_overlap

__all__ = [
    "MIN_OVERLAP",
    "AlignmentError",
    "Match",
    "align_scf",
    "match_orbitals",
    "mo_overlap",
]

MIN_OVERLAP = 0.5
"""The weakest |<phi_i(A)|phi_j(B)>| that still counts as the same orbital."""


class AlignmentError(ValueError):
    """The orbitals of a geometry cannot be matched to those of the reference."""


class Match(NamedTuple):
    """New orbital ``order[i]`` times ``signs[i]`` is reference orbital ``i``, with overlap
    ``overlaps[i]`` (> 0 after the sign)."""

    order: np.ndarray
    signs: np.ndarray
    overlaps: np.ndarray


def match_orbitals(overlap: np.ndarray) -> Match:
    """The assignment of the columns of ``overlap`` (reference i x new j) to its rows that
    maximises ``sum_i |overlap[i, order[i]]|``, with the signs that make each positive."""
    overlap = np.asarray(overlap, np.float64)
    rows, cols = linear_sum_assignment(-np.abs(overlap))
    values = overlap[rows, cols]
    signs = np.where(values < 0, -1.0, 1.0)
    return Match(cols, signs, np.abs(values))


def mo_overlap(reference: np.ndarray, new: np.ndarray, ao_overlap: np.ndarray) -> np.ndarray:
    """``<phi_i(reference) | phi_j(new)>`` from MO coefficients (n_ao, n) of each geometry
    and their AO cross overlap (n_ao_reference, n_ao_new)."""
    return np.asarray(reference).T @ np.asarray(ao_overlap) @ np.asarray(new)


def _aligned_columns(
    reference: np.ndarray, new: np.ndarray, columns: np.ndarray, ao_overlap: np.ndarray
) -> tuple[np.ndarray, float]:
    """``new`` with its ``columns`` permuted and sign-flipped onto those of ``reference``;
    and the weakest matched overlap (1 without columns)."""
    if columns.size == 0:
        return new, 1.0
    match = match_orbitals(mo_overlap(reference[:, columns], new[:, columns], ao_overlap))
    out = np.array(new, np.float64, copy=True)
    out[:, columns] = new[:, columns[match.order]] * match.signs
    return out, float(np.min(match.overlaps))


def align_scf(
    reference: SCFResult,
    reference_molecule: Molecule,
    scf: SCFResult,
    molecule: Molecule,
    basis: str | dict[str, str],
    min_overlap: float | None = None,
) -> SCFResult:
    """``scf`` (of ``molecule``) with its occupied orbitals in the order and with the signs
    of ``reference``'s (of ``reference_molecule``: the same atoms and electrons elsewhere).

    Single determinants only (ValueError for more); :class:`AlignmentError` where an
    orbital overlaps its best match by less than ``min_overlap`` (default
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
                f"an occupied {spin}-spin orbital overlaps its best match at the reference "
                f"geometry by {weakest:.2f} < {min_overlap}"
            )
    return dataclasses.replace(scf, mo_up=mos["up"], mo_down=mos["down"])
