"""Exports that force-field trainers read unchanged (issue 21, docs/forcefields.md).

The dataset is the synthetic one of :mod:`nnqmc.pes.synthetic` (RHF/STO-3G energies and
analytic forces of displaced H2O, varying synthetic error bars), so no QMC runs here.
sGDML itself runs in CI (``.ci/sgdml_check``); MACE, NequIP, GAP and SchNetPack in
``bench/trainers.py``.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

from nnqmc.cli import main
from nnqmc.pes import BOHR_ANGSTROM, HARTREE_EV, write_dataset
from nnqmc.pes.dataset import new_dataset
from nnqmc.pes.export import config_force_sigma, export, inverse_variance_weights
from nnqmc.pes.synthetic import rhf_dataset, rhf_energy_forces

FORCE = HARTREE_EV / BOHR_ANGSTROM


@pytest.fixture(scope="module")
def water():
    return rhf_dataset("h2o", count=12, seed=3)


@pytest.fixture(scope="module")
def water_file(water, tmp_path_factory):
    path = tmp_path_factory.mktemp("water") / "h2o.h5"
    write_dataset(path, water)
    return path


def _export(source, fmt, path) -> None:
    assert main(["export", str(source), "--format", fmt, "--out", str(path)]) == 0


def test_synthetic_labels_are_rhf_with_varying_error_bars(water):
    energy, forces = rhf_energy_forces((8, 1, 1), water.positions[5])
    assert water.columns["energy"][5] == pytest.approx(energy, abs=1e-9)
    assert np.allclose(water.columns["forces"][5], forces, atol=1e-8)
    assert np.allclose(water.columns["forces"][5].sum(axis=0), 0, atol=1e-6)  # no net force
    assert np.ptp(water.columns["energy_err"]) > 0 and np.ptp(water.columns["forces_err"]) > 0
    assert all(water.status(k) == "done" for k in range(water.n))


def test_forces_are_minus_the_energy_gradient(water):
    """The sign and scale sGDML checks: energy differences between geometries against the
    work of the (trapezoid-averaged) forces, in the exported units."""
    e = water.columns["energy"] * HARTREE_EV
    f = water.columns["forces"] * FORCE
    r = water.positions * BOHR_ANGSTROM
    pairs = [(0, k) for k in range(1, water.n)]
    de = np.array([e[j] - e[i] for i, j in pairs])
    work = np.array([-0.5 * np.sum((f[i] + f[j]) * (r[j] - r[i])) for i, j in pairs])
    slope = np.dot(de, work) / np.dot(work, work)
    assert slope == pytest.approx(1.0, abs=0.03)
    assert np.corrcoef(de, work)[0, 1] > 0.999


def test_inverse_variance_weights():
    w = inverse_variance_weights(np.array([1.0, 2.0, 0.5]))
    assert w.mean() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(4.0) and w[2] / w[0] == pytest.approx(4.0)
    assert np.array_equal(inverse_variance_weights(np.full(4, 0.3)), np.ones(4))
    for bad in (np.array([1.0, 0.0]), np.array([1.0, np.nan]), np.array([1.0, -1.0])):
        assert np.array_equal(inverse_variance_weights(bad), np.ones(2))
    sigma = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    assert config_force_sigma(sigma) == pytest.approx([np.sqrt(25 / 6)])


def test_extxyz_carries_ase_mace_and_gap_keys(water, water_file, tmp_path):
    ase_io = pytest.importorskip("ase.io")
    path = tmp_path / "h2o.extxyz"
    _export(water_file, "extxyz", path)
    frames = ase_io.read(path, index=":")
    assert len(frames) == water.n
    e_err = water.columns["energy_err"] * HARTREE_EV
    f_err = water.columns["forces_err"] * FORCE
    f_sigma = np.sqrt(np.mean(f_err**2, axis=(1, 2)))
    e_weight = (1 / e_err**2) / np.mean(1 / e_err**2)
    f_weight = (1 / f_sigma**2) / np.mean(1 / f_sigma**2)
    for k, atoms in enumerate(frames):
        energy = water.columns["energy"][k] * HARTREE_EV
        forces = water.columns["forces"][k] * FORCE
        assert list(atoms.get_chemical_symbols()) == ["O", "H", "H"]
        assert np.allclose(atoms.get_positions(), water.positions[k] * BOHR_ANGSTROM, atol=1e-9)
        # ASE calculator results (NequIP reads these)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)
        assert np.allclose(atoms.get_forces(), forces, atol=1e-9)
        # MACE's default keys and per-configuration weights
        assert atoms.info["REF_energy"] == pytest.approx(energy, abs=1e-9)
        assert np.allclose(atoms.arrays["REF_forces"], forces, atol=1e-9)
        assert atoms.info["config_energy_weight"] == pytest.approx(e_weight[k])
        assert atoms.info["config_forces_weight"] == pytest.approx(f_weight[k])
        # GAP's per-configuration and per-component sigmas
        assert atoms.info["energy_sigma"] == pytest.approx(e_err[k])
        assert atoms.info["force_sigma"] == pytest.approx(f_sigma[k])
        assert np.allclose(atoms.arrays["force_component_sigma"], f_err[k], rtol=1e-6)
        assert atoms.info["index"] == k
        # a lattice for QUIP's reader (GAP), far from any cutoff, and no periodicity
        side = atoms.cell.lengths()
        assert not atoms.pbc.any() and np.allclose(side, side[0]) and side[0] >= 20
    weights = [a.info["config_energy_weight"] for a in frames]
    assert np.mean(weights) == pytest.approx(1.0) and np.ptp(weights) > 0


def _sgdml_fingerprint(npz) -> bytes:
    """sGDML's dataset_md5, written out independently: md5 over the md5 digests of the raw
    buffers of z, R, E and F."""
    outer = hashlib.md5()
    for key in ("z", "R", "E", "F"):
        outer.update(hashlib.md5(np.asarray(npz[key]).ravel()).digest())
    return outer.hexdigest().encode()


def test_npz_has_sgdml_fingerprint_as_bytes(water, water_file, tmp_path):
    path = tmp_path / "h2o.npz"
    _export(water_file, "npz", path)
    npz = np.load(path)
    assert npz["md5"].dtype.kind == "S" and npz["md5"].dtype.itemsize == 32
    assert npz["md5"].item() == _sgdml_fingerprint(npz)
    assert str(npz["type"]) == "d" and str(npz["r_unit"]) == "Ang" and str(npz["e_unit"]) == "eV"
    assert npz["E"].shape == (water.n, 1) and npz["F"].shape == (water.n, 3, 3)
    assert np.allclose(npz["E"][:, 0], water.columns["energy"] * HARTREE_EV)
    assert np.allclose(npz["F"], water.columns["forces"] * FORCE)
    assert np.allclose(npz["E_err"][:, 0], water.columns["energy_err"] * HARTREE_EV)
    assert np.allclose(npz["F_err"], water.columns["forces_err"] * FORCE)
    # any change of the labels changes the fingerprint
    changed = {key: npz[key] for key in npz.files}
    changed["E"] = changed["E"] + 1e-9
    assert _sgdml_fingerprint(changed) != npz["md5"].item()


def test_db_reads_with_ase_and_its_units(water, water_file, tmp_path):
    ase_db = pytest.importorskip("ase.db")
    path = tmp_path / "h2o.db"
    _export(water_file, "db", path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2o.db"]  # no temporary left
    with ase_db.connect(path) as conn:
        meta = conn.metadata
        rows = list(conn.select())
    assert meta["_distance_unit"] == "Ang" and meta["atomrefs"] == {}
    assert meta["_property_unit_dict"] == {
        "energy": "eV",
        "energy_err": "eV",
        "forces": "eV/Ang",
        "forces_err": "eV/Ang",
    }
    assert len(rows) == water.n
    for row in rows:
        k = row.key_value_pairs["index"]
        energy = water.columns["energy"][k] * HARTREE_EV
        assert row.data["energy"].shape == (1,) and row.data["energy"][0] == pytest.approx(energy)
        assert row.energy == pytest.approx(energy)
        assert np.allclose(row.data["forces"], water.columns["forces"][k] * FORCE)
        assert np.allclose(row.forces, water.columns["forces"][k] * FORCE)
        assert np.allclose(row.data["forces_err"], water.columns["forces_err"][k] * FORCE)
        assert row.data["energy_err"][0] == pytest.approx(
            water.columns["energy_err"][k] * HARTREE_EV
        )
        assert np.allclose(row.positions, water.positions[k] * BOHR_ANGSTROM)


def test_db_reads_with_schnetpack(water_file, tmp_path):
    spk_data = pytest.importorskip("schnetpack.data")
    path = tmp_path / "h2o.db"
    _export(water_file, "db", path)
    data = spk_data.ASEAtomsData(str(path))
    assert len(data) == 12
    assert data.units["energy"] == "eV" and data.units["forces"] == "eV/Ang"
    item = data[0]
    assert tuple(item["forces"].shape) == (3, 3) and tuple(item["energy"].shape) == (1,)


def test_db_without_ase_is_a_one_line_error(water_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ase.db", None)
    path = tmp_path / "h2o.db"
    assert main(["export", str(water_file), "--format", "db", "--out", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ASE" in err and "pip install ase" in err
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_exports_without_forces(tmp_path):
    """A scan without ``forces = true``: energies only, no force keys anywhere."""
    pytest.importorskip("ase")
    import ase.db
    import ase.io

    data = new_dataset(
        np.array([1, 1]),
        np.array([[[0, 0, 0], [0, 0, 1.4]], [[0, 0, 0], [0, 0, 1.6]]], float),
        np.array([[1.4], [1.6]]),
        {"name": "h2"},
        forces=False,
        ccsd_t=False,
    )
    data.set_row(0, energy=-1.17, energy_err=1e-4, status="done")
    data.set_row(1, energy=-1.16, energy_err=2e-4, status="failed")
    assert export(data, "extxyz", tmp_path / "h2.extxyz") == 1
    (atoms,) = ase.io.read(tmp_path / "h2.extxyz", index=":")
    assert atoms.info["REF_energy"] == pytest.approx(-1.17 * HARTREE_EV)
    assert "force_sigma" not in atoms.info and "REF_forces" not in atoms.arrays
    assert atoms.info["config_energy_weight"] == pytest.approx(1.0)
    export(data, "npz", tmp_path / "h2.npz")
    npz = np.load(tmp_path / "h2.npz")
    assert "F" not in npz and npz["E"].shape == (1, 1)
    export(data, "db", tmp_path / "h2.db")
    with ase.db.connect(tmp_path / "h2.db") as conn:
        assert set(conn.metadata["_property_unit_dict"]) == {"energy", "energy_err"}
        assert conn.count() == 1
