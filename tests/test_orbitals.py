import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pyscf import gto  # noqa: E402

from nnqmc import orbitals, scf  # noqa: E402
from nnqmc.ansatz.slater import slater_arrays  # noqa: E402
from nnqmc.molecule import Molecule  # noqa: E402

DIRECTIONS = np.concatenate([np.eye(3), -np.eye(3)])


def _points(centers: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random points, points near the nuclei and the nuclei themselves."""
    rng = np.random.default_rng(seed)
    far = rng.normal(scale=1.5, size=(60, 3)) + centers.mean(axis=0)
    near = np.repeat(centers, 10, axis=0) + rng.normal(scale=1e-2, size=(10 * len(centers), 3))
    tiny = centers + 1e-9 * rng.normal(size=centers.shape)
    return np.concatenate([far, near, tiny, centers])


@pytest.mark.parametrize(
    "atom, basis, max_l",
    [
        ("O 0 0 0; H 0 1.43 1.11; H 0 -1.43 1.11", "cc-pvdz", 2),
        ("N 0 0 -1.03; N 0.1 0 1.04", "cc-pvtz", 3),
        ("Ne 0.1 -0.2 0.3", "cc-pvqz", 4),
    ],
)
def test_aos_match_pyscf(atom, basis, max_l):
    mol = gto.M(atom=atom, basis=basis, unit="Bohr", verbose=0)
    gbasis = scf.gaussian_basis(mol)
    assert max(s.l for s in gbasis.shells) == max_l
    r = _points(mol.atom_coords())
    ref = mol.eval_gto("GTOval_sph", r)
    got = np.asarray(jax.jit(orbitals.ao_function(gbasis))(jnp.asarray(r)))
    assert got.shape == (len(r), mol.nao)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)
    eval_jit = jax.jit(lambda x: orbitals.eval_aos(gbasis, x))
    np.testing.assert_allclose(np.asarray(eval_jit(r[:5])), ref[:5], atol=1e-10)


@pytest.fixture(scope="module")
def hf_systems():
    lih = Molecule(("Li", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 3.015]])
    h2o = Molecule(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 1.43, 1.11], [0.0, -1.43, 1.11]])
    out = []
    for mol in (lih, h2o):
        res = scf.run_hf(mol, "cc-pvdz")
        coeff = res.mo_up[:, : mol.n_up + 2]  # occupied plus two virtuals
        params = orbitals.fit_cusps(res.basis, coeff, mol.charges)
        corrected = jax.jit(orbitals.build_orbitals(res.basis, coeff, mol.charges))
        plain = jax.jit(orbitals.build_orbitals(res.basis, coeff, mol.charges, cusp=False))
        out.append((mol, res, coeff, params, corrected, plain))
    return out


def _jacobian(fn):
    """Jitted ``(m, 3) -> (m, n_mo, 3)`` gradients of every MO."""
    return jax.jit(jax.vmap(jax.jacfwd(lambda x: fn(x[None])[0])))


def _mean_slope(fn, center: np.ndarray, h: float) -> np.ndarray:
    """Radial derivative at distance ``h`` from ``center``, averaged over +-x, +-y, +-z."""
    jac = np.asarray(_jacobian(fn)(jnp.asarray(center + h * DIRECTIONS)))  # (6, n_mo, 3)
    return np.einsum("dkx,dx->k", jac, DIRECTIONS) / len(DIRECTIONS)


def test_cusp_radii_and_selection(hf_systems):
    for mol, _, coeff, params, _, _ in hf_systems:
        z = mol.charges
        dist = np.linalg.norm(mol.coords[:, None] - mol.coords[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        np.testing.assert_allclose(params.rc, np.minimum(0.5 / z, 0.4 * dist.min(1)))
        assert params.mask.shape == (len(z), coeff.shape[1])
        assert params.mask[:, 0].all()  # the lowest MO has s character on every nucleus
    # H2O: 1b2 (index 2) is odd under the reflection through the plane containing O that
    # exchanges the H atoms, so it has no O-s part and stays uncorrected on O.
    h2o_params = hf_systems[1][3]
    assert not h2o_params.mask[0, 2]


def test_cusp_condition(hf_systems):
    h = 1e-4
    for mol, _, _, params, corrected, plain in hf_systems:
        for a, (center, z) in enumerate(zip(mol.coords, mol.charges, strict=True)):
            phi0 = np.asarray(corrected(jnp.asarray(center[None])))[0]
            # the value at the nucleus is re-chosen (alpha0 scan) but stays close: same sign
            # and within a factor of two wherever it is significant
            phi0_plain = np.asarray(plain(jnp.asarray(center[None])))[0]
            big = np.abs(phi0_plain) > 1e-2 * np.abs(phi0_plain).max()
            assert np.all(np.sign(phi0[big]) == np.sign(phi0_plain[big]))
            ratio = phi0[big] / phi0_plain[big]
            assert np.all((ratio > 0.5) & (ratio < 2.0))
            slope = _mean_slope(corrected, center, h)
            slope_plain = _mean_slope(plain, center, h)
            target = -z * phi0
            ok = params.mask[a]
            assert ok.any()
            scale = np.abs(target[ok])
            np.testing.assert_allclose(slope[ok], target[ok], rtol=1e-2, atol=1e-6)
            # the uncorrected Gaussian MOs have (nearly) zero slope: the test is not vacuous
            assert np.all(np.abs(slope_plain[ok] - target[ok]) > 0.5 * scale)


def test_continuity_at_rc(hf_systems):
    rng = np.random.default_rng(1)
    eps = 1e-7
    for mol, _, _, params, corrected, _ in hf_systems:
        for a, center in enumerate(mol.coords):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            rc = params.rc[a]
            inner, outer = center + rc * (1 - eps) * u, center + rc * (1 + eps) * u
            vals = np.asarray(corrected(jnp.asarray(np.stack([inner, outer]))))
            np.testing.assert_allclose(vals[0], vals[1], atol=1e-5 * np.abs(vals).max())
            grads = np.asarray(_jacobian(corrected)(jnp.asarray(np.stack([inner, outer]))))
            np.testing.assert_allclose(grads[0], grads[1], atol=1e-4 * np.abs(grads).max())


def test_outside_rc_is_exact(hf_systems):
    rng = np.random.default_rng(2)
    for mol, _, _, params, corrected, plain in hf_systems:
        r = rng.normal(scale=2.0, size=(400, 3))
        dist = np.linalg.norm(r[:, None] - mol.coords[None], axis=-1)
        outside = np.all(dist > params.rc[None], axis=1)
        assert outside.sum() > 100
        r = jnp.asarray(r[outside])
        np.testing.assert_array_equal(np.asarray(corrected(r)), np.asarray(plain(r)))
        # the correction does change the MOs inside
        inside = jnp.asarray(mol.coords[:1] + 0.3 * params.rc[0] * np.array([[0.6, 0.0, 0.8]]))
        assert np.abs(np.asarray(corrected(inside)) - np.asarray(plain(inside))).max() > 1e-6


def test_hydrogen_local_energy_bounded():
    mol = Molecule(("H",), [[0.0, 0.0, 0.0]], spin=1)
    res = scf.run_hf(mol, "cc-pvtz")
    u = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    radii = np.geomspace(1e-6, 3.0, 80)
    points = jnp.asarray(radii[:, None] * u)

    def local_energies(cusp: bool) -> np.ndarray:
        fn = orbitals.build_orbitals(res.basis, res.mo_up[:, :1], mol.charges, cusp=cusp)

        def phi(x):
            return fn(x[None])[0, 0]

        def e_loc(x):
            lap = jnp.trace(jax.hessian(phi)(x))
            return -0.5 * lap / phi(x) - 1.0 / jnp.linalg.norm(x)

        return np.asarray(jax.jit(jax.vmap(e_loc))(points))

    e_cusp, e_plain = local_energies(True), local_energies(False)
    assert np.all(np.isfinite(e_cusp))
    assert np.abs(e_cusp).max() < 5.0
    assert np.abs(e_plain[0]) > 1e4  # ~ -1/r divergence without the correction
    far = radii > 0.6
    np.testing.assert_array_equal(e_cusp[far], e_plain[far])


def test_transformations_and_derivatives_at_nucleus(hf_systems):
    mol, res, coeff, _, _, _ = hf_systems[1]
    fn = orbitals.build_orbitals(res.basis, coeff, mol.charges)
    rng = np.random.default_rng(3)
    r = jnp.asarray(np.concatenate([mol.coords, rng.normal(size=(5, 3)), [[40.0, 0, 0]]]))
    direct = fn(r)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(r)), np.asarray(direct), atol=1e-13)
    batched = jax.jit(jax.vmap(fn))(r[None].repeat(2, 0))
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(direct), atol=1e-13)

    def single(x):
        return fn(x[None])[0]

    grads = jax.jit(jax.vmap(jax.jacfwd(single)))(r)
    hess = jax.jit(jax.vmap(jax.hessian(single)))(r)
    assert np.all(np.isfinite(np.asarray(grads)))
    assert np.all(np.isfinite(np.asarray(hess)))
    g = jax.jit(jax.grad(lambda x: jnp.sum(fn(x) ** 2)))(r)
    assert np.all(np.isfinite(np.asarray(g)))
    # AO derivatives are also finite exactly on the nuclei (no sqrt in the AO part)
    ao_fn = orbitals.ao_function(res.basis)
    ao_hess = jax.jit(jax.hessian(lambda x: ao_fn(x[None])[0]))(jnp.asarray(mol.coords[0]))
    assert np.all(np.isfinite(np.asarray(ao_hess)))


def test_float32(hf_systems):
    mol, res, coeff, _, corrected, _ = hf_systems[1]
    fn32 = jax.jit(orbitals.build_orbitals(res.basis, coeff, mol.charges, dtype=jnp.float32))
    rng = np.random.default_rng(4)
    r = np.concatenate([mol.coords, mol.coords + 0.01, rng.normal(size=(20, 3))])
    out = fn32(jnp.asarray(r, jnp.float32))
    assert out.dtype == jnp.float32
    ref = np.asarray(corrected(jnp.asarray(r)))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    g = jax.jit(jax.grad(lambda x: jnp.sum(fn32(x))))(jnp.asarray(r, jnp.float32))
    assert g.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(g)))


def test_eval_mos_matches_pyscf():
    mol = gto.M(atom="Li 0 0 0; H 0 0 3.015", basis="cc-pvdz", unit="Bohr", verbose=0)
    coeff = np.random.default_rng(5).normal(size=(mol.nao, 4))
    r = _points(mol.atom_coords())
    ref = mol.eval_gto("GTOval_sph", r) @ coeff
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda x: orbitals.eval_mos(scf.gaussian_basis(mol), coeff, x))(r)),
        ref,
        atol=1e-10,
    )


def test_a_wider_cusp_radius_keeps_kato_and_reaches_farther(hf_systems):
    """``ansatz.cusp_radius``: rc = min(radius / Z, 0.4 d_min); Kato's cusp still holds, and
    the corrected orbital differs from the Gaussian one beyond the default radius."""
    for mol, res, coeff, _, _, plain in hf_systems[1:]:  # H2O
        rc = orbitals.cusp_radii(mol.coords, mol.charges, 1.0)
        dist = np.linalg.norm(mol.coords[:, None] - mol.coords[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        np.testing.assert_allclose(rc, np.minimum(1.0 / mol.charges, 0.4 * dist.min(1)))
        arrays = slater_arrays(res, mol.charges, cusp_radius=1.0)
        np.testing.assert_array_equal(arrays["up"]["rc"], rc)
        wide = jax.jit(orbitals.build_orbitals(res.basis, coeff, mol.charges, rc=rc))
        fit = orbitals.fit_cusps(res.basis, coeff, mol.charges, rc=rc)
        center, z = mol.coords[0], mol.charges[0]
        phi0 = np.asarray(wide(jnp.asarray(center[None])))[0]
        ok = fit.mask[0]
        slope = _mean_slope(wide, center, 1e-4)
        np.testing.assert_allclose(slope[ok], -z * phi0[ok], rtol=1e-2, atol=1e-6)
        between = jnp.asarray(center[None] + 0.75 * rc[0] * np.array([[0.6, 0.0, 0.8]]))
        assert rc[0] * 0.75 > 0.5 / z
        assert np.abs(np.asarray(wide(between)) - np.asarray(plain(between))).max() > 1e-6
