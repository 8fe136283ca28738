"""PES scans: geometry generators, [scan] config errors, warm start, forces, the dataset,
resume, shards and merge, exports (issue 7)."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import nnqmc
from nnqmc.api import evaluate, prepare, train, trained_state
from nnqmc.cli import main
from nnqmc.config import load_config
from nnqmc.estimate import estimate
from nnqmc.hamiltonian import MolecularHamiltonian
from nnqmc.molecule import ANGSTROM, Molecule
from nnqmc.pes import BOHR_ANGSTROM, HARTREE_EV, read_dataset
from nnqmc.pes.forces import (
    FORCE_TERMS,
    force_observables,
    forces_from_records,
    nuclear_forces,
)
from nnqmc.pes.geometry import (
    angle,
    generate,
    normal_modes,
    random_displacements,
    read_xyz_frames,
    set_angle,
)
from nnqmc.pes.scan import shift_walkers, transfer_parameters

WATER = Molecule(("O", "H", "H"), np.array([[0, 0, 0.22], [0, 1.43, -0.89], [0, -1.43, -0.89]]))

TINY = """name = "h2s"
[system]
atoms = \"\"\"
H 0 0 0
H 0 0 1.4
\"\"\"
unit = "bohr"
basis = "sto-3g"
[ansatz]
kind = "hf"
[train]
steps = 4
walkers = 32
optimizer = "adam"
[sampler]
burn_in = 10
[eval]
steps = 10
dipole = false
"""
SCAN = (
    TINY
    + """[scan]
kind = "bond"
atoms = [0, 1]
values = [1.2, 2.0]
forces = true
ccsd_t = true
"""
)


def _scan_config(tmp_path, text=SCAN, **scan):
    from nnqmc.config import load_config

    path = tmp_path / "scan.toml"
    path.write_text(text)
    return load_config(path, [f"scan.{k}={v}" for k, v in scan.items()])


# --------------------------------------------------------------------------- geometries
def test_bond_scan_distances_are_those_asked(tmp_path):
    config = _scan_config(tmp_path, values="[1.0, 1.7, 3.5]")
    frames, labels = generate(config.system.molecule, config.scan, "sto-3g")
    assert np.allclose(np.linalg.norm(frames[:, 1] - frames[:, 0], axis=-1), [1.0, 1.7, 3.5])
    assert np.allclose(labels[:, 0], [1.0, 1.7, 3.5])
    assert np.allclose(frames[:, 0], 0.0)  # atom i stays
    config = _scan_config(tmp_path, values="[1.0]", unit='"angstrom"')
    frames, _ = generate(config.system.molecule, config.scan, "sto-3g")
    assert np.linalg.norm(frames[0, 1] - frames[0, 0]) == pytest.approx(ANGSTROM)


def test_angle_grid_and_linspace():
    bent = set_angle(WATER.coords, 1, 0, 2, 120.0)
    assert angle(bent, 1, 0, 2) == pytest.approx(120.0)
    assert np.linalg.norm(bent[2] - bent[0]) == pytest.approx(
        np.linalg.norm(WATER.coords[2] - WATER.coords[0])
    )
    linear = set_angle(WATER.coords, 1, 0, 2, 180.0)
    assert angle(set_angle(linear, 1, 0, 2, 90.0), 1, 0, 2) == pytest.approx(90.0)

    from nnqmc.config import ScanConfig

    scan = ScanConfig(kind="angle", atoms=(1, 0, 2), linspace=(100.0, 110.0, 3))
    frames, labels = generate(WATER, scan, "sto-3g")
    assert [angle(f, 1, 0, 2) for f in frames] == pytest.approx([100.0, 105.0, 110.0])
    scan = ScanConfig(
        kind="grid", grid_atoms=((0, 1), (1, 0, 2)), grid_values=((1.7, 1.8, 1.9), (100.0, 110.0))
    )
    frames, labels = generate(WATER, scan, "sto-3g")
    assert frames.shape == (6, 3, 3) and labels.shape == (6, 2)
    for frame, (r, a) in zip(frames, labels, strict=True):
        assert np.linalg.norm(frame[1] - frame[0]) == pytest.approx(r)
        assert angle(frame, 1, 0, 2) == pytest.approx(a)


def test_normal_modes_are_orthogonal_to_translations_and_rotations():
    from nnqmc.scf import hf_hessian

    hessian, masses = hf_hessian(WATER, "sto-3g")
    modes, values = normal_modes(WATER.coords, masses, hessian)
    assert modes.shape == (3, 3, 3) and np.all(values > 0)  # 3N - 6 vibrations, a minimum-ish
    for mode in modes:
        assert np.allclose(np.sum(masses[:, None] * mode, axis=0), 0, atol=1e-10)  # no COM shift
        center = np.sum(masses[:, None] * WATER.coords, axis=0) / masses.sum()
        torque = np.sum(masses[:, None] * np.cross(WATER.coords - center, mode), axis=0)
        assert np.allclose(torque, 0, atol=1e-8)  # no rotation (Eckart)


def test_normal_mode_signs_do_not_depend_on_the_eigensolver(monkeypatch):
    """An eigenvector's sign is arbitrary (it changed between runs with BLAS threads): every
    mode comes out with its largest component, the last of equal ones, positive."""
    from nnqmc.pes import geometry
    from nnqmc.scf import hf_hessian

    hessian, masses = hf_hessian(WATER, "sto-3g")
    modes, _ = normal_modes(WATER.coords, masses, hessian)
    real_eigh = np.linalg.eigh

    def flipped(a):
        values, vectors = real_eigh(a)
        return values, -vectors

    monkeypatch.setattr(geometry.np.linalg, "eigh", flipped)
    again, _ = normal_modes(WATER.coords, masses, hessian)
    np.testing.assert_allclose(again, modes, atol=1e-12)
    for mode in modes.reshape(len(modes), -1):
        size = np.round(np.abs(mode), 8)
        assert mode[len(mode) - 1 - np.argmax(size[::-1])] > 0


def test_degenerate_modes_do_not_depend_on_the_eigensolver(monkeypatch):
    """A linear O-C-O with bond springs and a bend: the two bends are degenerate, and an
    eigensolver may return any rotation of them. Rotating the eigenvectors inside every
    degenerate set leaves the modes, and their eigenvalues, as they were."""
    import jax
    import jax.numpy as jnp

    from nnqmc.pes import geometry

    coords = np.array([[0.0, 0.0, -2.2], [0.0, 0.0, 0.0], [0.0, 0.0, 2.2]])
    masses = np.array([16.0, 12.0, 16.0]) * 1822.888

    def energy(x):
        x = x.reshape(3, 3)
        bonds = jnp.linalg.norm(x[1] - x[0]) - 2.2, jnp.linalg.norm(x[2] - x[1]) - 2.2
        bend = x[0] + x[2] - 2.0 * x[1]
        return 0.5 * (bonds[0] ** 2 + bonds[1] ** 2) + 0.1 * jnp.sum(bend[:2] ** 2)

    hessian = np.asarray(jax.hessian(energy)(jnp.asarray(coords.reshape(-1))))
    modes, values = normal_modes(coords, masses, hessian)
    assert len(modes) == 4 and values[1] == pytest.approx(values[2], rel=1e-9)
    assert values[0] < 0.9 * values[1] and values[2] < 0.9 * values[3]
    real_eigh = np.linalg.eigh

    def rotated(a):
        w, v = real_eigh(a)
        out = np.array(v)
        for i in range(len(w) - 1):
            if abs(w[i + 1] - w[i]) < 1e-9 * np.max(np.abs(w)):
                c, s = np.cos(0.7), np.sin(0.7)
                out[:, [i, i + 1]] = v[:, [i, i + 1]] @ np.array([[c, -s], [s, c]])
        return w, out

    monkeypatch.setattr(geometry.np.linalg, "eigh", rotated)
    again, values_again = normal_modes(coords, masses, hessian)
    np.testing.assert_allclose(again, modes, atol=1e-10)
    np.testing.assert_allclose(values_again, values, rtol=1e-12)


def test_random_displacements_are_reproducible():
    a, _ = random_displacements(WATER.coords, 4, 0.05, seed=3)
    b, _ = random_displacements(WATER.coords, 4, 0.05, seed=3)
    c, _ = random_displacements(WATER.coords, 4, 0.05, seed=4)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert 0.01 < np.std(a - WATER.coords) < 0.1


def test_xyz_frames(tmp_path):
    frames = "".join(f"2\nframe {k}\nH 0 0 0\nH 0 0 {0.7 + 0.1 * k}\n" for k in range(3))
    (tmp_path / "f.xyz").write_text(frames)
    coords = read_xyz_frames(tmp_path / "f.xyz", ("H", "H"))
    assert coords.shape == (3, 2, 3)
    assert coords[:, 1, 2] == pytest.approx(np.array([0.7, 0.8, 0.9]) * ANGSTROM)
    config = _scan_config(tmp_path, TINY + '[scan]\nkind = "xyz"\nxyz = "f.xyz"\n')
    assert generate(config.system.molecule, config.scan, "sto-3g")[0].shape == (3, 2, 3)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "scan, words",
    [
        ('kind = "bond"\natoms = [0, 1]\nvalues = [1.0]\ncolour = 1\n', "scan.colour"),
        ('kind = "bend"\n', "scan.kind"),
        ("atoms = [0, 1]\nvalues = [1.0]\n", "scan.kind"),
        ('kind = "bond"\natoms = [0, 5]\nvalues = [1.0]\n', "out of range"),
        ('kind = "bond"\natoms = [0, 1]\nvalues = "far"\n', "scan.values"),
        ('kind = "bond"\natoms = [0, 1]\n', "linspace"),
        ('kind = "bond"\natoms = [0, 1]\nvalues = [1.0]\nseed = 2\n', "not used"),
        ('kind = "angle"\natoms = [0, 1]\nvalues = [90.0]\n', "3 atom indices"),
        ('kind = "random"\ncount = 0\n', "scan.count"),
        ('kind = "xyz"\nxyz = "missing.xyz"\n', "no such file"),
        ('kind = "bond"\natoms = [0, 1]\nvalues = [1.0]\nforces = "yes"\n', "scan.forces"),
    ],
)
def test_scan_config_errors(tmp_path, capsys, scan, words):
    path = tmp_path / "bad.toml"
    path.write_text(TINY + "[scan]\n" + scan)
    assert main(["scan", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnqmc: error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "out").exists()


def test_scan_needs_a_scan_section_and_a_valid_shard(tmp_path, capsys):
    path = tmp_path / "plain.toml"
    path.write_text(TINY)
    assert main(["scan", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "[scan]" in capsys.readouterr().err
    path.write_text(SCAN)
    assert main(["scan", str(path), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err


# --------------------------------------------------------------------------- warm start
def test_warm_start_loads_the_neighbours_parameters(tmp_path):
    def run_at(r, **train_settings):
        mol = Molecule(("H", "H"), np.array([[0, 0, 0], [0, 0, r]]))
        cfg = nnqmc.settings(
            "w",
            molecule=mol,
            basis="sto-3g",
            ansatz={"kind": "jastrow"},
            train={"steps": 5, "walkers": 32, "optimizer": "adam", **train_settings},
            sampler={"burn_in": 5},
        )
        return prepare(cfg), mol

    run_a, mol_a = run_at(1.4, learning_rate=0.05)
    (tmp_path / "a").mkdir()
    trained_a = train(run_a, tmp_path / "a")
    params, walkers = trained_state(run_a, tmp_path / "a")
    assert np.allclose(params["jastrow"]["en"], trained_a.params["jastrow"]["en"])
    assert np.any(np.asarray(params["jastrow"]["en"]) != 0)  # trained away from the init
    run_b, mol_b = run_at(1.6, learning_rate=1e-12, steps=1)
    shifted = shift_walkers(walkers, mol_a.coords, mol_b.coords)
    assert np.allclose(shifted[..., :2], walkers[..., :2])  # only z moves, by 0 or 0.2
    assert np.allclose(np.sort(np.unique(np.round(shifted[..., 2] - walkers[..., 2], 9))), [0, 0.2])
    fresh = run_b.ansatz.init(None)
    warm = train(run_b, initial=(transfer_parameters(params, fresh), shifted))
    for name in ("ee", "en"):
        assert np.allclose(warm.params["jastrow"][name], params["jastrow"][name], rtol=1e-6)
    cold = train(run_b)
    assert np.allclose(cold.params["jastrow"]["en"], 0, atol=1e-9)


def test_warm_start_carries_the_trained_ci_factors_to_the_new_casscf():
    old = {"net": {"w": np.ones(3)}, "ci": np.array([1.004, -0.0005, 0.2])}
    old_cas = {"net": {"w": np.zeros(3)}, "ci": np.array([0.997, -0.078, 0.1])}
    new_cas = {"net": {"w": np.zeros(3)}, "ci": np.array([0.99, -0.2, -0.05])}  # MO sign flip
    warm = transfer_parameters(old, new_cas, old_cas)
    assert warm["net"] is old["net"]
    assert np.allclose(warm["ci"], [0.99 * 1.004 / 0.997, -0.2 * 0.0005 / 0.078, -0.1])
    assert np.allclose(transfer_parameters(old, new_cas)["ci"], [1.004, -0.0005, -0.2])
    assert transfer_parameters({"jastrow": 1}, {"jastrow": 0}) == {"jastrow": 1}


def test_nearest_finished_geometry_of_the_same_shard(tmp_path):
    from nnqmc.pes.dataset import new_dataset
    from nnqmc.pes.scan import Shard, nearest_done

    positions = np.array([[[0, 0, 0], [0, 0, r]] for r in (1.0, 1.5, 2.0, 2.8)], float)
    data = new_dataset([1, 1], positions, np.arange(4.0), {}, forces=False, ccsd_t=False)
    assert nearest_done(data, 2, Shard()) is None
    data.set_row(0, status="done")
    data.set_row(3, status="done")
    assert nearest_done(data, 2, Shard()) == 3 and nearest_done(data, 1, Shard()) == 0
    assert nearest_done(data, 2, Shard(0, 2)) == 0  # geometry 3 belongs to shard 1/2


# --------------------------------------------------------------------------- forces
def test_forces_match_the_energy_derivative_on_h2():
    """R = 1 bohr, HF determinant (sto-3g). For the fixed psi the ZV estimator must equal
    the finite difference of <H(R)> on the same samples; with the exact zero-bias term it
    must reproduce the HF force of PySCF (which includes the Pulay force), within its error
    bar; the Q approximation of that term only within 0.02 Ha/bohr."""
    from pyscf import gto, scf

    mol = Molecule(("H", "H"), np.array([[0, 0, 0], [0, 0, 1.0]]))
    cfg = nnqmc.settings(
        "f",
        molecule=mol,
        basis="sto-3g",
        ansatz={"kind": "hf", "cusp_correction": False},
        train={"steps": 1, "walkers": 512},
        sampler={"burn_in": 50},
        eval={"steps": 200, "dipole": False},
    )
    run = prepare(cfg)
    start = train(run)
    h = 1e-3

    def finite_difference(r):  # -(V(R + h) - V(R - h)) / 2h for atom 1, z
        shifted = []
        for s in (1, -1):
            c = mol.coords.copy()
            c[1, 2] += s * h
            shifted.append(MolecularHamiltonian(mol.charges, c, 1, 1).potential(r))
        return -(shifted[0] - shifted[1]) / (2 * h)

    obs = {
        **force_observables(mol.charges, mol.coords),
        **force_observables(mol.charges, mol.coords, pulay=False),
        "fd": finite_difference,
    }
    ev = evaluate(run, start.params, start.walkers, start.width, observables=obs)
    q_records = {k: v for k, v in ev.records.items() if k != FORCE_TERMS}
    zv, zv_err = forces_from_records(q_records, mol.charges, mol.coords, zero_bias=False)
    zvq, zvq_err = forces_from_records(q_records, mol.charges, mol.coords, zero_bias=True)
    zvzb, zvzb_err = forces_from_records(ev.records, mol.charges, mol.coords, zero_bias=True)
    fd = np.asarray(ev.records["fd"])
    diff = estimate(fd - np.asarray(ev.records["force_zv"])[:, 1, 2] - 1.0)  # F_nn = +1
    assert abs(diff.mean) < 4 * diff.error
    assert zv_err[1, 2] < 0.2 * estimate(fd).error  # zero variance: far smaller error
    assert zv[1, 2] > 0.3 and np.allclose(zv[0], -zv[1], atol=5 * zv_err.max())  # repulsive
    terms = np.asarray(ev.records[FORCE_TERMS])
    assert np.allclose(terms[:, 0], ev.records["force_zv"], atol=1e-9)  # the same F^ZV
    m = gto.M(atom="H 0 0 0; H 0 0 1", unit="Bohr", basis="sto-3g", verbose=0)
    exact = -scf.RHF(m).run().nuc_grad_method().kernel()  # atom 1, z: 0.365 Ha/bohr
    assert np.all(np.abs(zvzb - exact) < 4 * zvzb_err + 1e-6), (zvzb, zvzb_err, exact)
    assert abs(zvq[1, 2] - exact[1, 2]) < max(4 * zvq_err[1, 2], 0.02)
    assert nuclear_forces([1, 1], mol.coords)[1, 2] == pytest.approx(1.0)


def _lih_trained_a_little():
    """LiH (sto-3g, a small generalized ansatz) after a few SPRING steps: psi depends on the
    nuclei through the AOs, the cusps, the envelopes and the network."""
    mol = Molecule(("Li", "H"), np.array([[0.1, -0.2, 0.0], [0.3, 0.1, 3.0]]))
    cfg = nnqmc.settings(
        "lih",
        molecule=mol,
        basis="sto-3g",
        precision="float64",
        ansatz={"kind": "generalized", "embedding_dim": 8, "layers": 1, "n_rbf": 4},
        train={"steps": 5, "walkers": 64},
        sampler={"burn_in": 20},
        eval={"steps": 40, "dipole": False},
    )
    run = prepare(cfg)
    return mol, run, train(run)


def test_the_pulay_term_follows_a_translation_of_the_whole_molecule():
    """psi(r + a; R + a) = psi(r; R), so every walker has sum_I d log|psi|/dR_I =
    -sum_i grad_i log|psi| to rounding: nothing of psi is left behind when the nuclei move.
    And the exact zero-bias forces then sum to zero within their error bars."""
    import jax
    import jax.numpy as jnp

    from nnqmc.api import NuclearObservable

    mol, run, start = _lih_trained_a_little()

    def translation(log_psi_at, coords, r, e_local):
        g_nuclei, g_r = jax.grad(log_psi_at, argnums=(0, 1))(coords, r)
        residual = jnp.abs(jnp.sum(g_nuclei, axis=0) + jnp.sum(g_r, axis=0))
        return jnp.stack([residual, jnp.abs(jnp.sum(g_r, axis=0))])

    obs = {
        "translation": NuclearObservable(translation),
        **force_observables(mol.charges, mol.coords),
    }
    ev = evaluate(run, start.params, start.walkers, start.width, observables=obs)
    residual, scale = np.asarray(ev.records["translation"]).transpose(1, 0, 2)
    assert np.all(scale > 0.05) and np.all(residual < 1e-9 * scale.max() + 1e-10), residual.max()

    # the sum over the nuclei as the force on one nucleus without charge (F^nn sums to zero)
    summed = np.asarray(ev.records[FORCE_TERMS]).sum(axis=2, keepdims=True)
    records = {**ev.records, FORCE_TERMS: summed}
    total, total_err = forces_from_records(records, np.zeros(1), np.zeros((1, 3)))
    assert np.all(np.abs(total) < 4 * total_err), (total, total_err)


def test_the_node_regularisation_is_pathak_wagners_polynomial():
    """f(d/eps) with d = 1/|grad log psi|: 9x^2 - 15x^4 + 7x^6 below x = 1, 1 beyond;
    f(1) = 1, f'(1) = 0, and its integral over [0, 1] is 1, which cancels the O(eps) bias."""
    from nnqmc.pes.forces import NODE_EPSILON, node_factor

    def f(x):
        grad = np.zeros((2, 3))
        grad[0, 0] = 1.0 / (NODE_EPSILON * x)  # |grad log psi| = 1/d, d = x eps
        return float(node_factor(grad))

    assert f(0.5) == pytest.approx(9 / 4 - 15 / 16 + 7 / 64)
    assert f(1e-3) == pytest.approx(9e-6, rel=1e-5) and f(1.0) == pytest.approx(1.0)
    assert f(1.0 + 1e-6) == 1.0 and f(3.0) == 1.0
    assert (f(1 - 1e-4) - f(1 - 2e-4)) / 1e-4 == pytest.approx(0.0, abs=1e-2)
    xs = (np.arange(4000) + 0.5) / 4000
    assert np.mean([f(x) for x in xs]) == pytest.approx(1.0, abs=1e-6)


def test_a_nuclear_observable_needs_a_molecular_run():
    from nnqmc.api import NuclearObservable
    from nnqmc.steps import eval_step

    observables = {"x": NuclearObservable(lambda log_psi_at, coords, r, e: e)}
    with pytest.raises(ValueError, match="a function of the nuclei"):
        eval_step(None, None, sweeps=1, observables=observables)


# --------------------------------------------------------------------------- scans
@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A cold two-point scan with forces and CCSD(T), run through the CLI."""
    root = tmp_path_factory.mktemp("scan")
    (root / "scan.toml").write_text(SCAN)
    assert main(["scan", str(root / "scan.toml"), "--out", str(root / "one"), "--cold"]) == 0
    return root


def test_dataset_schema(single):
    data = read_dataset(single / "one" / "scan.h5")
    with h5py.File(single / "one" / "scan.h5") as f:
        for name in (
            "atomic_numbers",
            "positions",
            "energy",
            "energy_err",
            "variance",
            "forces",
            "forces_err",
            "hf_energy",
            "ccsd_t_energy",
            "steps",
            "wall_time",
            "status",
        ):
            assert name in f, name
        assert f["positions"].shape == (2, 2, 3) and f["forces"].shape == (2, 2, 3)
        assert list(f["atomic_numbers"]) == [1, 1]
        assert f.attrs["input_toml"] == SCAN and f.attrs["version"] == nnqmc.__version__
    assert [data.status(k) for k in range(2)] == ["done", "done"]
    cols = data.columns
    assert np.all(cols["energy_err"] > 0) and np.all(np.isfinite(cols["forces_err"]))
    assert list(cols["steps"]) == [4, 4] and list(cols["warm_from"]) == [-1, -1]
    # HF (PySCF sto-3g) at 1.2 and 2.0 bohr, and CCSD(T) below it
    from pyscf import gto, scf

    for k, r in enumerate((1.2, 2.0)):
        m = gto.M(atom=f"H 0 0 0; H 0 0 {r}", unit="Bohr", basis="sto-3g", verbose=0)
        assert cols["hf_energy"][k] == pytest.approx(scf.RHF(m).run().e_tot, abs=1e-7)
    assert np.all(cols["ccsd_t_energy"] < cols["hf_energy"])
    assert (single / "one" / "pes.png").stat().st_size > 1000
    result = json.loads((single / "one" / "geom-0001" / "result.json").read_text())
    assert result["energy"] == cols["energy"][1]


def test_resume_after_a_kill(single, tmp_path, capsys):
    out = tmp_path / "one"
    shutil.copytree(single / "one", out)
    data = read_dataset(out / "scan.h5")
    before = data.columns["energy"].copy()
    data.set_row(1, status="running", energy=np.nan)
    from nnqmc.pes import write_dataset

    write_dataset(out / "scan.h5", data)  # killed during the evaluation of geometry 1:
    for name in ("result.json", "eval.h5", "eval-checkpoint.h5", "eval-checkpoint.prev.h5"):
        (out / "geom-0001" / name).unlink(missing_ok=True)
    mtime = (out / "geom-0000" / "result.json").stat().st_mtime_ns
    assert main(["scan", str(single / "scan.toml"), "--out", str(out), "--cold"]) == 0
    data = read_dataset(out / "scan.h5")
    assert [data.status(k) for k in range(2)] == ["done", "done"]
    assert (out / "geom-0000" / "result.json").stat().st_mtime_ns == mtime  # not run again
    assert data.columns["energy"][1] == pytest.approx(before[1], abs=1e-12)  # same state
    assert "geometry 0" not in capsys.readouterr().err


def test_shards_merge_into_the_single_run(single, tmp_path):
    toml = str(single / "scan.toml")
    for i in (0, 1):
        assert main(["scan", toml, "--out", str(tmp_path), "--cold", "--shard", f"{i}/2"]) == 0
    shard0 = read_dataset(tmp_path / "scan.shard-0-of-2.h5")
    assert [shard0.status(k) for k in range(2)] == ["done", "pending"]
    shards = [str(tmp_path / f"scan.shard-{i}-of-2.h5") for i in (0, 1)]
    assert main(["merge", str(tmp_path / "merged.h5"), *shards]) == 0
    merged = read_dataset(tmp_path / "merged.h5")
    one = read_dataset(single / "one" / "scan.h5")
    assert np.array_equal(merged.positions, one.positions)
    for name, column in one.columns.items():
        if name == "wall_time":
            continue
        if column.dtype == object:
            assert list(merged.columns[name]) == list(column), name
        else:
            assert np.allclose(merged.columns[name], column, rtol=0, atol=1e-12), name


def test_export_extxyz_reads_back_with_ase(single, tmp_path):
    ase_io = pytest.importorskip("ase.io")
    data = read_dataset(single / "one" / "scan.h5")
    path = tmp_path / "h2.extxyz"
    assert (
        main(["export", str(single / "one" / "scan.h5"), "--format", "extxyz", "--out", str(path)])
        == 0
    )
    frames = ase_io.read(path, index=":")
    assert len(frames) == 2
    for k, atoms in enumerate(frames):
        assert list(atoms.get_atomic_numbers()) == [1, 1]
        assert np.allclose(atoms.get_positions(), data.positions[k] * BOHR_ANGSTROM, atol=1e-9)
        assert atoms.get_potential_energy() == pytest.approx(data.columns["energy"][k] * HARTREE_EV)
        forces = data.columns["forces"][k] * HARTREE_EV / BOHR_ANGSTROM
        assert np.allclose(atoms.get_forces(), forces, atol=1e-9)
    assert "eV" in path.read_text().splitlines()[1]


def test_export_npz_has_the_sgdml_layout(single, tmp_path):
    data = read_dataset(single / "one" / "scan.h5")
    path = tmp_path / "h2.npz"
    assert (
        main(["export", str(single / "one" / "scan.h5"), "--format", "npz", "--out", str(path)])
        == 0
    )
    npz = np.load(path)
    for key in ("R", "z", "E", "F", "name", "theory", "type", "r_unit", "e_unit", "md5"):
        assert key in npz, key
    assert str(npz["type"]) == "d" and str(npz["r_unit"]) == "Ang" and str(npz["e_unit"]) == "eV"
    assert npz["R"].shape == (2, 2, 3) and npz["E"].shape == (2, 1) and npz["F"].shape == (2, 2, 3)
    assert np.allclose(npz["E"][:, 0], data.columns["energy"] * HARTREE_EV)
    assert np.allclose(npz["R"], data.positions * BOHR_ANGSTROM)
    assert list(npz["z"]) == [1, 1]


# --------------------------------------------------------------------------- accuracy
# Exact H2 energies (REFERENCE_ENERGIES.md; 1.6 bohr: Kolos & Wolniewicz, which FCI/cc-pV5Z
# plus its 0.25 mHa basis-set error reproduces) and slopes dE/dR (Ha/bohr) from FCI/cc-pV5Z
# by central differences (h = 0.005 bohr, PySCF; cc-pVQZ gives the same to 0.5 mHa/bohr).
H2_EXACT = {
    1.0: -1.1245397,
    1.4: -1.1744757,
    1.6: -1.1685836,
    2.0: -1.1381330,
    3.0: -1.0573263,
    4.0: -1.0163903,
}
H2_SLOPE = {1.0: -0.3227, 1.4: -0.0005, 1.6: 0.0531, 2.0: 0.0888, 3.0: 0.0623, 4.0: 0.0227}
FORCE_BIAS = 0.1 * BOHR_ANGSTROM / HARTREE_EV  # 0.1 eV/A in Ha/bohr


@pytest.mark.slow
@pytest.mark.ci_slow  # 70 s since a scan compiles its steps once
def test_h2_scan_reaches_the_exact_curve_and_its_slope(tmp_path):
    """systems/h2_scan.toml with a smaller network and budget (2-core CPU)."""
    from nnqmc.config import load_config
    from nnqmc.pes import run_scan

    path = Path(__file__).parent.parent / "systems" / "h2_scan.toml"
    overrides = [
        "ansatz.embedding_dim=16",
        "ansatz.layers=2",
        "ansatz.n_rbf=8",
        "train.steps=600",
        "scan.steps=200",
        "eval.steps=300",
        # float64, as this test was set up: in mixed precision (the default now) one of two
        # fresh-clone runs put atom 1's F_z at 1.4 bohr 3.2 sigma off, the other passed
        "precision=float64",
    ]
    data = run_scan(load_config(path, overrides), path.read_text(), tmp_path)
    for k in range(data.n):
        r = float(data.labels[k, 0])
        e, err = data.columns["energy"][k], data.columns["energy_err"][k]
        assert data.status(k) == "done"
        assert e - H2_EXACT[r] < 1e-3, (r, e, err)
        assert e > H2_EXACT[r] - 3 * err, (r, e, err)
        if r in (1.4, 2.0, 3.0):
            # VMC forces carry a bias of the trained psi's error besides their error bar:
            # up to 3.6 mHa/bohr (2.5 sigma) in docs/pes.md's two seeds; allow 0.1 eV/A
            force, force_err = data.columns["forces"][k], data.columns["forces_err"][k]
            allowed = 3 * force_err[:, 2] + FORCE_BIAS
            assert abs(force[1, 2] + H2_SLOPE[r]) < allowed[1], (r, force, force_err)
            assert abs(force[0, 2] - H2_SLOPE[r]) < allowed[0], (r, force, force_err)


@pytest.mark.parametrize("name", ["h2_scan", "h2_scan_dense"])
def test_shipped_h2_scan_references_follow_the_exact_curve(name):
    """Each shipped scan's ``reference`` is the exact energy where one is known (H2_EXACT),
    and a smooth curve with its minimum near 1.4 bohr in between."""
    config = load_config(Path(__file__).parent.parent / "systems" / f"{name}.toml")
    coords, _ = generate(config.system.molecule, config.scan, config.system.basis)
    r = np.linalg.norm(coords[:, 1] - coords[:, 0], axis=-1)
    energy = np.asarray(config.scan.reference)
    assert energy.shape == r.shape
    tabulated = [k for k, x in enumerate(r) if round(float(x), 6) in H2_EXACT]
    assert len(tabulated) >= 4
    for k in tabulated:
        assert energy[k] == H2_EXACT[round(float(r[k]), 6)]
    assert abs(r[np.argmin(energy)] - 1.4) <= 0.11
    if np.allclose(np.diff(r), r[1] - r[0]):  # equal steps: a 0.5 mHa slip in one value
        # shows as a 3 mHa fourth difference; the exact curve's are below 1.5 mHa from 1.75 bohr
        assert np.all(np.abs(np.diff(energy, 4)[r[:-4] >= 1.75]) < 1.5e-3)
