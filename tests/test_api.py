"""The Python API: custom Hamiltonians, external terms, observables, the README example.

Default tests check values on fixed configurations and that everything passes through
``train``/``evaluate``; the ``ci_slow`` ones are the accuracy claims of the README
(Hooke's atom within 1 mHa of 2 Ha; the polarisability of H within 5% of 4.5 a.u.).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnqmc
from nnqmc.api import RunError, initial_walkers
from nnqmc.config import ConfigError, config_from_dict, load_config
from nnqmc.estimate import estimate
from nnqmc.hamiltonian import local_energy

README = Path(__file__).resolve().parents[1] / "README.md"
OMEGA = 0.5  # Hooke's atom: E = 2 Ha exactly


@dataclass(frozen=True)
class HookeAtom:
    n_up: int = 1
    n_down: int = 1

    def potential(self, r: jax.Array) -> jax.Array:
        return 0.5 * OMEGA**2 * jnp.sum(r * r) + 1.0 / jnp.linalg.norm(r[0] - r[1])


def gaussian_orbital(x: jax.Array) -> jax.Array:
    return jnp.exp(-0.5 * OMEGA * jnp.sum(x * x))[None]


R = jnp.array([[0.1, -0.2, 0.3], [1.0, 0.5, -0.7]])
CHARGES = np.array([1.0, 2.0])
COORDS = np.array([[0.0, 0.0, 0.5], [0.3, -1.0, 2.0]])


# ---------------------------------------------------------------------- potentials
def test_uniform_field_potential_and_nuclear_term():
    f = np.array([0.01, -0.02, 0.03])
    term = nnqmc.UniformField(f)
    assert float(term.electron_potential(R)) == pytest.approx(f @ np.asarray(R).sum(0))
    assert term.nuclear_energy(CHARGES, COORDS) == pytest.approx(-f @ (CHARGES @ COORDS))
    plain = nnqmc.MolecularHamiltonian(CHARGES, COORDS, 1, 1)
    field = nnqmc.MolecularHamiltonian(CHARGES, COORDS, 1, 1, (term,))
    expected = f @ (np.asarray(R).sum(0) - CHARGES @ COORDS)
    assert float(field.potential(R) - plain.potential(R)) == pytest.approx(expected, abs=1e-14)


def test_a_constant_energy_left_over_from_other_nuclei_is_refused():
    """``constant`` is the energy without electrons at ``coords``: replacing the nuclei
    but keeping it is refused; with ``constant=None`` it follows the nuclei."""
    field = (nnqmc.UniformField(np.array([0.01, -0.02, 0.03])),)
    h = nnqmc.MolecularHamiltonian(CHARGES, COORDS, 1, 1, field)
    pinned = dataclasses.replace(h, constant=h.constant_energy)
    assert float(pinned.potential(R)) == float(h.potential(R))
    moved = COORDS * 1.5
    with pytest.raises(ValueError, match="not the energy without electrons"):
        dataclasses.replace(pinned, coords=moved)
    followed = dataclasses.replace(pinned, coords=moved, constant=None)
    own = nnqmc.MolecularHamiltonian(CHARGES, moved, 1, 1, field)
    assert followed.constant_energy == own.constant_energy != h.constant_energy
    with pytest.raises(ValueError, match=r"constant = \[.*\] is not the energy"):
        dataclasses.replace(pinned, coords=moved, constant=np.full(2, h.constant_energy))


def test_log_psi_at_other_nuclei_carries_no_stale_constant():
    """``log_psi_at(R, r)`` as a NuclearObservable gets it (docs/api.md), at concrete nuclei
    R other than the run's: log|psi| there, the same as under jit, and the Hamiltonian
    built with those nuclei has their energy without electrons, not the run's."""
    from nnqmc.programs import _nuclei
    from nnqmc.run_setup import with_nuclei

    molecule = nnqmc.Molecule(("H", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]]))
    config = nnqmc.settings(
        molecule=molecule,
        basis="sto-3g",
        precision="float64",
        ansatz={"kind": "jastrow"},
        hamiltonian={"field": [0.0, 0.0, 0.01]},
    )
    run = nnqmc.prepare(config)
    params = run.ansatz.init(jax.random.PRNGKey(0))
    moved = np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 1.8]])
    _, log_psi_at = _nuclei(run.physics, run.geometry)
    value = log_psi_at(params, moved, R)  # concrete nuclei and geometry
    traced = jax.jit(log_psi_at)(params, jnp.asarray(moved), R)
    assert np.isfinite(value) and float(value) == pytest.approx(float(traced), rel=1e-12)
    h = run.physics(with_nuclei(run.geometry, moved)).hamiltonian
    own = nnqmc.MolecularHamiltonian(molecule.charges, moved, 1, 1, run.hamiltonian.external)
    assert h.constant_energy == own.constant_energy != run.hamiltonian.constant_energy


def test_point_charges_potential():
    term = nnqmc.PointCharges((0.5, -1.0), ((0.0, 0.0, 3.0), (2.0, 0.0, 0.0)))
    r, q, c = np.asarray(R), np.array([0.5, -1.0]), np.array(term.coords)
    d = np.linalg.norm(r[:, None] - c[None], axis=-1)
    assert float(term.electron_potential(R)) == pytest.approx(-np.sum(q / d))
    d_n = np.linalg.norm(COORDS[:, None] - c[None], axis=-1)
    assert term.nuclear_energy(CHARGES, COORDS) == pytest.approx(np.sum(np.outer(CHARGES, q) / d_n))


def test_harmonic_trap_and_hooke_without_nuclei():
    trap = nnqmc.HarmonicTrap(OMEGA, center=(0.0, 0.0, 1.0))
    d = np.asarray(R) - [0.0, 0.0, 1.0]
    assert float(trap.electron_potential(R)) == pytest.approx(0.5 * OMEGA**2 * np.sum(d * d))
    assert trap.nuclear_energy(CHARGES, COORDS) == 0.0
    builtin = nnqmc.MolecularHamiltonian.without_nuclei(1, 1, [nnqmc.HarmonicTrap(OMEGA)])
    assert float(builtin.potential(R)) == pytest.approx(float(HookeAtom().potential(R)))
    extended = nnqmc.with_external(HookeAtom(), [nnqmc.UniformField((0.0, 0.0, 0.1))])
    assert (extended.n_up, extended.n_down, extended.charges.shape) == (1, 1, (0,))
    shift = 0.1 * float(np.asarray(R)[:, 2].sum())
    assert float(extended.potential(R)) == pytest.approx(float(HookeAtom().potential(R)) + shift)


def test_invalid_external_terms_are_refused():
    with pytest.raises(ValueError):
        nnqmc.UniformField((1.0, 2.0))
    with pytest.raises(ValueError):
        nnqmc.HarmonicTrap(-1.0)
    with pytest.raises(ValueError):
        nnqmc.PointCharges((1.0,), ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)))


def test_point_charge_on_a_nucleus_is_refused_at_input():
    """Closer than two atoms may be (0.1 bohr): in the config, and in the Python API."""
    system = {"atoms": "H 0 0 0\nH 0 0 1.4", "unit": "bohr"}
    near = {"point_charges": [[0.5, 0.0, 0.0, 8.0], [1.0, 0.0, 0.0, 1.45]]}
    with pytest.raises(ConfigError, match="hamiltonian.point_charges") as info:
        config_from_dict({"name": "x", "system": system, "hamiltonian": near})
    assert "point charge 2" in str(info.value) and "atom 2 (H)" in str(info.value)
    assert "\n" not in str(info.value)
    far = {"point_charges": [[1.0, 0.0, 0.0, 1.6]]}
    config_from_dict({"name": "x", "system": system, "hamiltonian": far})

    on_nucleus = nnqmc.PointCharges((1.0,), (tuple(COORDS[1]),))
    with pytest.raises(ValueError, match="point charge 1 .* nucleus 2"):
        nnqmc.MolecularHamiltonian(CHARGES, COORDS, 1, 1, (on_nucleus,))
    plain = nnqmc.MolecularHamiltonian(CHARGES, COORDS, 1, 1)
    with pytest.raises(ValueError, match="nucleus 2"):
        nnqmc.with_external(plain, [on_nucleus])
    with pytest.raises(ValueError, match="nucleus 2"):
        on_nucleus.nuclear_energy(CHARGES, COORDS)
    # without nuclei (Hooke's atom) a charge may sit anywhere
    nnqmc.with_external(HookeAtom(), [nnqmc.PointCharges((1.0,), ((0.0, 0.0, 0.0),))])


def test_dipole_observable_on_a_fixed_configuration():
    mu = nnqmc.dipole_moment(CHARGES, COORDS)(R)
    np.testing.assert_allclose(mu, CHARGES @ COORDS - np.asarray(R).sum(0), atol=1e-14)


# ---------------------------------------------------------------------- config / SCF
def test_hamiltonian_section_in_toml_reaches_hamiltonian_and_scf(tmp_path):
    toml = tmp_path / "h.toml"
    toml.write_text(
        'name = "h"\n[system]\natoms = "H 0 0 1.0"\nunit = "bohr"\nspin = 1\n'
        'basis = "cc-pvdz"\n[ansatz]\nkind = "hf"\n'
        "[hamiltonian]\nfield = [0.0, 0.0, 0.05]\npoint_charges = [[0.5, 0.0, 0.0, 8.0]]\n"
    )
    run = nnqmc.prepare(load_config(toml))
    kinds = [type(t).__name__ for t in run.hamiltonian.external]
    assert kinds == ["UniformField", "PointCharges"]
    plain = nnqmc.prepare(load_config(toml, ["hamiltonian.field=[0, 0, 0]"]))
    # the field polarises the SCF orbitals and lowers the energy by alpha(basis) F^2 / 2
    assert 1e-4 < plain.scf.energy - run.scf.energy < 3e-3
    with pytest.raises(ConfigError, match="hamiltonian.harmonic"):
        load_config(toml, ["hamiltonian.harmonic=-1"])


def test_field_energy_is_translation_invariant_for_a_neutral_atom():
    def energy(z: float) -> float:
        mol = nnqmc.Molecule.from_atoms_text(f"H 0 0 {z}", "bohr", spin=1)
        config = nnqmc.settings(
            molecule=mol, ansatz={"kind": "hf"}, hamiltonian={"field": [0.0, 0.0, 0.02]}
        )
        return nnqmc.prepare(config).scf.energy

    assert energy(1.5) == pytest.approx(energy(0.0), abs=1e-9)


def test_settings_without_a_molecule_and_prepare_refuses_them():
    config = nnqmc.settings(train={"steps": 3})
    assert config.system is None and config.train.steps == 3
    with pytest.raises(ConfigError, match="train.walkers"):
        nnqmc.settings(train={"walkers": 0})
    with pytest.raises(RunError, match="custom_run"):
        nnqmc.prepare(config)


def test_molecule_from_pyscf():
    from pyscf import gto

    mol = gto.M(atom="Li 0 0 0; H 0 0 3.015", unit="bohr", verbose=0)
    molecule = nnqmc.Molecule.from_pyscf(mol)
    assert molecule.symbols == ("Li", "H") and (molecule.n_up, molecule.n_down) == (2, 2)
    np.testing.assert_allclose(molecule.coords[1], [0.0, 0.0, 3.015])
    config = nnqmc.settings(molecule=molecule, basis="sto-3g")
    assert config.system.molecule.symbols == ("Li", "H")


# ---------------------------------------------------------------------- custom runs
def test_ansatz_from_orbitals_needs_enough_orbitals():
    with pytest.raises(ValueError, match="at least 2"):
        nnqmc.ansatz_from_orbitals(gaussian_orbital, 2, 0)
    with pytest.raises(ValueError, match="the Hamiltonian"):
        nnqmc.custom_run(HookeAtom(), nnqmc.ansatz_from_orbitals(gaussian_orbital, 1, 0))


@pytest.mark.parametrize("kind", ["hf", "paulinet", "generalized"])
def test_exact_hooke_wavefunction_local_energy_and_paulinet_without_nuclei(kind):
    """At initialisation PauliNet without nuclei is det x exp(gamma): finite, and the exact
    wavefunction (1 + r12/2) exp(-(r1^2 + r2^2)/4) has E_L = 2 everywhere."""
    ansatz = nnqmc.ansatz_from_orbitals(
        gaussian_orbital, 1, 1, kind=kind, options=nnqmc.settings().ansatz
    )
    params = ansatz.init(jax.random.PRNGKey(0))
    walkers = nnqmc.gaussian_walkers(1, 1)(jax.random.PRNGKey(1), 8)
    if kind == "hf":

        def log_psi(r):
            return ansatz.log_psi(params, r) + jnp.log1p(0.5 * jnp.linalg.norm(r[0] - r[1]))

        e = jax.jit(jax.vmap(lambda r: local_energy(log_psi, HookeAtom(), r)))(walkers)
        np.testing.assert_allclose(e, 2.0, atol=1e-10)
    else:
        values = jax.jit(jax.vmap(lambda r: ansatz.log_psi(params, r)))(walkers)
        assert np.all(np.isfinite(values))
        gamma = jax.vmap(lambda r: nnqmc.ansatz.jastrow.electron_cusp(r, 1, 1))(walkers)
        det = jax.vmap(lambda r: jnp.log(gaussian_orbital(r[0])[0] * gaussian_orbital(r[1])[0]))
        np.testing.assert_allclose(values, det(walkers) + gamma, atol=1e-10)


def test_generalized_on_user_orbitals_with_nuclei_needs_charges():
    with pytest.raises(ValueError, match="charges"):
        nnqmc.ansatz_from_orbitals(gaussian_orbital, 1, 1, kind="generalized", coords=COORDS)
    ansatz = nnqmc.ansatz_from_orbitals(
        gaussian_orbital, 1, 1, kind="generalized", coords=COORDS, charges=CHARGES
    )
    assert "zeta" in ansatz.init(jax.random.PRNGKey(0))


def test_custom_observable_passes_through_evaluate():
    config = nnqmc.settings(train={"walkers": 32}, eval={"steps": 4, "decorrelation": 2})
    ansatz = nnqmc.ansatz_from_orbitals(gaussian_orbital, 1, 1, kind="jastrow")
    run = nnqmc.custom_run(HookeAtom(), ansatz, config)
    walkers = np.asarray(initial_walkers(run, jax.random.PRNGKey(0), 32))
    params = ansatz.init(jax.random.PRNGKey(0))
    result = nnqmc.evaluate(
        run, params, walkers, 0.5, observables={"r2": lambda r: jnp.sum(r * r, axis=1)}
    )
    assert np.isfinite(result.energy) and result.steps == 4
    assert set(result.observables) == {"dipole", "r2"}
    assert (
        len(result.observables["r2"]["value"]) == 2
        and len(result.observables["dipole"]["error"]) == 3
    )
    assert np.all(np.asarray(result.observables["r2"]["value"]) > 0)
    assert np.asarray(result.records["r2"]).shape == (4, 2)


def test_run_returns_its_parts_and_result_json_is_their_summary(tmp_path):
    """run() gives the trained, evaluated and diffused parts and the prepared run in
    memory; result.json is ``summary()`` byte for byte, also after ``evaluate_run``."""
    from test_dmc_phase import H2, TINY

    from nnqmc import io

    out = tmp_path / "run"
    result = nnqmc.run(load_config(H2, TINY), out)
    assert isinstance(result, nnqmc.RunResult) and isinstance(result.run, nnqmc.Run)
    assert result.trained.steps == 6 and result.evaluated.steps == 6
    assert result.diffused is not None and len(result.diffused.rows) == 2
    written = lambda: (out / io.RESULT).read_text()
    assert json.dumps(result.summary(), indent=2) + "\n" == written()
    again = nnqmc.evaluate_run(out)
    assert again.evaluated.energy == result.evaluated.energy
    assert json.dumps(again.summary(), indent=2) + "\n" == written()


def _readme_api_code() -> str:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python block in the README's Python API section"
    return "\n".join(blocks)


def test_readme_api_example_runs(capsys, monkeypatch):
    module = types.ModuleType("readme_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_readme_api_code(), str(README), "exec"), module.__dict__)
    namespace = module.__dict__
    result = namespace["result"]
    assert abs(result.energy - 2.0) < 0.05 and result.energy_err < 0.05
    assert "E = " in capsys.readouterr().out
    assert isinstance(namespace["run"], nnqmc.Run)  # the field example, prepared


# ---------------------------------------------------------------------- accuracy
@pytest.mark.ci_slow
def test_hooke_atom_from_user_orbitals_within_1_mha():
    config = nnqmc.settings(
        "hooke",
        train={"steps": 300, "walkers": 256, "optimizer": "spring"},
        sampler={"burn_in": 100},
        eval={"steps": 200},
    )
    ansatz = nnqmc.ansatz_from_orbitals(gaussian_orbital, 1, 1, kind="jastrow")
    run = nnqmc.custom_run(HookeAtom(), ansatz, config)
    trained = nnqmc.train(run)
    result = nnqmc.evaluate(run, trained.params, trained.walkers, trained.width)
    print(f"Hooke: E = {result.energy:.6f} ± {result.energy_err:.6f} Ha")
    assert abs(result.energy - 2.0) < 1e-3
    assert result.energy_err < 3e-4


@pytest.mark.ci_slow
def test_hydrogen_polarisability_by_finite_field_within_5_percent():
    """alpha = -(E(F) + E(-F) - 2 E(0)) / F^2 from VMC energies by correlated sampling.

    The three wavefunctions are the UHF/aug-cc-pvtz orbitals in the field (exact within the
    basis for one electron). Walkers sample |psi_0|^2; one custom observable returns, per
    walker, E_L^0 and, for +-F, the weight w = |psi_F / psi_0|^2 and w E_L^F, so every
    evaluation step gives the second difference from the same samples.
    """
    f0 = 0.01
    h = nnqmc.Molecule.from_atoms_text("H 0 0 0", "bohr", spin=1)
    runs = {
        f: nnqmc.prepare(
            nnqmc.settings(
                "h_field",
                molecule=h,
                basis="aug-cc-pvtz",
                ansatz={"kind": "hf"},
                hamiltonian={"field": [0.0, 0.0, f]},
                train={"walkers": 1000},
                eval={"steps": 400, "decorrelation": 5},
            )
        )
        for f in (0.0, f0, -f0)
    }
    params = {f: r.ansatz.init(jax.random.PRNGKey(0)) for f, r in runs.items()}
    ref = runs[0.0]

    def correlated(r: jax.Array) -> jax.Array:
        def log_psi(f):
            return lambda x: runs[f].ansatz.log_psi(params[f], x)

        values = [local_energy(log_psi(0.0), ref.hamiltonian, r)]
        for f in (f0, -f0):
            w = jnp.exp(2.0 * (log_psi(f)(r) - log_psi(0.0)(r)))
            values += [w, w * local_energy(log_psi(f), runs[f].hamiltonian, r)]
        return jnp.stack(values)

    walkers = np.asarray(initial_walkers(ref, jax.random.PRNGKey(1), 1000))
    result = nnqmc.evaluate(ref, params[0.0], walkers, 0.5, observables={"rw": correlated})
    e0, w_p, we_p, w_m, we_m = np.asarray(result.records["rw"])[50:].T  # 50 burn-in steps
    second = estimate(we_p / w_p + we_m / w_m - 2.0 * e0)
    alpha, alpha_err = -second.mean / f0**2, second.error / f0**2
    scf = {f: r.scf.energy for f, r in runs.items()}
    alpha_scf = -(scf[f0] + scf[-f0] - 2 * scf[0.0]) / f0**2
    print(f"H: alpha = {alpha:.3f} ± {alpha_err:.3f} a.u. (UHF/aug-cc-pvtz {alpha_scf:.3f})")
    assert abs(alpha - 4.5) < 0.05 * 4.5
    assert alpha_err < 0.1
    # the field-free VMC energy is the SCF one within the error bars (one electron)
    assert abs(result.energy - scf[0.0]) < 4 * result.energy_err + 1e-4
