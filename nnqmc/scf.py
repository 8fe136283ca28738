"""Hartree–Fock (and CASSCF) from PySCF, returned as plain arrays.

This is the only module that imports PySCF.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from .molecule import Molecule
from .pseudopotentials import (
    ECPError,
)


class BasisError(ValueError):
    """A basis-set name PySCF does not know for one of the elements."""


BasisSpec = str | dict[str, str]
"""One basis name for every element, or element -> name."""

F = TypeVar("F", bound=Callable[..., Any])


def one_thread(fn: F) -> F:
    """Decorator: PySCF on one OpenMP thread while ``fn`` runs (the caller's count restored).

    Threaded, PySCF sums the Coulomb and exchange matrices from per-thread parts whose split
    depends on scheduling, so the orbitals change in their last bits from one call or process
    to the next, and every energy of a run with them (a run resumed in a new process would
    not continue the one it resumes). On one thread they are the same in every process.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pyscf import lib

        with lib.with_omp_threads(1):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
    hf_method: str = ""  # the method of ``energy`` when it is not ``method`` (CASSCF: RHF/ROHF)


# What pins a trained ansatz to its mean-field reference: the parameters were trained on
# these orbitals and this expansion, which another SCF solution (a rotation among degenerate
# orbitals, another CASSCF minimum) would not reproduce.
REFERENCE_ARRAYS = ("mo_up", "mo_down", "occ_up", "occ_down", "ci", "energy", "cas_energy")


def reference_arrays(scf: SCFResult) -> dict[str, np.ndarray]:
    """The orbitals, determinants, CI weights and energies of ``scf`` as arrays
    (``cas_energy`` NaN without an active space)."""
    value = lambda name: getattr(scf, name)
    return {n: np.asarray(np.nan if value(n) is None else value(n)) for n in REFERENCE_ARRAYS}


def with_reference(scf: SCFResult, arrays: dict[str, Any]) -> SCFResult:
    """``scf`` with the arrays of :func:`reference_arrays` of another solution of the same
    system: the same basis (ValueError if the orbitals' shapes differ); the determinants
    may be others, and as many as that solution kept."""
    mine = reference_arrays(scf)
    for name in ("mo_up", "mo_down"):
        if np.shape(arrays[name]) != mine[name].shape:
            raise ValueError(
                f"{name} has shape {np.shape(arrays[name])}, this system's {mine[name].shape}"
            )
    n_det = np.shape(arrays["ci"])
    if np.shape(arrays["occ_up"])[:1] != n_det or np.shape(arrays["occ_down"])[:1] != n_det:
        raise ValueError(f"occupations for another number of determinants than {n_det}")
    cas_energy = float(arrays["cas_energy"])
    return replace(
        scf,
        **{n: np.asarray(arrays[n], mine[n].dtype) for n in REFERENCE_ARRAYS[:5]},
        energy=float(arrays["energy"]),
        cas_energy=None if np.isnan(cas_energy) else cas_energy,
    )


def _methods(molecule: Molecule, cas: tuple[int, int] | None) -> dict[str, str]:
    """``method`` and ``hf_method`` of the SCFResult that :func:`run_scf` returns."""
    if cas is not None:
        return {"method": "CASSCF", "hf_method": "RHF" if molecule.spin == 0 else "ROHF"}
    return {"method": "RHF" if molecule.spin == 0 else "UHF"}


def stored_scf(
    molecule: Molecule,
    basis: BasisSpec,
    arrays: dict[str, Any],
    cas: tuple[int, int] | None = None,
) -> SCFResult:
    """The SCFResult of stored :func:`reference_arrays` of ``molecule`` in ``basis``, built
    without solving: what :func:`run_scf` with ``cas`` would return on that solution.
    ValueError where the arrays cannot be this system's: other shapes, occupations out of
    range, or orbitals that are not orthonormal in its basis (``C^T S C = 1``)."""
    mol = _pyscf_mol(molecule, basis)
    overlap = np.asarray(mol.intor_symmetric("int1e_ovlp"))
    mos = {n: np.asarray(arrays[n], np.float64) for n in ("mo_up", "mo_down")}
    for name, mo in mos.items():
        if mo.ndim != 2 or mo.shape[0] != mol.nao or mo.shape != mos["mo_up"].shape:
            raise ValueError(f"{name} has shape {mo.shape}, this basis {mol.nao} functions")
        if not np.allclose(mo.T @ overlap @ mo, np.eye(mo.shape[1]), rtol=0.0, atol=1e-6):
            raise ValueError(f"{name}: the orbitals are not orthonormal in this basis")
    ci = np.asarray(arrays["ci"], np.float64).reshape(-1)
    occ = {
        "occ_up": (np.asarray(arrays["occ_up"], np.int64), molecule.n_up),
        "occ_down": (np.asarray(arrays["occ_down"], np.int64), molecule.n_down),
    }
    n_mo = mos["mo_up"].shape[1]
    for name, (o, n_elec) in occ.items():
        if o.shape != (len(ci), n_elec):
            raise ValueError(f"{name} has shape {o.shape}, not {len(ci)} determinants of {n_elec}")
        if o.size and not 0 <= o.min() <= o.max() < n_mo:
            raise ValueError(f"{name} occupies orbitals outside the {n_mo} of this basis")
    cas_energy = float(arrays["cas_energy"])
    return SCFResult(
        basis=gaussian_basis(mol),
        **mos,
        occ_up=occ["occ_up"][0],
        occ_down=occ["occ_down"][0],
        ci=ci,
        energy=float(arrays["energy"]),
        cas_energy=None if np.isnan(cas_energy) else cas_energy,
        **_methods(molecule, cas),
    )


def _pyscf_mol(molecule: Molecule, basis: BasisSpec):
    from pyscf import gto

    atoms = [
        (s, tuple(float(x) for x in c))
        for s, c in zip(molecule.symbols, molecule.coords, strict=True)
    ]
    ecp = dict(molecule.ecp)
    mol = gto.M(
        atom=atoms,
        unit="Bohr",
        basis=basis,
        ecp=ecp or None,
        charge=molecule.charge,
        spin=molecule.spin,
        verbose=0,
    )
    removed = [int(mol.atom_nelec_core(i)) for i in range(mol.natm)]
    if tuple(removed) != tuple(molecule.core):
        raise ECPError(f"PySCF removes {removed} core electrons, the molecule {molecule.core}")
    return mol


def basis_name(basis: BasisSpec, symbol: str) -> str:
    """The basis of one element."""
    return basis if isinstance(basis, str) else basis[symbol]


def check_basis(basis: BasisSpec, symbols: tuple[str, ...] | list[str]) -> None:
    """Raise ``BasisError`` unless PySCF knows ``basis`` for every element."""
    from pyscf.gto import basis as pyscf_basis

    for symbol in sorted(set(symbols)):
        if not isinstance(basis, str) and symbol not in basis:
            raise BasisError(f"no basis given for element {symbol}")
        name = basis_name(basis, symbol)
        try:
            data = pyscf_basis.load(name, symbol)
        except Exception:
            data = None
        if not data:
            raise BasisError(f"basis {name!r} is not known for element {symbol}")


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


HcoreExtra = Callable[[Any], np.ndarray]  # PySCF Mole -> (n_ao, n_ao) added to h_core


def _add_hcore(mf, hcore_extra: HcoreExtra | None):
    """Let a mean-field object feel an extra one-electron operator (external potentials)."""
    if hcore_extra is not None:
        extra = np.asarray(hcore_extra(mf.mol))
        base = mf.get_hcore
        mf.get_hcore = lambda *args, **kwargs: base(*args, **kwargs) + extra
    return mf


@one_thread
def run_hf(
    molecule: Molecule,
    basis: str,
    hcore_extra: HcoreExtra | None = None,
    energy_shift: float = 0.0,
) -> SCFResult:
    """RHF for closed shells, UHF for open shells (stability-checked).

    ``hcore_extra(mol)`` is added to the core Hamiltonian (e.g. a field's dipole integrals)
    and ``energy_shift`` (the external terms' energy with the nuclei) to the energy.
    """
    from pyscf import scf

    mol = _pyscf_mol(molecule, basis)
    if molecule.spin == 0:
        mf = _add_hcore(scf.RHF(mol), hcore_extra)
        mf.kernel()
        mo_up = mo_down = np.asarray(mf.mo_coeff)
        method = "RHF"
    else:
        mf = _add_hcore(scf.UHF(mol), hcore_extra)
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
        energy=float(mf.e_tot) + energy_shift,
        method=method,
    )


def _active_space(molecule: Molecule, n_mo: int, n_orbitals: int, n_electrons: int):
    """Validate a CAS(n_electrons, n_orbitals) and return (n_core, n_alpha, n_beta) active."""
    if n_orbitals < 1 or n_electrons < 1:
        raise ValueError(
            f"active space needs at least one orbital and one electron, "
            f"got {n_electrons} electrons in {n_orbitals} orbitals"
        )
    if n_electrons > molecule.n_elec:
        raise ValueError(
            f"active space has {n_electrons} electrons but the molecule only has {molecule.n_elec}"
        )
    if (molecule.n_elec - n_electrons) % 2:
        raise ValueError(
            f"{molecule.n_elec - n_electrons} inactive electrons cannot fill doubly occupied "
            f"core orbitals: the number of active electrons ({n_electrons}) must have the "
            f"parity of the total ({molecule.n_elec})"
        )
    n_core = (molecule.n_elec - n_electrons) // 2
    n_alpha, n_beta = molecule.n_up - n_core, molecule.n_down - n_core
    if n_beta < 0:
        raise ValueError(
            f"active space with {n_electrons} electrons cannot hold the {molecule.spin} "
            f"unpaired electrons of spin {molecule.spin}"
        )
    if n_alpha > n_orbitals:
        raise ValueError(
            f"{n_alpha} active spin-up electrons do not fit into {n_orbitals} active orbitals"
        )
    if n_core + n_orbitals > n_mo:
        raise ValueError(
            f"{n_core} core + {n_orbitals} active orbitals exceed the {n_mo} orbitals of this basis"
        )
    return n_core, n_alpha, n_beta


def _string_occupations(n_orbitals: int, n_elec: int) -> np.ndarray:
    """Occupied orbitals (ascending) of each PySCF string, in PySCF's string address order."""
    from pyscf.fci import cistring

    strings = cistring.make_strings(range(n_orbitals), n_elec)
    occ = np.zeros((len(strings), n_elec), dtype=np.int64)
    for a, s in enumerate(strings):
        occ[a] = [k for k in range(n_orbitals) if (int(s) >> k) & 1]
    return occ


def ci_to_determinants(
    ci: np.ndarray, n_core: int, n_orbitals: int, n_alpha: int, n_beta: int, n_determinants: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_determinants`` largest-|c| terms of a PySCF CAS-CI vector, in our convention.

    PySCF's vector ``ci[Ia, Ib]`` multiplies ``|Ia>|Ib>`` where each string is a product of
    creation operators; reordering the operators of a fixed string to ascending orbital order,
    and moving all alpha operators before all beta operators, gives a phase that depends only
    on (n_alpha, n_beta) and not on the string, so up to a global sign the coefficients of
    ``det[phi_up(r_i)] det[phi_down(r_j)]`` (columns in ascending MO order) are PySCF's own.
    ``tests/test_scf.py`` checks this through the first-quantised energy.

    Returns ``occ_up (n_det, n_core + n_alpha)``, ``occ_down (n_det, n_core + n_beta)``
    (MO indices: core orbitals then active ones) and ``ci (n_det,)``, sorted by
    decreasing |c|; exactly (numerically) zero coefficients are dropped.
    """
    occ_a = _string_occupations(n_orbitals, n_alpha)
    occ_b = _string_occupations(n_orbitals, n_beta)
    ci = np.asarray(ci, dtype=np.float64).reshape(len(occ_a), len(occ_b))
    flat = ci.ravel()
    order = np.argsort(-np.abs(flat), kind="stable")
    keep = order[np.abs(flat[order]) > 1e-12 * np.abs(flat).max()][: max(1, n_determinants)]
    ia, ib = np.unravel_index(keep, ci.shape)
    core = np.arange(n_core, dtype=np.int64)
    occ_up = np.concatenate([np.broadcast_to(core, (len(keep), n_core)), occ_a[ia] + n_core], 1)
    occ_down = np.concatenate([np.broadcast_to(core, (len(keep), n_core)), occ_b[ib] + n_core], 1)
    return occ_up.astype(np.int64), occ_down.astype(np.int64), flat[keep].copy()


@one_thread
def run_casscf(
    molecule: Molecule,
    basis: str,
    n_orbitals: int,
    n_electrons: int,
    n_determinants: int,
    hcore_extra: HcoreExtra | None = None,
    energy_shift: float = 0.0,
) -> SCFResult:
    """RHF/ROHF then CASSCF(n_electrons, n_orbitals); keep the largest-|c| determinants.

    ``energy`` stays the HF reference energy, ``cas_energy`` is the CASSCF energy and both
    spin channels use the CASSCF natural-ish orbitals ``mc.mo_coeff``.
    """
    from pyscf import mcscf, scf

    if n_determinants < 1:
        raise ValueError(f"need at least one determinant, got {n_determinants}")
    mol = _pyscf_mol(molecule, basis)
    n_mo = int(mol.nao)
    n_core, n_alpha, n_beta = _active_space(molecule, n_mo, n_orbitals, n_electrons)
    mf = _add_hcore(scf.RHF(mol) if molecule.spin == 0 else scf.ROHF(mol), hcore_extra)
    mf.kernel()
    if not mf.converged:
        kind = "RHF" if molecule.spin == 0 else "ROHF"
        raise RuntimeError(f"{kind} did not converge for this molecule and basis")
    n_mo = np.asarray(mf.mo_coeff).shape[1]
    if n_core + n_orbitals > n_mo:
        raise ValueError(
            f"{n_core} core + {n_orbitals} active orbitals exceed the {n_mo} orbitals of this basis"
        )
    mc = mcscf.CASSCF(mf, n_orbitals, (n_alpha, n_beta))
    mc.kernel()
    if not mc.converged:
        raise RuntimeError("CASSCF did not converge for this molecule and active space")
    occ_up, occ_down, ci = ci_to_determinants(
        mc.ci, n_core, n_orbitals, n_alpha, n_beta, n_determinants
    )
    mo = np.asarray(mc.mo_coeff)
    return SCFResult(
        basis=gaussian_basis(mol),
        mo_up=mo,
        mo_down=mo,
        occ_up=occ_up,
        occ_down=occ_down,
        ci=ci,
        energy=float(mf.e_tot) + energy_shift,
        method="CASSCF",
        cas_energy=float(mc.e_tot) + energy_shift,
        hf_method="RHF" if molecule.spin == 0 else "ROHF",
    )


def run_scf(
    molecule: Molecule,
    basis: str,
    cas: tuple[int, int] | None = None,
    determinants: int = 1,
    hcore_extra: HcoreExtra | None = None,
    energy_shift: float = 0.0,
) -> SCFResult:
    """``run_hf`` without an active space, else ``run_casscf`` with ``cas = (n_orb, n_elec)``.

    ``hcore_extra``/``energy_shift``: an external one-electron potential, see ``run_hf``.
    """
    if cas is None:
        return run_hf(molecule, basis, hcore_extra, energy_shift)
    n_orbitals, n_electrons = cas
    return run_casscf(
        molecule, basis, n_orbitals, n_electrons, determinants, hcore_extra, energy_shift
    )


def _reference_mean_field(molecule: Molecule, basis: str):
    """Converged RHF (closed shell) or UHF of the bare molecule, for baselines."""
    from pyscf import scf

    mol = _pyscf_mol(molecule, basis)
    mf = scf.RHF(mol) if molecule.spin == 0 else scf.UHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    if not mf.converged:
        raise RuntimeError("Hartree-Fock did not converge")
    return mol, mf


def hf_hessian(molecule: Molecule, basis: str) -> tuple[np.ndarray, np.ndarray]:
    """The Cartesian HF Hessian (3N, 3N) in hartree/bohr² and the atomic masses (amu), of the
    molecular Hamiltonian only (for normal modes)."""
    mol, mf = _reference_mean_field(molecule, basis)
    hessian = mf.Hessian().kernel()  # (N, N, 3, 3)
    n = mol.natm
    return hessian.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n), np.asarray(mol.atom_mass_list())


def hf_energy_forces(molecule: Molecule, basis: str) -> tuple[float, np.ndarray]:
    """The HF energy (hartree) and forces -dE/dR (N, 3) in hartree/bohr of the molecular
    Hamiltonian (RHF closed shell, else UHF), e.g. for datasets that need exact labels."""
    _, mf = _reference_mean_field(molecule, basis)
    return float(mf.e_tot), -np.asarray(mf.nuc_grad_method().kernel(), np.float64)


def ccsd_t_energy(molecule: Molecule, basis: str) -> float:
    """Total CCSD(T) energy (hartree) of the molecular Hamiltonian, on an RHF (closed shell)
    or UHF reference."""
    from pyscf import cc

    _, mf = _reference_mean_field(molecule, basis)
    if molecule.n_elec < 2:
        return float(mf.e_tot)
    ccsd = cc.CCSD(mf)
    ccsd.kernel()
    return float(ccsd.e_tot + ccsd.ccsd_t())


def ao_cross_overlap(a: Molecule, b: Molecule, basis: BasisSpec) -> np.ndarray:
    """``<chi_mu(a) | chi_nu(b)>``: the overlap of the AOs of two geometries of one
    molecule (PySCF's order, that of :attr:`SCFResult.mo_up`), (n_ao, n_ao)."""
    from pyscf import gto

    return np.asarray(gto.intor_cross("int1e_ovlp", _pyscf_mol(a, basis), _pyscf_mol(b, basis)))
