"""Baselines and Hessians from PySCF for scans: the RHF Hessian (normal modes) and the
CCSD(T) energy. The molecular Hamiltonian only (no ``[hamiltonian]`` external terms)."""

from __future__ import annotations

import numpy as np

from ..molecule import Molecule
from ..scf import _pyscf_mol


def _mean_field(molecule: Molecule, basis: str):
    from pyscf import scf

    mol = _pyscf_mol(molecule, basis)
    mf = scf.RHF(mol) if molecule.spin == 0 else scf.UHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    if not mf.converged:
        raise RuntimeError("Hartree-Fock did not converge")
    return mol, mf


def rhf_hessian(molecule: Molecule, basis: str) -> tuple[np.ndarray, np.ndarray]:
    """The Cartesian HF Hessian (3N, 3N) in hartree/bohr² and the atomic masses (amu)."""
    mol, mf = _mean_field(molecule, basis)
    hessian = mf.Hessian().kernel()  # (N, N, 3, 3)
    n = mol.natm
    return hessian.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n), np.asarray(mol.atom_mass_list())


def ccsd_t_energy(molecule: Molecule, basis: str) -> float:
    """Total CCSD(T) energy (hartree) on an RHF (closed shell) or UHF reference."""
    from pyscf import cc

    _, mf = _mean_field(molecule, basis)
    if molecule.n_elec < 2:
        return float(mf.e_tot)
    ccsd = cc.CCSD(mf)
    ccsd.kernel()
    return float(ccsd.e_tot + ccsd.ccsd_t())
