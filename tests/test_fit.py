"""nnqmc fit and nnqmc.ForceField (issue 21, item 3): the GDML-form GP force field on
datasets made without QMC (Morse potentials, a PySCF RHF H2 curve)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnqmc
from nnqmc.cli import main
from nnqmc.fit import (
    FitError,
    FitOptions,
    SymmetryError,
    TrainingSet,
    atom_permutations,
    errors,
    fit,
    inverse_distances,
    load_model,
    predict,
    predict_std,
    save_model,
)
from nnqmc.fit.descriptor import pair_permutations
from nnqmc.fit.kernel import energy_kernel, force_kernel, gram
from nnqmc.fit.model import posterior_covariance
from nnqmc.pes import BOHR_ANGSTROM, HARTREE_EV
from nnqmc.pes.dataset import new_dataset, write_dataset

# Morse pair potentials D (1 - exp(-a (r - r0)))² - D, hartree and bohr.
MORSE = {(1, 1): (0.17, 1.0, 1.4), (1, 8): (0.2, 1.2, 1.81)}
WATER_Z = np.array([8, 1, 1])
WATER = np.array([[0.0, 0.0, 0.22], [0.0, 1.43, -0.89], [0.0, -1.43, -0.89]])


def morse_energy(z, x):
    """Sum of pairwise Morse energies of one geometry (JAX, hartree)."""
    total = 0.0
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            d, a, r0 = MORSE[tuple(sorted((int(z[i]), int(z[j]))))]
            r = jnp.linalg.norm(x[i] - x[j])
            total = total + d * (1.0 - jnp.exp(-a * (r - r0))) ** 2 - d
    return total


def morse_labels(z, positions):
    """Energies (n,) and forces (n, n_atoms, 3) = -dE/dx of the Morse model."""
    value_and_grad = jax.vmap(jax.value_and_grad(lambda x: morse_energy(z, x)))
    energy, grad = value_and_grad(jnp.asarray(positions))
    return np.asarray(energy), -np.asarray(grad)


def h2(r):
    """H2 geometries (n, 2, 3) with bond lengths r along z."""
    x = np.zeros((len(r), 2, 3))
    x[:, 1, 2] = r
    return x


def waters(count, seed, amplitude=0.12):
    rng = np.random.default_rng(seed)
    return WATER + amplitude * rng.normal(size=(count, 3, 3))


def rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def water_model():
    x = waters(14, seed=1)
    energy, forces = morse_labels(WATER_Z, x)
    return fit(TrainingSet(WATER_Z, x, energy, None, forces, None))


@pytest.fixture(scope="module")
def h2_model():
    x = h2(np.linspace(1.0, 3.5, 11))
    energy, forces = morse_labels([1, 1], x)
    return fit(TrainingSet([1, 1], x, energy, None, forces, None))


# --------------------------------------------------------------------------- descriptor, kernel
def test_permutations_of_identical_atoms():
    perms = atom_permutations(WATER_Z)
    assert perms.tolist() == [[0, 1, 2], [0, 2, 1]]
    x = jnp.asarray(waters(1, seed=0)[0])
    d = inverse_distances(x)
    for p, q in zip(perms, pair_permutations(perms), strict=True):
        assert np.allclose(inverse_distances(x[p]), d[q])
    assert len(atom_permutations([6, 1, 1, 1, 1])) == 24
    with pytest.raises(SymmetryError, match="1440 permutations.*--no-symmetry"):
        atom_permutations([6, 6, 1, 1, 1, 1, 1, 1])  # ethane: 2! 6!


def test_kernel_blocks_are_derivatives_and_finite_at_equal_geometries():
    """cov(F, F) is the mixed Hessian of k (finite differences), finite and symmetric at
    x = y where autodiff through |d - d'| alone would give NaN; the Gram matrix is PSD."""
    pairs = jnp.asarray(pair_permutations(atom_permutations(WATER_Z)))
    x, y = (jnp.asarray(g) for g in waters(2, seed=3))
    h = 1e-4
    hess = np.asarray(force_kernel(x, y, 0.7, pairs))
    a, b = 4, 7  # components (atom 1, y) of x and (atom 2, y) of y
    ea = np.zeros(9)
    ea[a] = h
    eb = np.zeros(9)
    eb[b] = h

    def k(dx, dy):
        return float(energy_kernel(x + dx.reshape(3, 3), y + dy.reshape(3, 3), 0.7, pairs))

    fd = (k(ea, eb) - k(ea, -eb) - k(-ea, eb) + k(-ea, -eb)) / (4 * h * h)
    assert hess[a, b] == pytest.approx(fd, rel=1e-5)
    same = np.asarray(force_kernel(x, x, 0.7, pairs))
    assert np.all(np.isfinite(same)) and np.allclose(same, same.T)
    k_all = np.asarray(gram(jnp.stack([x, y]), jnp.stack([x, y]), 0.7, pairs))
    assert k_all.shape == (2 + 18, 2 + 18)
    assert np.linalg.eigvalsh(k_all).min() > -1e-10


# --------------------------------------------------------------------------- the model
def test_forces_are_minus_the_gradient_of_the_energy(water_model):
    """Five-point central differences, h = 1e-3 bohr (truncation error ~1e-12). The
    tolerance is set by the energy's round-off: noise-free labels make the marginal
    likelihood prefer a long length scale, with weights up to ~1e6 that cancel, so E carries
    ~1e-10 Ha of round-off, ~1e-7 Ha/bohr in the difference quotient."""
    x = waters(1, seed=7)[0]
    _, forces, _ = predict(water_model, x[None])
    h = 1e-3
    for atom, axis in [(0, 2), (1, 0), (2, 1)]:
        step = np.zeros_like(x)
        step[atom, axis] = h
        e = predict(water_model, np.stack([x + 2 * step, x + step, x - step, x - 2 * step]))[0]
        slope = (-e[0] + 8 * e[1] - 8 * e[2] + e[3]) / (12 * h)
        assert forces[0, atom, axis] == pytest.approx(-slope, abs=1e-6)


def test_invariant_under_permutation_of_identical_atoms(water_model):
    x = waters(1, seed=11)[0]
    swapped = x[[0, 2, 1]]
    e, f, s = predict(water_model, np.stack([x, swapped]))
    assert e[1] == pytest.approx(e[0], abs=1e-9)  # round-off (see the test above)
    assert s[1] == pytest.approx(s[0], rel=1e-4)  # s² k - |v|²: round-off of s² · 1e-16
    assert np.allclose(f[1], f[0][[0, 2, 1]], atol=1e-7)


def test_invariant_under_rotation_and_translation(water_model):
    x = waters(1, seed=12)[0]
    q = rotation(5)
    moved = x @ q.T + np.array([0.3, -1.2, 2.0])
    e, f, s = predict(water_model, np.stack([x, moved]))
    assert e[1] == pytest.approx(e[0], abs=1e-9)
    assert s[1] == pytest.approx(s[0], rel=1e-4)  # s² k - |v|²: round-off of s² · 1e-16
    assert np.allclose(f[1], f[0] @ q.T, atol=1e-7)


def test_heldout_error_on_a_noise_free_morse_curve_is_small():
    """Energies and forces, and forces only (GDML, the level from the energies): the largest
    error between 13 points from 1 to 4 bohr, as a fraction of the label range (measured:
    both 0.03 % and 0.14 %, forces only 0.29 % and 1.1 %, at the steep wall)."""
    r = np.linspace(1.0, 4.0, 13)
    energy, forces = morse_labels([1, 1], h2(r))
    test = h2(np.linspace(1.05, 3.95, 59))
    truth_e, truth_f = morse_labels([1, 1], test)
    for use, bound_e, bound_f in (("both", 1e-3, 5e-3), ("forces", 5e-3, 2e-2)):
        model = fit(TrainingSet([1, 1], h2(r), energy, None, forces, None), FitOptions(use=use))
        e, f, _ = predict(model, test)
        assert np.max(np.abs(e - truth_e)) < bound_e * np.ptp(truth_e), use
        assert np.max(np.abs(f - truth_f)) < bound_f * np.ptp(truth_f), use


def _rhf_h2(r):
    from pyscf import gto, lib, scf

    energy, forces = [], []
    for x in h2(r):
        mol = gto.M(atom=[("H", tuple(a)) for a in x], unit="Bohr", basis="sto-3g", verbose=0)
        with lib.with_omp_threads(1):
            mf = scf.RHF(mol)
            energy.append(mf.kernel())
            forces.append(-mf.nuc_grad_method().kernel())
    return np.array(energy), np.array(forces)


def test_heldout_error_on_the_rhf_h2_curve_is_small():
    """PySCF RHF/STO-3G H2 with analytic gradients, every other point held out."""
    r = np.linspace(1.0, 4.0, 19)
    energy, forces = _rhf_h2(r)
    train = TrainingSet([1, 1], h2(r), energy, None, forces, None)
    model = fit(train.subset(np.arange(0, 19, 2)))
    held = errors(model, train.subset(np.arange(1, 19, 2)))
    print(
        f"RHF H2, 9 held out: energy RMSE {1e3 * held['energy_rmse']:.4f} mHa of a "
        f"{1e3 * np.ptp(energy):.0f} mHa range; forces {1e3 * held['forces_rmse']:.4f} mHa/bohr"
    )
    assert held["energy_rmse"] < 1e-3 * np.ptp(energy)
    assert held["forces_rmse"] < 1e-2 * np.ptp(forces)


def test_energy_std_small_at_data_large_away_from_it(h2_model):
    """The GP's predictive standard deviation, what adaptive scans select geometries by."""
    _, _, at_data = predict(h2_model, h2(np.linspace(1.0, 3.5, 11)))
    _, _, beyond = predict(h2_model, h2(np.array([5.0])))
    assert np.all(at_data < 1e-5)  # the noise floor: 1 µHa
    assert beyond[0] > 100 * at_data.max()


def test_posterior_covariance_at_a_point_is_its_predictive_variance(water_model):
    """cov(E(x), E(x)) = std², and the covariance matrix of a batch is symmetric and
    positive semi-definite: what a thermal scan's batch conditions on."""
    x = waters(5, seed=7, amplitude=0.2)
    _, _, std = predict(water_model, x)
    cov = np.stack([posterior_covariance(water_model, x, xi) for xi in x], axis=1)
    floor = 1e-13 * water_model.scale**2  # what s²k - |v|² in float64 leaves; variances ~1e-9
    np.testing.assert_allclose(np.diag(cov), std**2, rtol=1e-6, atol=floor)
    np.testing.assert_allclose(cov, cov.T, rtol=1e-6, atol=floor)
    assert np.linalg.eigvalsh(cov).min() > -floor
    with pytest.raises(FitError, match="positions must be"):
        posterior_covariance(water_model, x, x)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_point_noise_beats_uniform_noise(seed):
    """Heteroscedastic error bars (0.2 or 5 mHa, labels perturbed by them): weighting each
    point by its own error bar fits the noise-free curve better than the mean variance."""
    rng = np.random.default_rng(seed)
    r = np.sort(rng.uniform(1.0, 4.0, 30))
    energy, forces = morse_labels([1, 1], h2(r))
    noisy = rng.random(30) < 0.5
    e_err = np.where(noisy, 5e-3, 2e-4)
    f_err = np.where(noisy, 2e-2, 1e-3)[:, None, None] * np.ones((1, 2, 3))
    energy = energy + e_err * rng.normal(size=30)
    forces = forces + f_err * rng.normal(size=forces.shape)
    data = TrainingSet([1, 1], h2(r), energy, e_err, forces, f_err)
    test = h2(np.linspace(1.0, 4.0, 150))
    truth, _ = morse_labels([1, 1], test)
    rmse = {}
    for noise in ("per-point", "uniform"):
        e, _, _ = predict(fit(data, FitOptions(noise=noise)), test)
        rmse[noise] = np.sqrt(np.mean((e - truth) ** 2))
    print(
        f"seed {seed}: held-out energy RMSE (mHa) {1e3 * rmse['per-point']:.3f} per-point, "
        f"{1e3 * rmse['uniform']:.3f} uniform"
    )
    assert rmse["per-point"] < 0.7 * rmse["uniform"]


def test_model_file_round_trip(tmp_path, water_model):
    path = tmp_path / "model.h5"
    save_model(path, water_model)
    again = load_model(path)
    x = waters(3, seed=21)
    for a, b in zip(predict(water_model, x), predict(again, x), strict=True):
        assert np.array_equal(a, b)
    assert again.info == water_model.info
    with pytest.raises(FitError, match="cannot read the model"):
        load_model(tmp_path / "missing.h5")
    other = tmp_path / "scan.h5"
    _write_dataset(other, np.array([1.0, 2.0]), np.ones(2, bool))
    with pytest.raises(FitError, match="not an nnqmc force-field model"):
        load_model(other)


def test_bad_training_sets_are_refused():
    x = h2(np.array([1.0, 2.0]))
    energy, forces = morse_labels([1, 1], x)
    with pytest.raises(FitError, match="error bars"):
        fit(TrainingSet([1, 1], x, energy, np.array([1e-4, np.nan])))
    with pytest.raises(FitError, match="no finite force labels"):
        fit(TrainingSet([1, 1], x, energy), FitOptions(use="forces"))
    with pytest.raises(FitError, match="noise must be one of"):
        FitOptions(noise="gaussian")
    with pytest.raises(FitError, match=r"positions must be \(batch, 2, 3\)"):
        predict(fit(TrainingSet([1, 1], x, energy)), x[0])


def test_predict_std_of_dataset_rows_for_adaptive_scans(tmp_path):
    """Fitted to the finished rows only: small at a finished row, large in the gap."""
    r = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    done = np.array([True, True, True, False, False, False, True])
    _write_dataset(tmp_path / "scan.h5", r, done)
    from nnqmc.pes import read_dataset

    std = predict_std(read_dataset(tmp_path / "scan.h5"), np.array([0, 3, 4, 5]))
    assert std[0] < 1.01e-4  # a finished row: at most its error bar
    assert np.all(std[1:] > 4 * std[0])  # the gap between 2 and 4 bohr
    # largest nearest the middle of the gap in the descriptor: 1/r = 0.4 (2.5 bohr) against
    # the centre 0.375 between 1/2 and 1/4
    assert np.argmax(std) == 1


# --------------------------------------------------------------------------- ASE
def test_ase_calculator_units(h2_model):
    from ase import Atoms

    calc = nnqmc.ForceField(h2_model)
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.1, 0.0, 0.8]], calculator=calc)
    e, f, s = predict(h2_model, atoms.positions[None] / BOHR_ANGSTROM)
    assert atoms.get_potential_energy() == pytest.approx(e[0] * HARTREE_EV, rel=1e-12)
    assert np.allclose(atoms.get_forces(), f[0] * HARTREE_EV / BOHR_ANGSTROM, rtol=1e-12)
    assert calc.results["energy_std"] == pytest.approx(s[0] * HARTREE_EV, rel=1e-12)
    with pytest.raises(FitError, match="not the model's"):
        Atoms("HLi", positions=[[0, 0, 0], [0, 0, 1.5]], calculator=calc).get_potential_energy()


def test_force_field_says_when_ase_is_missing(monkeypatch):
    for name in ("ase", "ase.calculators", "ase.calculators.calculator"):
        monkeypatch.setitem(sys.modules, name, None)  # import of ase halted
    monkeypatch.delitem(sys.modules, "nnqmc.fit.calculator", raising=False)
    with pytest.raises(ImportError, match=r"^nnqmc.ForceField needs ASE: pip install ase$"):
        nnqmc.ForceField  # noqa: B018


def test_nve_molecular_dynamics_conserves_energy(h2_model):
    """Velocity Verlet on the fitted H2 model (vibration of 0.25 eV, some rotation): the
    total energy swings at O(dt²) within a period but does not drift, as forces are exactly
    -∇E of the model. Measured: drift 3.6e-6 eV over 100 fs (linear fit), swing 3.9e-4 eV;
    at dt = 0.2 fs 8.9e-6 and 1.6e-3 eV."""
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.03, 0.02, 0.88]])
    atoms.calc = nnqmc.ForceField(h2_model)
    atoms.set_momenta([[0.0, 0.3, 0.0], [0.0, -0.3, 0.0]])
    totals = []
    dyn = VelocityVerlet(atoms, timestep=0.1 * units.fs)
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(1000)  # 100 fs, about 13 vibrations
    time = 0.1 * np.arange(len(totals))
    drift = np.polyfit(time, totals, 1)[0] * 100.0
    swing = np.ptp(totals)
    print(f"NVE H2: drift {drift:.2e} eV over 100 fs, swing {swing:.2e} eV")
    assert abs(drift) < 2e-5
    assert swing < 1e-3


# --------------------------------------------------------------------------- CLI
def _write_dataset(path, r, done, forces=True):
    energy, force = morse_labels([1, 1], h2(r))
    data = new_dataset(np.array([1, 1]), h2(r), r[:, None], {"name": "morse"}, forces, False)
    for k in range(len(r)):
        if done[k]:
            row = {"energy": energy[k], "energy_err": 1e-4, "status": "done"}
            if forces:
                row.update(forces=force[k], forces_err=np.full((2, 3), 1e-3))
            data.set_row(k, **row)
    write_dataset(path, data)


def test_cli_fit_prints_errors_and_writes_a_model(tmp_path, capsys):
    from ase import Atoms

    path = tmp_path / "scan.h5"
    r = np.linspace(1.0, 4.0, 14)
    done = np.ones(14, bool)
    done[5] = False  # a failed or pending row is not used
    _write_dataset(path, r, done)
    assert main(["fit", str(path), "--valid", "0.25", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "13 finished geometries: 10 training, 3 held out" in out
    assert "energy (mHa)" in out and "force (mHa/bohr)" in out
    assert "held out" in out and "sigma = " in out
    model_path = tmp_path / "scan.fit.h5"
    assert f"model written to {model_path}" in out
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.calc = nnqmc.ForceField(model_path)
    exact, _ = morse_labels([1, 1], atoms.positions[None] / BOHR_ANGSTROM)
    assert atoms.get_potential_energy() == pytest.approx(exact[0] * HARTREE_EV, abs=5e-3)


def test_cli_fit_refuses_bad_input_in_one_line(tmp_path, capsys):
    empty, full = tmp_path / "empty.h5", tmp_path / "full.h5"
    _write_dataset(empty, np.array([1.0, 2.0]), np.zeros(2, bool))
    _write_dataset(full, np.array([1.0, 2.0]), np.ones(2, bool))
    energies_only = tmp_path / "energies.h5"
    _write_dataset(energies_only, np.array([1.0, 2.0]), np.ones(2, bool), forces=False)
    cases = [
        ([str(tmp_path / "missing.h5")], "no such file"),
        ([str(empty)], "no finished rows"),
        ([str(full), "--valid", "1.5"], "held-out fraction"),
        ([str(full), "--seed", "-1"], "seed must be >= 0"),
        ([str(full), "--sigma", "-1"], "sigma must be positive"),
        ([str(full), "--out", str(tmp_path / "no" / "m.h5")], "no does not exist"),
        ([str(energies_only), "--use", "forces"], "no finite force labels"),
    ]
    for args, message in cases:
        assert main(["fit", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nnqmc: error:") and message in err and err.count("\n") == 1
