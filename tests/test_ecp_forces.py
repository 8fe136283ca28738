"""Forces with effective core potentials (issue 29, item 4): the ECP atoms' Hellmann–Feynman
force (local and nonlocal channels) is the derivative of the ECP energy, it obeys the
translation sum rule, and the VMC force of an HF determinant is PySCF's RHF gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc.ecp import ecp_arrays, nonlocal_elements, quadrature
from nnqmc.hamiltonian import MolecularHamiltonian, nonlocal_energy
from nnqmc.molecule import Molecule
from nnqmc.pes.forces import (
    FORCE_TERMS,
    ecp_force,
    ecp_potential,
    forces_from_records,
    nuclear_force_observables,
    nuclear_forces,
)
from nnqmc.pseudopotentials import atom_potentials, resolve_ecp

jax.config.update("jax_enable_x64", True)

WATER = "O 0 0 0\nH 0 1.4311 1.1077\nH 0 -1.4311 1.1077"
WATER_BASIS = {"O": "ccecp-cc-pvdz", "H": "cc-pvdz"}


def _hf_psi(atoms: str, ecp, basis):
    """The HF determinant (signed log psi, nuclei fixed) of a closed-shell molecule."""
    from nnqmc.ansatz.determinants import log_sum_determinants
    from nnqmc.ansatz.slater import slater_part
    from nnqmc.scf import run_hf

    plain = Molecule.from_atoms_text(atoms, "bohr", 0, 0)
    found = resolve_ecp(ecp, plain.symbols)
    core = tuple(found[s].core if s in found else 0 for s in plain.symbols)
    names = tuple((s, found[s].name) for s in sorted(found))
    molecule = Molecule(plain.symbols, plain.coords, 0, 0, names, core)
    part = slater_part(run_hf(molecule, basis), molecule.cusp_charges, cusp=True)

    def signed(r):
        up, down = part.matrices(r)
        return log_sum_determinants(up, down, jnp.asarray(part.ci))

    return signed, molecule


def _walkers(molecule: Molecule, n: int, seed: int) -> jax.Array:
    """``n`` walkers of H2O's 8 electrons around the nuclei (6 near O)."""
    around = molecule.coords[[0, 0, 0, 1, 0, 0, 0, 2]]
    noise = jax.random.normal(jax.random.PRNGKey(seed), (n, 8, 3))
    return jnp.asarray(around) + 0.6 * noise


def test_the_ecp_force_is_the_derivative_of_the_ecp_energy():
    """Per walker, psi and the quadrature's rotation fixed: the force on O (local and
    nonlocal channels, by jax.grad) equals a 5-point finite difference of the Hamiltonian's
    own potential plus (V_nl psi)/psi in R_O, minus the nuclear repulsion's force."""
    signed, molecule = _hf_psi(WATER, {"O": "ccecp"}, WATER_BASIS)
    arrays = ecp_arrays(atom_potentials(molecule))
    charges, coords = molecule.charges, molecule.coords
    nodes, weights = quadrature(12)
    z = jnp.asarray(charges)

    def energy(c, r, key):
        h = MolecularHamiltonian(charges, c, 4, 4, ecp=arrays)
        return h.potential(r) + nonlocal_energy(h, signed, r, key)

    step = 1e-3
    for k, r in enumerate(_walkers(molecule, 3, 0)):
        key = jax.random.PRNGKey(10 + k)
        force = ecp_force(signed, arrays, nodes, weights, z, coords, r, key)
        assert np.all(np.asarray(force[1:]) == 0.0)  # all-electron atoms: not here
        total = np.asarray(force[0]) + nuclear_forces(charges, coords)[0]
        for axis in range(3):

            def shifted(s, axis=axis, r=r, key=key):
                c = coords.copy()
                c[0, axis] += s * step
                return float(energy(c, r, key))

            fd = -(8 * (shifted(1) - shifted(-1)) - (shifted(2) - shifted(-2))) / (12 * step)
            assert fd == pytest.approx(total[axis], rel=1e-6, abs=1e-8), (k, axis, fd, total)
        # the nonlocal channel's share is no rounding error
        local = -jax.grad(ecp_potential, argnums=2)(arrays, z, jnp.asarray(coords), r)[0]
        assert np.max(np.abs(np.asarray(force[0]) - np.asarray(local))) > 1e-3


def test_the_ecp_force_obeys_the_translation_sum_rule_per_walker():
    """With a translation-invariant psi, moving nuclei and electrons together leaves the
    ECP energy (Coulomb, local and the quadrature's nonlocal term) unchanged, walker by
    walker: sum_I dV/dR_I = -sum_i dV/dr_i to rounding."""
    _, molecule = _hf_psi(WATER, {"O": "ccecp"}, WATER_BASIS)
    arrays = ecp_arrays(atom_potentials(molecule))
    charges = jnp.asarray(molecule.charges)
    coords = jnp.asarray(molecule.coords)
    nodes, weights = quadrature(12)

    def signed(r):  # depends on differences only; changes sign
        d = r[:, None, :] - r[None, :, :]
        prefactor = (r[0, 0] - r[1, 0]) + 0.3 * (r[0, 1] - r[2, 1]) + 0.1
        return jnp.sign(prefactor), jnp.log(jnp.abs(prefactor)) - 0.05 * jnp.sum(d * d)

    def energy(c, r, key):
        elements, _ = nonlocal_elements(signed, arrays, c, r, key, nodes, weights)
        return ecp_potential(arrays, charges, c, r) + jnp.sum(elements)

    for k, r in enumerate(_walkers(molecule, 4, 1)):
        key = jax.random.PRNGKey(k)
        force = ecp_force(signed, arrays, nodes, weights, charges, coords, r, key)
        grad_r = jax.grad(energy, argnums=1)(coords, r, key)
        scale = float(jnp.max(jnp.abs(grad_r)))
        assert scale > 0.1
        np.testing.assert_allclose(
            np.sum(force, axis=0), np.sum(grad_r, axis=0), atol=1e-11 * scale
        )


LIH = """name = "lih_ecp"
precision = "float64"
[system]
atoms = "Li 0 0 0\\nH 0 0 2.6"
unit = "bohr"
ecp = {Li = "ccecp"}
basis = {Li = "ccecp-cc-pvdz", H = "cc-pvdz"}
[ansatz]
kind = "hf"
cusp_correction = false
[train]
steps = 1
walkers = 512
optimizer = "adam"
[sampler]
burn_in = 100
[eval]
steps = 80
dipole = false
"""


def test_vmc_forces_of_the_lih_hf_determinant_with_an_ecp_are_pyscfs_gradient(tmp_path):
    """LiH at 2.6 bohr, ccECP on Li, HF determinant: the zero-bias VMC force (ECP
    Hellmann–Feynman on Li, ZV on H, the Pulay term) against PySCF's RHF gradient with the
    same ECP and basis (0.052 Ha/bohr; the nonlocal channel alone gives -0.15 on Li), within
    4 sigma; the forces sum to zero within their errors."""
    from pyscf import gto, scf

    from nnqmc.api import evaluate, prepare, train
    from nnqmc.config import load_config

    (tmp_path / "lih.toml").write_text(LIH)
    run = prepare(load_config(tmp_path / "lih.toml"))
    start = train(run)
    ev = evaluate(
        run, start.params, start.walkers, start.width, observables=nuclear_force_observables
    )
    charges, coords = run.molecule.charges, run.molecule.coords
    force, error = forces_from_records(ev.records, charges, coords)

    m = gto.M(
        atom="Li 0 0 0; H 0 0 2.6",
        unit="Bohr",
        basis={"Li": "ccecp-cc-pvdz", "H": "cc-pvdz"},
        ecp={"Li": "ccecp"},
        verbose=0,
    )
    exact = -scf.RHF(m).run().nuc_grad_method().kernel()
    print(f"VMC force on Li: {force[0]} +- {error[0]}; PySCF: {exact[0]}")
    print(f"VMC force on H : {force[1]} +- {error[1]}; PySCF: {exact[1]}")
    assert np.all(np.abs(force - exact) < 4 * error + 1e-6), (force, error, exact)
    assert error[:, 2].max() < 0.01

    summed = np.asarray(ev.records[FORCE_TERMS]).sum(axis=2, keepdims=True)
    total, total_err = forces_from_records(
        {**ev.records, FORCE_TERMS: summed}, np.zeros(1), np.zeros((1, 3))
    )
    print(f"sum over the nuclei: {total[0]} +- {total_err[0]}")
    assert np.all(np.abs(total) < 4 * total_err), (total, total_err)
