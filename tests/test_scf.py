"""CASSCF determinant expansions: sign convention, open shells, input checks.

The sign convention is checked in first quantisation, independently of PySCF's
second-quantised string phases: the expansion ``sum_p ci[p] det_up[p] det_down[p]`` (columns
in ascending MO order, all up electrons before all down electrons) is written as a tensor
``T[i_1, ..., i_N]`` over orbital products ``phi_i1(r_1) ... phi_iN(r_N)``; its energy
``<T|H|T>/<T|T>`` with the plain one- and two-electron integrals must equal the CASSCF energy
when all determinants are kept. Any wrong relative sign raises that energy (the CAS ground
state is the unique minimiser), which the tests also show explicitly.
"""

import itertools

import numpy as np
import pytest
from pyscf import ao2mo, fci, gto, lib

from nnqmc import scf
from nnqmc.molecule import Molecule

LIH = Molecule(("Li", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 3.015]]))
H2 = Molecule(("H", "H"), np.array([[0.0, 0.0, -0.7], [0.0, 0.0, 0.7]]))
BEH = Molecule(("Be", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.54]]), spin=1)
LI = Molecule(("Li",), np.zeros((1, 3)), spin=1)
N = Molecule(("N",), np.zeros((1, 3)), spin=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These systems are tiny: OpenMP threads only cost time (a lot on a loaded machine)."""
    old = lib.num_threads()
    lib.num_threads(1)
    yield
    lib.num_threads(old)


_CACHE = {}


def _casscf(molecule, basis, n_orbitals, n_electrons, n_determinants):
    """run_casscf, computed once per (module-level molecule, basis, CAS, n_det)."""
    key = (id(molecule), basis, n_orbitals, n_electrons, n_determinants)
    if key not in _CACHE:
        _CACHE[key] = scf.run_casscf(molecule, basis, n_orbitals, n_electrons, n_determinants)
    return _CACHE[key]


def _mol(molecule, basis):
    return scf._pyscf_mol(molecule, basis)


def _perm_sign(perm):
    perm, sign = list(perm), 1
    for i in range(len(perm)):
        while perm[i] != i:
            j = perm[i]
            perm[i], perm[j] = perm[j], perm[i]
            sign = -sign
    return sign


def _antisym(occ, n_mo):
    """Tensor of det[phi_occ[j](r_i)] in the orbital-product basis (Leibniz formula)."""
    t = np.zeros((n_mo,) * len(occ))
    for perm in itertools.permutations(range(len(occ))):
        t[tuple(occ[list(perm)])] = _perm_sign(perm)
    return t


def _tensor(res, n_mo, ci=None):
    ci = res.ci if ci is None else ci
    return sum(
        c * np.multiply.outer(_antisym(u, n_mo), _antisym(d, n_mo))
        for c, u, d in zip(ci, res.occ_up, res.occ_down, strict=True)
    )


def _apply_one(op, t, k):
    return np.moveaxis(np.tensordot(op, t, axes=([1], [k])), 0, k)


def _energy(res, molecule, basis, ci=None):
    """<Psi|H|Psi>/<Psi|Psi> + E_nn in first quantisation with orthonormal MOs."""
    mol = _mol(molecule, basis)
    c = res.mo_up
    n_mo = c.shape[1]
    h1 = c.T @ mol.intor("int1e_kin") @ c + c.T @ mol.intor("int1e_nuc") @ c
    eri = ao2mo.restore(1, ao2mo.full(mol, c), n_mo)  # (ij|kl)
    t = _tensor(res, n_mo, ci)
    n = t.ndim
    energy = sum(np.vdot(t, _apply_one(h1, t, k)) for k in range(n))
    for k, l in itertools.combinations(range(n), 2):
        vt = np.tensordot(eri, t, axes=([1, 3], [k, l]))  # axes: i, a, rest
        vt = np.moveaxis(vt, [0, 1], [k, l])
        energy += np.vdot(t, vt)
    return float(energy / np.vdot(t, t)) + mol.energy_nuc()


def _psi(res, molecule, basis, r):
    """Our expansion at electron positions r (n_elec, 3) with PySCF AO values."""
    mol = _mol(molecule, basis)
    phi = mol.eval_gto("GTOval_sph", r) @ res.mo_up  # (n_elec, n_mo)
    n_up = molecule.n_up
    return sum(
        c * np.linalg.det(phi[:n_up][:, u]) * np.linalg.det(phi[n_up:][:, d])
        for c, u, d in zip(res.ci, res.occ_up, res.occ_down, strict=True)
    )


def _interleaved_phase(u, d):
    """Phase a code would (wrongly) add when ordering spin orbitals as 0a 0b 1a 1b ..."""
    return (-1) ** sum(int(a > b) for a in u for b in d)


@pytest.mark.parametrize(
    "molecule, basis, cas",
    [
        (LIH, "sto-3g", (2, 2)),
        (LIH, "sto-3g", (4, 4)),
        (H2, "6-31g", (4, 2)),  # full CI in this basis
        (BEH, "sto-3g", (3, 3)),  # open shell with a core orbital
        (LI, "sto-3g", (3, 3)),  # open shell, all electrons active
    ],
)
def test_full_expansion_reproduces_cas_energy(molecule, basis, cas):
    res = _casscf(molecule, basis, *cas, 10_000)
    assert res.method == "CASSCF"
    assert res.cas_energy < res.energy + 1e-10
    n_mo = res.mo_up.shape[1]
    n_core = (molecule.n_elec - cas[1]) // 2
    assert res.occ_up.shape[1] == molecule.n_up and res.occ_down.shape[1] == molecule.n_down
    for occ in (res.occ_up, res.occ_down):
        assert np.all(np.diff(occ, axis=1) > 0)
        assert np.all(occ[:, :n_core] == np.arange(n_core))
        assert occ.min() >= 0 and occ.max() < n_core + cas[0] <= n_mo
    assert np.all(np.diff(np.abs(res.ci)) <= 1e-15)
    assert abs(_energy(res, molecule, basis) - res.cas_energy) < 1e-8


def test_wrong_signs_are_detected():
    res = _casscf(LIH, "sto-3g", 4, 4, 10_000)
    assert len(res.ci) > 4
    exact = _energy(res, LIH, "sto-3g")
    assert abs(exact - res.cas_energy) < 1e-8
    for p in range(1, 4):  # flip one coefficient
        flipped = res.ci.copy()
        flipped[p] *= -1
        assert _energy(res, LIH, "sto-3g", flipped) - exact > 1e-5
    # The classic mistake: a phase from interleaving alpha and beta spin orbitals.
    phases = np.array(
        [_interleaved_phase(u, d) for u, d in zip(res.occ_up, res.occ_down, strict=True)]
    )
    assert np.any(phases < 0) and np.any(phases > 0)
    assert _energy(res, LIH, "sto-3g", res.ci * phases) - exact > 1e-5


def test_truncated_expansion_matches_pyscf_vector():
    """Keeping a few determinants: same energy as PySCF's CI vector with the rest zeroed."""
    n_det = 5
    molecule, basis = LIH, "sto-3g"
    res = scf.run_casscf(molecule, basis, 4, 4, n_det)
    assert len(res.ci) == n_det
    # Rebuild the CASSCF object in the final orbitals to get PySCF's own CAS Hamiltonian.
    from pyscf import mcscf
    from pyscf import scf as pyscf_scf

    mol = _mol(molecule, basis)
    mc = mcscf.CASCI(pyscf_scf.RHF(mol), 4, (2, 2))
    mc.mo_coeff = res.mo_up
    mc.kernel()
    ci = np.asarray(mc.ci)
    order = np.argsort(-np.abs(ci.ravel()), kind="stable")
    trunc = np.zeros(ci.size)
    trunc[order[:n_det]] = ci.ravel()[order[:n_det]]
    trunc = trunc.reshape(ci.shape)
    h1, ecore = mc.get_h1eff()
    h2 = mc.get_h2eff()
    e_pyscf = fci.direct_spin1.energy(h1, h2, trunc, 4, (2, 2)) / np.vdot(trunc, trunc) + ecore
    assert abs(_energy(res, molecule, basis) - e_pyscf) < 1e-8
    assert e_pyscf > res.cas_energy


def test_real_space_values_match_tensor():
    """numpy det[phi_mu(r_i)] with ascending columns is the tensor the energy test uses."""
    res = _casscf(LIH, "sto-3g", 4, 4, 10_000)
    mol = _mol(LIH, "sto-3g")
    t = _tensor(res, res.mo_up.shape[1])
    rng = np.random.default_rng(1)
    for _ in range(5):
        r = rng.normal(scale=0.7, size=(4, 3)) + LIH.coords[rng.integers(0, 2, size=4)]
        phi = mol.eval_gto("GTOval_sph", r) @ res.mo_up
        ref = t
        for i in range(4):
            ref = np.tensordot(phi[i], ref, axes=([0], [0]))
        got = _psi(res, LIH, "sto-3g", r)
        assert abs(got - ref) < 1e-10 * max(1.0, abs(ref))
        assert abs(ref) > 1e-12


def test_hf_path_unchanged():
    res = scf.run_scf(H2, "6-31g")
    ref = scf.run_hf(H2, "6-31g")
    assert res.method == "RHF" and res.cas_energy is None
    assert res.energy == pytest.approx(ref.energy, abs=1e-10)
    assert res.occ_up.tolist() == [[0]] and res.ci.tolist() == [1.0]
    mol = gto.M(atom="H 0 0 -0.7; H 0 0 0.7", unit="Bohr", basis="6-31g", verbose=0)
    assert res.energy == pytest.approx(mol.RHF().run().e_tot, abs=1e-8)


def test_casscf_keeps_hf_energy_and_counts():
    res = scf.run_casscf(BEH, "sto-3g", 3, 3, 2)
    hf = scf.run_hf(BEH, "sto-3g")
    assert res.ci.shape == (2,) and res.occ_up.shape == (2, 3) and res.occ_down.shape == (2, 2)
    assert res.mo_up is res.mo_down or np.array_equal(res.mo_up, res.mo_down)
    assert res.energy >= hf.energy - 1e-8  # ROHF is above UHF
    assert res.cas_energy < res.energy


@pytest.mark.parametrize(
    "molecule, basis, cas, match",
    [
        (LIH, "sto-3g", (4, 6), "only has 4"),
        (LIH, "sto-3g", (3, 3), "parity"),
        (BEH, "sto-3g", (2, 2), "parity"),
        (N, "sto-3g", (3, 1), "unpaired"),
        (LIH, "sto-3g", (7, 2), "exceed"),
        (LI, "sto-3g", (1, 3), "do not fit"),
        (LIH, "sto-3g", (0, 2), "at least one"),
    ],
)
def test_invalid_active_space(molecule, basis, cas, match):
    with pytest.raises(ValueError, match=match):
        scf.run_scf(molecule, basis, cas=cas, determinants=4)


def test_invalid_determinant_count():
    with pytest.raises(ValueError, match="at least one determinant"):
        scf.run_casscf(H2, "sto-3g", 2, 2, 0)


@pytest.mark.parametrize(
    "molecule, cas", [(H2, None), (BEH, None), (BEH, (3, 3))], ids=["rhf", "uhf", "casscf"]
)
def test_stored_scf_rebuilds_the_solved_result(molecule, cas):
    """The stored arrays of a solution rebuild its SCFResult (basis, method, energies)
    without solving; another geometry's orbitals or other shapes are refused."""
    solved = _casscf(molecule, "sto-3g", *cas, 2) if cas else scf.run_hf(molecule, "sto-3g")
    arrays = scf.reference_arrays(solved)
    rebuilt = scf.stored_scf(molecule, "sto-3g", arrays, cas)
    for name in ("method", "hf_method", "energy", "cas_energy"):
        assert getattr(rebuilt, name) == getattr(solved, name), name
    for name in scf.REFERENCE_ARRAYS[:5]:
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(solved, name))
    assert repr(rebuilt.basis) == repr(solved.basis)
    moved = molecule.with_coords(molecule.coords * 1.3)
    with pytest.raises(ValueError, match="not orthonormal"):
        scf.stored_scf(moved, "sto-3g", arrays, cas)
    with pytest.raises(ValueError, match="shape"):
        scf.stored_scf(molecule, "sto-3g", {**arrays, "ci": arrays["ci"][:0]}, cas)
