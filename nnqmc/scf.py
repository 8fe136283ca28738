"""Hartree–Fock (and CASSCF) from PySCF, returned as plain arrays.

This is the only module that imports PySCF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .molecule import Molecule


class BasisError(ValueError):
    """A basis-set name PySCF does not know for one of the elements."""


@dataclass(frozen=True)
class Shell:
    """One contracted shell: ``n_ctr`` functions sharing exponents, each ``2l+1`` AOs.

    ``coeffs`` are PySCF's libcint coefficients (radial normalisation included), so
    ``chi(r) = sum_p coeffs[p, c] exp(-exponents[p] |r - R|^2) * S_lm(r - R)`` where the
    angular part follows libcint's conventions (see ``orbitals.py``).
    """

    center: int
    l: int
    exponents: np.ndarray
    coeffs: np.ndarray  # (n_prim, n_ctr)


@dataclass(frozen=True)
class GaussianBasis:
    shells: tuple[Shell, ...]
    centers: np.ndarray  # (n_atoms, 3) bohr
    n_ao: int


@dataclass(frozen=True)
class SCFResult:
    """Orbitals and a determinant expansion ``sum_p ci[p] det_up[p] det_down[p]``.

    ``mo_up``/``mo_down`` are (n_ao, n_mo) MO coefficients for each spin channel;
    ``occ_up[p]``/``occ_down[p]`` index the orbitals occupied in determinant ``p``.
    For Hartree–Fock there is one determinant with the lowest orbitals occupied.
    """

    basis: GaussianBasis
    mo_up: np.ndarray
    mo_down: np.ndarray
    occ_up: np.ndarray  # (n_det, n_up) int
    occ_down: np.ndarray  # (n_det, n_down) int
    ci: np.ndarray  # (n_det,)
    energy: float  # HF energy (total, with nuclear repulsion)
    method: str
    cas_energy: float | None = None


def _pyscf_mol(molecule: Molecule, basis: str):
    from pyscf import gto

    atoms = [(s, tuple(float(x) for x in c)) for s, c in zip(molecule.symbols, molecule.coords)]
    return gto.M(
        atom=atoms,
        unit="Bohr",
        basis=basis,
        charge=molecule.charge,
        spin=molecule.spin,
        verbose=0,
    )


def check_basis(basis: str, symbols: tuple[str, ...] | list[str]) -> None:
    """Raise ``BasisError`` unless PySCF knows ``basis`` for every element."""
    from pyscf.gto import basis as pyscf_basis

    for symbol in sorted(set(symbols)):
        try:
            data = pyscf_basis.load(basis, symbol)
        except Exception:
            data = None
        if not data:
            raise BasisError(f"basis {basis!r} is not known for element {symbol}")


def gaussian_basis(mol) -> GaussianBasis:
    """Shells of a PySCF ``Mole`` in PySCF's AO order."""
    shells = []
    for ib in range(mol.nbas):
        shells.append(
            Shell(
                center=int(mol.bas_atom(ib)),
                l=int(mol.bas_angular(ib)),
                exponents=np.array(mol.bas_exp(ib), dtype=np.float64),
                coeffs=np.array(mol._libcint_ctr_coeff(ib), dtype=np.float64),
            )
        )
    return GaussianBasis(tuple(shells), np.array(mol.atom_coords(), dtype=np.float64), mol.nao)


def run_hf(molecule: Molecule, basis: str) -> SCFResult:
    """RHF for closed shells, UHF for open shells (stability-checked)."""
    from pyscf import scf

    mol = _pyscf_mol(molecule, basis)
    if molecule.spin == 0:
        mf = scf.RHF(mol)
        mf.kernel()
        mo_up = mo_down = np.asarray(mf.mo_coeff)
        method = "RHF"
    else:
        mf = scf.UHF(mol)
        mf.kernel()
        mo_internal = mf.stability()[0]
        if mo_internal is not mf.mo_coeff:
            dm = mf.make_rdm1(mo_internal, mf.mo_occ)
            mf.kernel(dm)
        mo_up, mo_down = (np.asarray(c) for c in mf.mo_coeff)
        method = "UHF"
    if not mf.converged:
        raise RuntimeError(f"{method} did not converge for this molecule and basis")
    return SCFResult(
        basis=gaussian_basis(mol),
        mo_up=mo_up,
        mo_down=mo_down,
        occ_up=np.arange(molecule.n_up)[None],
        occ_down=np.arange(molecule.n_down)[None],
        ci=np.ones(1),
        energy=float(mf.e_tot),
        method=method,
    )
