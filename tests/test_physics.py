"""Physics checklist of DESIGN.md for the foundation: Hamiltonian, kinetic engines, sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc.ansatz import slater_jastrow
from nnqmc.hamiltonian import MolecularHamiltonian, local_energy
from nnqmc.laplacian import kinetic_energy_exact, kinetic_energy_forward
from nnqmc.molecule import Molecule
from nnqmc.sampler import init_walkers, nucleus_step_scale, sample
from nnqmc.scf import run_hf


def perturbed(params, key, scale=0.1):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


@pytest.fixture(scope="module")
def lih():
    mol = Molecule.from_atoms_text("Li 0 0 0\nH 0 0 3.015", "bohr")
    scf = run_hf(mol, "cc-pvdz")
    ansatz = slater_jastrow(scf, mol.charges, mol.coords)
    params = perturbed(ansatz.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    ham = MolecularHamiltonian(mol.charges, mol.coords, mol.n_up, mol.n_down)
    return mol, ansatz, params, ham


def test_hydrogen_exact_orbital_local_energy_is_minus_half():
    ham = MolecularHamiltonian(np.array([1.0]), np.zeros((1, 3)), 1, 0)
    log_psi = lambda r: -jnp.linalg.norm(r[0])
    points = jax.random.normal(jax.random.PRNGKey(0), (20, 1, 3)) * 2.0
    for engine in ("exact", "forward"):
        e = jax.vmap(lambda r, engine=engine: local_energy(log_psi, ham, r, engine))(points)
        np.testing.assert_allclose(e, -0.5, atol=1e-10)


def test_kinetic_engines_agree_with_each_other_and_finite_differences(lih):
    mol, ansatz, params, ham = lih
    r = init_walkers(jax.random.PRNGKey(2), mol.coords, mol.charges, 0, 2, 2, 3)
    f = jax.jit(lambda x: ansatz.log_psi(params, x))
    for walker in r:
        exact = kinetic_energy_exact(f, walker)
        forward = kinetic_energy_forward(f, walker)
        np.testing.assert_allclose(forward, exact, rtol=1e-8)
        # -1/2 (lap psi)/psi by central differences of psi = exp(f) relative to psi(r)
        h, x0, f0 = 1e-4, walker.reshape(-1), f(walker)
        lap = 0.0
        for k in range(x0.size):
            e = jnp.zeros_like(x0).at[k].set(h)
            plus = jnp.exp(f((x0 + e).reshape(walker.shape)) - f0)
            minus = jnp.exp(f((x0 - e).reshape(walker.shape)) - f0)
            lap += (plus + minus - 2.0) / h**2
        np.testing.assert_allclose(-0.5 * lap, exact, rtol=1e-4, atol=1e-4)


def test_same_spin_swap_flips_sign_opposite_spin_swap_keeps_energy(lih):
    mol, ansatz, params, ham = lih
    r = init_walkers(jax.random.PRNGKey(3), mol.coords, mol.charges, 0, 2, 2, 1)[0]
    sign, log = ansatz.apply(params, r)
    swapped = r.at[jnp.array([0, 1])].set(r[jnp.array([1, 0])])
    sign_s, log_s = ansatz.apply(params, swapped)
    assert sign_s == -sign
    np.testing.assert_allclose(log_s, log, rtol=1e-12)
    # exchanging the whole up and down sets (n_up == n_down, RHF): same |psi| and E_L
    spins_swapped = jnp.concatenate([r[2:], r[:2]])
    np.testing.assert_allclose(ansatz.apply(params, spins_swapped)[1], log, rtol=1e-12)
    e = lambda x: local_energy(lambda y: ansatz.log_psi(params, y), ham, x)
    np.testing.assert_allclose(e(spins_swapped), e(r), rtol=1e-10)


def rotation(angles):
    a, b, c = angles
    rz = lambda t: np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = lambda t: np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return rz(a) @ rx(b) @ rz(c)


def test_local_energy_invariant_under_rotation_and_translation(lih):
    mol, ansatz, params, ham = lih
    rot, shift = rotation([0.3, 1.1, -0.7]), np.array([0.5, -1.0, 2.0])
    mol2 = mol.with_coords(mol.coords @ rot.T + shift)
    scf2 = run_hf(mol2, "cc-pvdz")
    ansatz2 = slater_jastrow(scf2, mol2.charges, mol2.coords)
    ham2 = MolecularHamiltonian(mol2.charges, mol2.coords, 2, 2)
    r = init_walkers(jax.random.PRNGKey(4), mol.coords, mol.charges, 0, 2, 2, 4)
    for walker in r:
        e1 = local_energy(lambda x: ansatz.log_psi(params, x), ham, walker)
        moved = walker @ jnp.asarray(rot.T) + shift
        e2 = local_energy(lambda x: ansatz2.log_psi(params, x), ham2, moved)
        np.testing.assert_allclose(e2, e1, rtol=1e-6)


GAUSSIAN_WIDTH = 1.3


def _sample_gaussian(step_scale=None):
    """Samples of every coordinate from |psi|^2 = exp(-|r|^2 / s^2), two electrons, 2000
    walkers, 35 x 20 sweeps after a short burn-in; and the last acceptance."""
    s = GAUSSIAN_WIDTH
    log_psi = jax.vmap(lambda r: -0.5 * jnp.sum(r**2) / s**2)
    walkers = jnp.zeros((2000, 2, 3))
    step = jax.jit(lambda w, k: sample(log_psi, w, log_psi(w), k, 0.7, 20, step_scale))
    samples = []
    for k in range(40):
        walkers, _, acc = step(walkers, jax.random.PRNGKey(k))
        if k >= 5:
            samples.append(np.asarray(walkers))
    return np.concatenate(samples).reshape(-1), acc


def test_sampler_reproduces_gaussian_distribution():
    """|psi|^2 = exp(-|r|^2 / s^2) per electron: each coordinate ~ N(0, s^2 / 2)."""
    s = GAUSSIAN_WIDTH
    x, acc = _sample_gaussian()
    n_eff = x.size / 4  # conservative: correlated steps and coordinates of a walker
    assert abs(x.mean()) < 4 * np.sqrt(s**2 / 2 / n_eff)
    np.testing.assert_allclose(x.var(), s**2 / 2, rtol=0.02)
    assert 0.3 < float(acc) < 0.9


def test_nucleus_scaled_proposal_samples_the_same_distribution():
    """Steps that grow with the distance to a nucleus (off the Gaussian's centre, so the
    scale varies across it) still sample |psi|^2 = exp(-|r|^2 / s^2): the Hastings ratio
    makes the asymmetric proposal exact. Without it the variance comes out wrong."""
    s = GAUSSIAN_WIDTH
    scale = nucleus_step_scale(np.array([[0.5, 0.0, 0.0]]))
    x, _ = _sample_gaussian(scale)
    n_eff = x.size / 4
    assert abs(x.mean()) < 4 * np.sqrt(s**2 / 2 / n_eff)
    np.testing.assert_allclose(x.var(), s**2 / 2, rtol=0.02)
    widths = np.asarray(scale(jnp.asarray([[[0.5, 0.0, 0.0], [3.5, 0.0, 0.0]]])))
    np.testing.assert_allclose(widths, [[0.2, 2.0]])


def test_initial_walkers_follow_atoms_and_spins():
    mol = Molecule.from_atoms_text("O 0 0 0\nH 0 1.43 1.1\nH 0 -1.43 1.1", "bohr")
    w = init_walkers(jax.random.PRNGKey(0), mol.coords, mol.charges, 0, 5, 5, 100)
    assert w.shape == (100, 10, 3)
    centre_of_charge = (mol.charges @ mol.coords) / mol.charges.sum()
    np.testing.assert_allclose(np.mean(w, axis=(0, 1)), centre_of_charge, atol=0.1)
    cation = init_walkers(jax.random.PRNGKey(0), mol.coords, mol.charges, 1, 5, 4, 10)
    assert cation.shape == (10, 9, 3)


def test_high_spin_keeps_each_atoms_spins_even():
    """N2 septet (10 up, 4 down): five up electrons on each N, not six on one."""
    from nnqmc.sampler import assign_spins, electrons_per_atom

    up, down = assign_spins(electrons_per_atom(np.array([7.0, 7.0]), 0), 10, 4)
    assert (up.count(0), up.count(1), down.count(0), down.count(1)) == (5, 5, 2, 2)


def test_local_energy_chunks_match_one_batch(lih):
    """lax.map over chunks (with a remainder) gives the same local energies as one vmap;
    the automatic chunk keeps ~1 MiB of Jacobians per chunk on CPU, all walkers elsewhere."""
    from nnqmc.steps import batch_local_energy, local_energy_chunk

    mol, ansatz, params, ham = lih
    rng = np.random.default_rng(3)
    r = jnp.asarray(rng.normal(scale=1.5, size=(7, mol.n_elec, 3)))
    whole = jax.jit(batch_local_energy(ansatz, ham, "exact", chunk=7))(params, r)
    chunked = jax.jit(batch_local_energy(ansatz, ham, "exact", chunk=3))(params, r)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    assert local_energy_chunk(256, 4, 8, "cpu") == 64
    assert local_energy_chunk(256, 10, 8, "cpu") == 8
    assert local_energy_chunk(256, 4, 4, "cpu") == 128
    assert local_energy_chunk(256, 40, 8, "cpu") == 1
    assert local_energy_chunk(256, 4, 8, "gpu") == 256
    assert local_energy_chunk(16, 2, 8, "cpu") == 16


@pytest.mark.parametrize("engine", ["exact", "folx"])
def test_local_jet_gives_value_gradient_and_local_energy(lih, engine):
    """Each engine's jet is (log|psi|, its backprop gradient, the local energy of
    batch_local_energy): the DMC drift comes from it."""
    from nnqmc.steps import batch_local_energy, batch_local_jet

    mol, ansatz, params, ham = lih
    rng = np.random.default_rng(4)
    r = jnp.asarray(rng.normal(scale=1.5, size=(5, mol.n_elec, 3)))
    value, grad, e_local = jax.jit(batch_local_jet(ansatz, ham, engine))(params, r)
    exact_value, exact_grad = jax.vmap(jax.value_and_grad(lambda x: ansatz.log_psi(params, x)))(r)
    np.testing.assert_allclose(value, exact_value, rtol=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-10, atol=1e-12)
    energies = jax.jit(batch_local_energy(ansatz, ham, "exact"))(params, r)
    np.testing.assert_allclose(e_local, energies, rtol=1e-9)
