"""Effective core potentials: quadrature, the nonlocal term, PySCF's ECP energy, T-moves,
and the input's ECP checks."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc.ecp import (
    QUADRATURES,
    cutoff_radius,
    ecp_arrays,
    legendre,
    nonlocal_elements,
    quadrature,
    radial_numpy,
    random_rotation,
)
from nnqmc.molecule import Molecule, MoleculeError
from nnqmc.pseudopotentials import ECPError, atom_potentials, resolve_ecp

jax.config.update("jax_enable_x64", True)


def _double_factorial(n: int) -> int:
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def _sphere_mean(a: int, b: int, c: int) -> float:
    """(1/4π) ∫ x^a y^b z^c dΩ."""
    if a % 2 or b % 2 or c % 2:
        return 0.0
    num = _double_factorial(a - 1) * _double_factorial(b - 1) * _double_factorial(c - 1)
    return num / _double_factorial(a + b + c + 1)


@pytest.mark.parametrize("n_points", sorted(QUADRATURES))
def test_quadrature_is_exact_to_its_degree_and_not_beyond(n_points):
    degree = QUADRATURES[n_points][0]
    points, weights = quadrature(n_points)
    assert points.shape == (n_points, 3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-14)
    assert math.isclose(weights.sum(), 1.0, abs_tol=1e-14)

    def error(a, b, c):
        value = np.sum(weights * points[:, 0] ** a * points[:, 1] ** b * points[:, 2] ** c)
        return abs(value - _sphere_mean(a, b, c))

    for n in range(degree + 1):
        for a in range(n + 1):
            for b in range(n + 1 - a):
                assert error(a, b, n - a - b) < 1e-13, (n_points, a, b)
    # the next even degree is not integrated exactly by every monomial
    n = degree + 1 + (degree + 1) % 2
    worst = max(error(a, b, n - a - b) for a in range(n + 1) for b in range(n + 1 - a))
    assert worst > 1e-6


@pytest.mark.parametrize("n_points", sorted(QUADRATURES))
def test_quadrature_integrates_legendre_polynomials_in_any_direction(n_points):
    degree = QUADRATURES[n_points][0]
    points, weights = quadrature(n_points)
    rng = np.random.default_rng(1)
    for _ in range(5):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        values = np.asarray(legendre(degree + 1, jnp.asarray(points @ u)))  # (q, l)
        means = weights @ values
        np.testing.assert_allclose(means, np.eye(degree + 1)[0], atol=1e-13)


def test_random_rotations_are_proper_and_cover_the_sphere():
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    rotations = jax.vmap(random_rotation)(keys)
    eye = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(np.einsum("kij,kil->kjl", rotations, rotations), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(np.asarray(rotations)), 1.0, atol=1e-12)
    # Haar: the image of a fixed vector is uniform on the sphere (mean 0, <x^2> = 1/3)
    v = np.asarray(rotations[:, :, 2])
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=0.06)
    np.testing.assert_allclose((v**2).mean(axis=0), 1 / 3, atol=0.03)


def test_legendre_polynomials():
    x = jnp.linspace(-1, 1, 7)
    p = np.asarray(legendre(4, x))
    np.testing.assert_allclose(p[:, 2], (3 * x**2 - 1) / 2, atol=1e-14)
    np.testing.assert_allclose(p[:, 3], (5 * x**3 - 3 * x) / 2, atol=1e-14)


def _o_atom():
    molecule = Molecule(("O",), np.zeros((1, 3)), 0, 2, (("O", "ccecp"),), (2,))
    return molecule, atom_potentials(molecule)


def test_ccecp_tables_and_cutoff():
    molecule, (oxygen,) = _o_atom()
    assert molecule.n_elec == 6 and (molecule.n_up, molecule.n_down) == (4, 2)
    assert molecule.charges.tolist() == [6.0] and molecule.cusp_charges.tolist() == [0.0]
    assert oxygen.core == 2 and oxygen.max_l == 0
    # the local channel cancels -Z_eff/r at the nucleus: Z_eff e^{-a r^2}/r is its first term
    r = np.array([1e-6])
    assert abs(radial_numpy(oxygen.local, r)[0] - 6.0 / 1e-6) < 100.0
    rc = cutoff_radius(oxygen)
    assert 1.0 < rc < 2.0
    assert np.all(np.abs(radial_numpy(oxygen.channels[0], np.array([rc, rc + 1]))) < 1e-8)
    arrays = ecp_arrays([None, oxygen])
    assert arrays["atoms"].tolist() == [1] and arrays["nonlocal"].shape[:2] == (1, 1)


def _hf_psi(atoms: str, ecp, spin: int, basis):
    """The HF determinant of a small molecule (signed log psi), its molecule and SCF."""
    from nnqmc.ansatz.determinants import log_sum_determinants
    from nnqmc.ansatz.slater import slater_part
    from nnqmc.scf import run_hf

    plain = Molecule.from_atoms_text(atoms, "bohr", 0, spin % 2)
    found = resolve_ecp(ecp, plain.symbols)
    core = tuple(found[s].core if s in found else 0 for s in plain.symbols)
    names = tuple((s, found[s].name) for s in sorted(found))
    molecule = Molecule(plain.symbols, plain.coords, 0, spin, names, core)
    scf = run_hf(molecule, basis)
    part = slater_part(scf, molecule.cusp_charges, cusp=True)

    def signed(r):
        up, down = part.matrices(r)
        return log_sum_determinants(up, down, jnp.asarray(part.ci))

    return signed, molecule, scf


def test_nonlocal_energy_of_an_atom_is_exact_with_the_icosahedron():
    """The O atom's HF orbitals are s, p and d functions on the nucleus: moving one electron
    over the sphere changes psi by a polynomial of degree <= 2, which 12 points integrate
    exactly; PySCF's 590-point Lebedev grid agrees to 1e-10 at any rotation."""
    from pyscf.dft import gen_grid

    signed, molecule, _ = _hf_psi("O 0 0 0", "ccecp", 2, "ccecp-cc-pvdz")
    arrays = ecp_arrays(atom_potentials(molecule))
    lebedev = gen_grid.MakeAngularGrid(590)
    r = jax.random.normal(jax.random.PRNGKey(3), (6, 3)) * 0.7
    points, weights = quadrature(12)
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        ours = jnp.sum(
            nonlocal_elements(signed, arrays, molecule.coords, r, key, points, weights)[0]
        )
        high = jnp.sum(
            nonlocal_elements(
                signed, arrays, molecule.coords, r, key, lebedev[:, :3], lebedev[:, 3]
            )[0]
        )
        assert abs(float(ours) - float(high)) < 1e-10
        assert abs(float(ours)) > 1e-3


def test_nonlocal_energy_of_a_molecule_against_a_high_order_quadrature():
    """In H2O the integrand is not a polynomial: one rotated 12-point estimate scatters, but
    its mean over rotations is the integral, and the 32-point rule is within 1e-6 of
    Lebedev's 590 points."""
    from pyscf.dft import gen_grid

    atoms = "O 0 0 0\nH 0 1.4311 1.1077\nH 0 -1.4311 1.1077"
    signed, molecule, _ = _hf_psi(atoms, {"O": "ccecp"}, 0, {"O": "ccecp-cc-pvdz", "H": "cc-pvdz"})
    arrays = ecp_arrays(atom_potentials(molecule))
    lebedev = gen_grid.MakeAngularGrid(590)
    r = jnp.asarray(molecule.coords[[0, 0, 1, 2, 0, 0, 1, 2]]) + 0.5 * jax.random.normal(
        jax.random.PRNGKey(4), (8, 3)
    )
    key = jax.random.PRNGKey(0)
    exact = float(
        jnp.sum(
            nonlocal_elements(
                signed, arrays, molecule.coords, r, key, lebedev[:, :3], lebedev[:, 3]
            )[0]
        )
    )

    def estimate(n, key):
        p, w = quadrature(n)
        return jnp.sum(nonlocal_elements(signed, arrays, molecule.coords, r, key, p, w)[0])

    assert abs(float(estimate(32, key)) - exact) < 1e-6
    one = jax.jit(lambda k: estimate(12, k))
    values = np.array([float(one(k)) for k in jax.random.split(jax.random.PRNGKey(7), 200)])
    assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(len(values)) + 1e-12


_H2O = "O 0 0 0; H 0 1.431104 1.107680; H 0 -1.431104 1.107680"
_H2O_BASIS = {"O": "ccecp-cc-pvdz", "H": "cc-pvdz"}


@pytest.mark.parametrize(
    ("atoms", "ecp", "spin", "basis"),
    [
        pytest.param("O 0 0 0", "ccecp", 2, "ccecp-cc-pvdz", id="o"),
        pytest.param(_H2O, {"O": "ccecp"}, 0, _H2O_BASIS, marks=pytest.mark.ci_slow, id="h2o"),
    ],
)
def test_ecp_energy_of_the_hf_determinant_equals_pyscf(atoms, ecp, spin, basis):
    """<psi_HF| V_ECP |psi_HF> by VMC over the determinant (local channel plus the nonlocal
    quadrature) against PySCF's einsum('ij,ji', ECPscalar, dm), within 4 sigma."""
    from pyscf import gto, scf

    from nnqmc.hamiltonian import MolecularHamiltonian, nonlocal_energy
    from nnqmc.sampler import init_walkers, sample

    signed, molecule, _ = _hf_psi(atoms.replace("; ", "\n"), ecp, spin, basis)
    mol = gto.M(atom=atoms, unit="Bohr", basis=basis, ecp=ecp, spin=spin, verbose=0)
    mf = scf.UHF(mol).run()
    dm = mf.make_rdm1()
    reference = float(np.einsum("ij,ji", mol.intor_symmetric("ECPscalar"), dm[0] + dm[1]))

    n_up, n_down = molecule.n_up, molecule.n_down
    arrays = ecp_arrays(atom_potentials(molecule))
    h = MolecularHamiltonian(molecule.charges, molecule.coords, n_up, n_down, ecp=arrays)
    h_plain = MolecularHamiltonian(molecule.charges, molecule.coords, n_up, n_down)
    log_psi = jax.vmap(lambda r: signed(r)[1])

    def ecp_energy(r, key):
        v_local = h.potential(r) - h_plain.potential(r)
        return v_local + nonlocal_energy(h, signed, r, key)

    walkers = init_walkers(
        jax.random.PRNGKey(0), molecule.coords, molecule.charges, 0, n_up, n_down, 1024
    )

    @jax.jit
    def block(walkers, key):
        walkers, _, _ = sample(log_psi, walkers, log_psi(walkers), key, jnp.asarray(0.4), 10)
        keys = jax.random.split(jax.random.fold_in(key, 1), walkers.shape[0])
        return walkers, jnp.mean(jax.vmap(ecp_energy)(walkers, keys))

    for k in range(20):
        walkers, _ = block(walkers, jax.random.PRNGKey(100 + k))
    means = []
    for k in range(60):
        walkers, value = block(walkers, jax.random.PRNGKey(k))
        means.append(float(value))
    mean, err = np.mean(means), np.std(means) / np.sqrt(len(means))
    print(f"ECP energy: VMC {mean:.5f} +- {err:.5f}, PySCF {reference:.5f}")
    assert err < 0.03
    assert abs(mean - reference) < 4 * err, (mean, err, reference)


def test_t_move_rates_keep_detailed_balance():
    """The T-move rate from x to x' (the nonlocal element over its weight) times psi(x)^2
    equals the reverse rate times psi(x')^2: psi(x) psi(x') K(x, x') is symmetric."""
    signed, molecule, _ = _hf_psi("O 0 0 0", "ccecp", 2, "ccecp-cc-pvdz")
    arrays = ecp_arrays(atom_potentials(molecule))
    points, weights = quadrature(12)
    r = jax.random.normal(jax.random.PRNGKey(5), (6, 3)) * 0.6
    key = jax.random.PRNGKey(1)
    rotation = random_rotation(key)
    elements, moved = nonlocal_elements(
        signed, arrays, molecule.coords, r, key, points, weights, rotation
    )
    i, q = 2, 5
    forward = float(elements[i, 0, q]) / weights[q]
    target = moved[i, 0, q]
    r2 = r.at[i].set(target)
    # a rotation that puts quadrature point 0 on the old position's direction
    back = np.asarray(r[i] / jnp.linalg.norm(r[i]))
    u0 = points[0]
    axis = np.cross(u0, back)
    s, c = np.linalg.norm(axis), float(u0 @ back)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) / s
    rotation2 = np.eye(3) + s * k + (1 - c) * k @ k
    elements2, moved2 = nonlocal_elements(
        signed, arrays, molecule.coords, r2, key, points, weights, jnp.asarray(rotation2)
    )
    np.testing.assert_allclose(moved2[i, 0, 0], r[i], atol=1e-12)
    reverse = float(elements2[i, 0, 0]) / weights[0]
    p1, p2 = np.exp(2 * float(signed(r)[1])), np.exp(2 * float(signed(r2)[1]))
    assert abs(forward) > 1e-6
    np.testing.assert_allclose(p1 * forward, p2 * reverse, rtol=1e-9)


def test_ecp_resolution_and_its_errors(tmp_path):
    found = resolve_ecp("ccecp", ("O", "H"))
    assert set(found) == {"O", "H"} and found["H"].core == 0
    assert set(resolve_ecp({"O": "ccecp"}, ("O", "H"))) == {"O"}
    with pytest.raises(ECPError, match="unknown ECP"):
        resolve_ecp("ccecpp", ("O",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ECPError, match="no potential for element H"):
            resolve_ecp({"H": "lanl2dz"}, ("H", "Cl"))
        with pytest.raises(ECPError, match="not bounded at the nucleus"):
            resolve_ecp("lanl2dz", ("H", "Cl"))  # keeps -Z_eff/r: no QMC without a cusp
    assert set(resolve_ecp("ccecp-reg", ("Li", "H"))) == {"Li"}  # H stays all-electron
    bad = tmp_path / "bad.ecp"
    bad.write_text("ECP\nO nelec 2\nO ul\n2 1.0 x\nEND\n")
    with pytest.raises(ECPError):
        resolve_ecp({"O": str(bad)}, ("O",))
    good = tmp_path / "o.ecp"
    good.write_text("O nelec 2\n")
    with pytest.raises(ECPError, match="NWChem format"):
        resolve_ecp({"O": str(good)}, ("O",))

    good.write_text(
        "ECP\nO nelec 2\nO ul\n1 12.30997 6.0\n3 14.76962 73.85984\n2 13.71419 -47.876\n"
        "O S\n2 13.65512 85.86406\nEND\n"
    )
    from_file = resolve_ecp({"O": str(good)}, ("O",))["O"]
    with pytest.raises(ECPError, match="no potential for element H"):
        resolve_ecp({"H": str(good)}, ("H",))
    assert from_file.core == 2 and len(from_file.channels) == 1
    np.testing.assert_allclose(
        radial_numpy(from_file.local, np.array([0.7])),
        radial_numpy(found["O"].local, np.array([0.7])),
    )


def test_molecule_with_core_electrons():
    m = Molecule(("O", "H", "H"), np.eye(3) * 2, 0, 0, (("O", "ccecp"),), (2, 0, 0))
    assert m.n_elec == 8 and m.charges.tolist() == [6.0, 1.0, 1.0]
    assert m.atomic_numbers.tolist() == [8.0, 1.0, 1.0]
    assert m.cusp_charges.tolist() == [0.0, 1.0, 1.0]
    assert m.with_coords(np.eye(3) * 3).core == (2, 0, 0)
    with pytest.raises(MoleculeError, match="valence"):
        Molecule(("O",), np.zeros((1, 3)), 0, 1, (("O", "ccecp"),), (2,))


def _write(tmp_path, system: str) -> str:
    path = tmp_path / "in.toml"
    path.write_text(f'name = "x"\n[system]\nunit = "bohr"\n{system}\n')
    return str(path)


def test_config_reads_ecp_and_refuses_bad_ecp_input(tmp_path):
    from nnqmc.config import ConfigError, load_config

    cfg = load_config(
        _write(
            tmp_path,
            'atoms = "O 0 0 0"\nspin = 2\nbasis = "ccecp-cc-pvdz"\necp = "ccecp"\necp_points = 26',
        )
    )
    m = cfg.system.molecule
    assert (m.n_up, m.n_down, m.core, dict(m.ecp)) == (4, 2, (2,), {"O": "ccecp"})
    assert cfg.system.ecp_points == 26
    table = 'atoms = "O 0 0 0\\nH 0 0 1.8"\nspin = 1\nbasis = {O = "ccecp-cc-pvdz", H = "cc-pvdz"}'
    cfg = load_config(_write(tmp_path, table + '\necp = {O = "ccecp"}'))
    assert cfg.system.molecule.n_elec == 7 and cfg.system.basis_label.startswith("H: cc-pvdz")
    cases = [
        ('atoms = "O 0 0 0"\nspin = 2\necp = "nonsense"', "unknown ECP"),
        ('atoms = "H 0 0 0\\nCl 0 0 2.4"\necp = {H = "lanl2dz"}', "no potential for element H"),
        ('atoms = "O 0 0 0"\nspin = 1\necp = "ccecp"\nbasis = "ccecp-cc-pvdz"', "spin 1"),
        ('atoms = "Li 0 0 0"\ncharge = 2\necp = "ccecp"\nbasis = "ccecp-cc-pvdz"', "charge"),
        ('atoms = "O 0 0 0"\nspin = 2\necp = "ccecp"\necp_points = 7', "ecp_points"),
        ('atoms = "O 0 0 0"\nspin = 2\necp = {N = "ccecp"}', "not in the molecule"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            load_config(_write(tmp_path, text))
        assert "\n" not in str(info.value)


def test_an_ecp_with_an_all_electron_basis_warns(tmp_path):
    from nnqmc.config import ECPBasisWarning, load_config

    with pytest.warns(ECPBasisWarning, match="O has the ccecp potential but the basis 'cc-pvdz'"):
        load_config(_write(tmp_path, 'atoms = "O 0 0 0"\nspin = 2\necp = "ccecp"'))


@pytest.mark.ci_slow
def test_one_valence_electron_is_exact_in_dmc(tmp_path):
    """Li with ccECP: one valence electron, a nodeless trial function, so fixed-node DMC is
    exact for the potential: Annaberdiyev et al.'s -0.19685279 Ha within 0.3 mHa."""
    import json

    from nnqmc.cli import main

    path = tmp_path / "li.toml"
    path.write_text(
        'name = "li"\nprecision = "float64"\n[system]\natoms = "Li 0 0 0"\nunit = "bohr"\n'
        'spin = 1\nbasis = "ccecp-cc-pvdz"\necp = "ccecp"\n[ansatz]\nkind = "jastrow"\n'
        '[train]\nsteps = 100\nwalkers = 256\noptimizer = "adam"\n[eval]\nsteps = 100\n'
        "[dmc]\ntimestep = 0.05\nsteps = 600\nequilibration = 100\necp_points = 6\n"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["electrons"] == 1 and result["ecp"] == ["ccecp"]
    assert result["dmc_nonlocal"] == {"scheme": "tmoves", "ecp_points": 6}
    assert result["dmc_energy_err"] < 2e-4
    assert abs(result["dmc_energy"] - (-0.19685279)) < 3e-4 + 3 * result["dmc_energy_err"]


def test_an_ecp_file_is_found_next_to_the_input_and_kept_absolute(tmp_path):
    from nnqmc.config import load_config

    (tmp_path / "o.ecp").write_text(
        "# ccECP O\nECP\nO nelec 2\nO ul\n1 12.30997 6.0\n3 14.76962 73.85984\n"
        "2 13.71419 -47.876\nO S\n2 13.65512 85.86406\nEND\n"
    )
    cfg = load_config(
        _write(tmp_path, 'atoms = "O 0 0 0"\nspin = 2\nbasis = "ccecp-cc-pvdz"\necp = "o.ecp"')
    )
    assert cfg.system.molecule.core == (2,)
    assert cfg.data["system"]["ecp"] == str((tmp_path / "o.ecp").resolve())


def test_on_subset_is_the_masked_full_evaluation():
    """Fewer masked walkers than the capacity: fn runs on the capacity only; more: on all.
    Either way the rows are fn's where masked and the default elsewhere."""
    from nnqmc.diffusion import on_subset

    x = jnp.arange(8.0)
    default = (jnp.full(8, -1.0), jnp.zeros((8, 2)))
    fn = lambda a: (a * a, jnp.stack([a, -a], axis=1))
    for mask in ([0, 1, 0, 0, 0, 1, 0, 0], [1, 1, 0, 1, 0, 1, 1, 0], [0] * 8):
        m = jnp.asarray(mask, bool)
        for capacity in (1, 2, 3, 8):
            run = jax.jit(lambda m, x, c=capacity: on_subset(fn, m, (x,), default, c))
            got = run(m, x)
            full = fn(x)
            np.testing.assert_array_equal(got[0], jnp.where(m, full[0], default[0]))
            np.testing.assert_array_equal(got[1], jnp.where(m[:, None], full[1], default[1]))


@pytest.mark.ci_slow
def test_t_move_step_does_not_depend_on_how_few_walkers_are_recomputed(monkeypatch):
    """O with ccECP, HF trial, a large time step so that walkers T-move: the DMC step that
    recomputes only the walkers an earlier electron moved (and only their local jets after
    the sweep) gives the steps of the one that recomputes every walker."""
    from test_diffusion import pmapped_dmc

    from nnqmc import diffusion
    from nnqmc.ansatz import Ansatz
    from nnqmc.hamiltonian import MolecularHamiltonian

    signed, molecule, _ = _hf_psi("O 0 0 0", "ccecp", 2, "ccecp-cc-pvdz")
    ansatz = Ansatz(init=lambda key: {}, apply=lambda params, r: signed(r), n_up=4, n_down=2)
    arrays = ecp_arrays(atom_potentials(molecule))
    ham = MolecularHamiltonian(molecule.charges, molecule.coords, 4, 2, ecp=arrays)
    r = jax.random.normal(jax.random.PRNGKey(3), (1, 24, 6, 3)) * 0.9

    def steps(fraction):
        monkeypatch.setattr(diffusion, "SUBSET_FRACTION", fraction)
        start, step = pmapped_dmc(ansatz, ham)
        walkers = start({}, r)
        control = diffusion.initial_control(-15.7, 1)
        moved = []
        for k in range(4):
            key = jax.random.fold_in(jax.random.PRNGKey(0), k)
            walkers, control, stats = step({}, walkers, control, key, 0.3)
            moved.append(float(stats["t_moves"][0]))
        return walkers, moved

    every, moved = steps(1)
    assert sum(moved) > 0
    some, moved_some = steps(6)  # at most 4 walkers, or every one in a step where more moved
    assert moved_some == moved
    for name in ("r", "e_local", "log_psi", "elements", "weight"):
        np.testing.assert_allclose(
            getattr(some, name), getattr(every, name), rtol=1e-10, atol=1e-12, err_msg=name
        )


def test_one_electrons_elements_are_its_row_of_the_nonlocal_term():
    """What a T-move chooses from (one electron's elements, recomputed in the sweep) is
    that electron's row of the elements the local energy sums, at the same rotation; the
    generic fallback for a Hamiltonian without the one-electron method gives the same."""
    from nnqmc.ecp import electron_elements
    from nnqmc.hamiltonian import MolecularHamiltonian, electron_nonlocal_of

    signed, molecule, _ = _hf_psi("Cl 0 0 0", "ccecp", 1, "ccecp-cc-pvdz")
    arrays = ecp_arrays(atom_potentials(molecule))
    assert arrays["nonlocal"].shape[1] == 2  # s and p channels
    points, weights = quadrature(12)
    r = jax.random.normal(jax.random.PRNGKey(7), (7, 3)) * 1.2
    key = jax.random.PRNGKey(2)
    rotation = random_rotation(key)
    elements, moved = nonlocal_elements(
        signed, arrays, molecule.coords, r, key, points, weights, rotation
    )
    ham = MolecularHamiltonian(molecule.charges, molecule.coords, 4, 3, ecp=arrays)

    class Plain:  # only nonlocal_elements: the fallback takes row i
        ecp = arrays

        def nonlocal_elements(self, signed_log_psi, r, key):
            return ham.nonlocal_elements(signed_log_psi, r, key)

    fallback = electron_nonlocal_of(Plain())
    for i in range(7):
        row, targets = electron_elements(
            signed, arrays, molecule.coords, r, i, rotation, points, weights
        )
        np.testing.assert_allclose(row, elements[i].reshape(-1), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(targets, moved[i].reshape(-1, 3), rtol=1e-12, atol=1e-14)
        row2, targets2 = fallback(signed, r, i, key)
        np.testing.assert_allclose(row2, row, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(targets2, targets, rtol=1e-12, atol=1e-14)
    assert np.any(np.asarray(elements) != 0)


def _walkers_around(centre, radii, key) -> jax.Array:
    """Walkers (len(radii), n, 3) whose electrons sit at the given distances from ``centre``
    in random directions: radii (W, n)."""
    radii = jnp.asarray(radii, jnp.float64)
    u = jax.random.normal(key, (*radii.shape, 3))
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    return jnp.asarray(centre) + radii[..., None] * u


def _compacted_against_dense(signed, molecule, r, keys, n_points):
    """batch_nonlocal_elements in one block (every pair evaluated, as the dense term), in
    blocks of 3 pairs and of one pair, against nonlocal_elements walker by walker; returns
    the fraction of pairs inside the cutoff."""
    from nnqmc.ecp import batch_nonlocal_elements

    arrays = ecp_arrays(atom_potentials(molecule))
    points, weights = quadrature(n_points)
    coords = molecule.coords
    one = lambda x, k: nonlocal_elements(signed, arrays, coords, x, k, points, weights)
    dense, dense_moved = jax.jit(jax.vmap(one))(r, keys)
    assert np.all(np.isfinite(dense))
    n_pairs = dense.shape[0] * dense.shape[1] * dense.shape[2]
    n_q = len(weights)
    for options in ({"blocks": 1}, {"block_evaluations": 3 * n_q}, {"blocks": n_pairs}):
        batch = jax.jit(
            lambda r, k, o=options: batch_nonlocal_elements(
                signed, arrays, coords, r, k, points, weights, **o
            )
        )
        elements, moved = batch(r, keys)
        np.testing.assert_array_equal(moved, dense_moved)
        np.testing.assert_allclose(elements, dense, rtol=1e-12, atol=1e-14, err_msg=str(options))
        np.testing.assert_array_equal(elements == 0, dense == 0)
    return float(np.mean(np.any(np.asarray(dense) != 0, axis=-1)))


def test_compacted_nonlocal_term_is_the_dense_one_in_water():
    """H2O with ccECP on O: walkers with every electron inside O's cutoff, none, or some;
    psi is evaluated only for pairs inside, in blocks of the size asked (one block: every
    pair evaluated; blocks of one pair: only those inside), and the elements are those of
    nonlocal_elements walker by walker at the same rotations."""
    atoms = "O 0 0 0\nH 0 1.4311 1.1077\nH 0 -1.4311 1.1077"
    signed, molecule, _ = _hf_psi(atoms, {"O": "ccecp"}, 0, {"O": "ccecp-cc-pvdz", "H": "cc-pvdz"})
    rc = cutoff_radius(atom_potentials(molecule)[0])
    inside, outside = 0.6 * rc, 1.5 * rc
    radii = [
        [inside] * 8,
        [outside] * 8,
        [inside, outside] * 4,
        [inside] * 7 + [outside],
        [outside] * 7 + [inside],
    ]
    r = _walkers_around(molecule.coords[0], radii, jax.random.PRNGKey(11))
    keys = jax.random.split(jax.random.PRNGKey(12), r.shape[0])
    fraction = _compacted_against_dense(signed, molecule, r, keys, 12)
    assert fraction == pytest.approx(np.mean(np.asarray(radii) == inside))
    # every pair inside: all blocks evaluated, as the dense term
    everyone = _walkers_around(molecule.coords[0], [[inside] * 8] * 3, jax.random.PRNGKey(13))
    assert _compacted_against_dense(signed, molecule, everyone, keys[:3], 6) == 1.0


def test_compacted_nonlocal_term_is_the_dense_one_for_chlorine():
    """Cl with ccECP (s and p channels), 7 valence electrons, the 12- and 26-point rules;
    one block: every pair evaluated, as in the dense term."""
    signed, molecule, _ = _hf_psi("Cl 0 0 0", "ccecp", 1, "ccecp-cc-pvdz")
    rc = cutoff_radius(atom_potentials(molecule)[0])
    radii = np.array([[0.5] * 7, [1.4] * 7, [0.5, 1.4] * 3 + [0.9], [0.3] * 6 + [1.3]]) * rc
    r = _walkers_around(molecule.coords[0], radii, jax.random.PRNGKey(21))
    keys = jax.random.split(jax.random.PRNGKey(22), r.shape[0])
    for n_points in (12, 26):
        fraction = _compacted_against_dense(signed, molecule, r, keys, n_points)
        assert fraction == pytest.approx(np.mean(radii < rc))


def test_batch_local_energies_take_the_compacted_term_and_keep_their_gradient(monkeypatch):
    """The batch functions of nnqmc.steps use the compacted term for an ECP Hamiltonian
    (plain, and wrapped with an external field) and give the walker-by-walker local
    energies, T-move elements and targets, and parameter gradient of the local energies
    (the training step does not differentiate E_L, SPRING uses d log psi / d theta only;
    this checks that the compacted term stays differentiable and right). Blocks of two
    pairs, so that some are skipped."""
    from nnqmc import steps
    from nnqmc.ansatz import Ansatz
    from nnqmc.external import UniformField
    from nnqmc.hamiltonian import ExtendedHamiltonian, MolecularHamiltonian, batch_nonlocal_of

    atoms = "O 0 0 0\nH 0 1.4311 1.1077\nH 0 -1.4311 1.1077"
    signed, molecule, _ = _hf_psi(atoms, {"O": "ccecp"}, 0, {"O": "ccecp-cc-pvdz", "H": "cc-pvdz"})
    arrays = ecp_arrays(atom_potentials(molecule))
    coords = jnp.asarray(molecule.coords)

    def apply(params, r):  # the determinant times a one-parameter Jastrow factor
        sign, log = signed(r)
        d = jnp.linalg.norm(r[:, None] - coords[None], axis=-1)
        return sign, log - params["a"] * jnp.sum(d * d / (1.0 + d))

    ansatz = Ansatz(init=lambda key: {"a": 0.1}, apply=apply, n_up=4, n_down=4)
    params = {"a": jnp.asarray(0.1)}
    ham = MolecularHamiltonian(molecule.charges, molecule.coords, 4, 4, ecp=arrays, ecp_points=6)
    monkeypatch.setattr(steps, "nonlocal_blocks", lambda *_: {"block_evaluations": 12})
    rc = cutoff_radius(atom_potentials(molecule)[0])
    radii = [[0.5 * rc] * 8, [1.5 * rc] * 8, [0.5 * rc, 1.5 * rc] * 4]
    r = _walkers_around(molecule.coords[0], radii, jax.random.PRNGKey(31))
    key = jax.random.PRNGKey(32)
    near = molecule.coords[[0, 0, 1, 2, 0, 0, 1, 2]] + 0.4 * jax.random.normal(key, (8, 3))
    r = jnp.concatenate([r, near[None]])

    class Dense:  # the same term behind a custom Hamiltonian: evaluated walker by walker
        n_up, n_down, ecp = 4, 4, arrays
        charges, coords = ham.charges, ham.coords

        def potential(self, x):
            return ham.potential(x)

        def nonlocal_elements(self, signed_log_psi, x, k):
            return ham.nonlocal_elements(signed_log_psi, x, k)

    field = (UniformField((0.0, 0.0, 0.01)),)
    cases = [
        (ham, Dense(), None),
        (ExtendedHamiltonian(ham, field), ExtendedHamiltonian(Dense(), field), 2),
    ]
    energies = []
    for h, dense_h, chunk in cases:
        assert batch_nonlocal_of(h) is not None and batch_nonlocal_of(dense_h) is None
        got = jax.jit(steps.batch_local_jet_elements(ansatz, h, "exact", chunk))(params, r, key)
        want = jax.jit(steps.batch_local_jet_elements(ansatz, dense_h, "exact", chunk))(
            params, r, key
        )
        for name, a, b in zip(("log", "grad", "e", "elements", "targets"), got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
        energies.append(got[2])
    constant = jnp.asarray(ham.constant_energy)
    geometry = MolecularHamiltonian(
        ham.charges, coords, 4, 4, ecp=arrays, ecp_points=6, constant=constant
    )
    assert batch_nonlocal_of(geometry) is not None
    e = jax.jit(steps.batch_local_energy(ansatz, geometry, "exact"))(params, r, key)
    np.testing.assert_allclose(e, energies[0], rtol=1e-12)

    def mean_energy(h):
        energies = steps.batch_local_energy(ansatz, h, "exact")
        return jax.jit(jax.grad(lambda p: jnp.mean(energies(p, r, key))))(params)["a"]

    assert abs(float(mean_energy(ham))) > 1e-3
    np.testing.assert_allclose(mean_energy(ham), mean_energy(Dense()), rtol=1e-10)
