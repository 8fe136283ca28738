"""The generalized ansatz: exactly HF/CASSCF untrained, antisymmetric, cusp-preserving
envelopes, symmetry of its features, and its forward Laplacian against the exact one."""

import dataclasses

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_paulinet import _perturb, _walkers  # noqa: E402

from nnqmc import api  # noqa: E402
from nnqmc.ansatz import slater_jastrow  # noqa: E402
from nnqmc.ansatz.embedding import electron_nuclear_inputs, make_embedding  # noqa: E402
from nnqmc.ansatz.generalized import (  # noqa: E402
    copy_rotations,
    envelope,
    generalized_from_options,
    generalized_from_slater,
)
from nnqmc.ansatz.jastrow import electron_cusp  # noqa: E402
from nnqmc.ansatz.slater import slater_part  # noqa: E402
from nnqmc.config import config_from_dict  # noqa: E402
from nnqmc.laplacian import kinetic_energy_exact  # noqa: E402
from nnqmc.molecule import Molecule  # noqa: E402
from nnqmc.scf import run_hf  # noqa: E402

SMALL = dict(embedding_dim=16, layers=2, n_rbf=8, jastrow_layers=2, backflow_layers=2)
VARIANTS = {
    "full": dict(full_determinant=True),
    "blocks": dict(full_determinant=False),
    "full-copies": dict(full_determinant=True, copies=3),
    "plain": dict(full_determinant=False, envelopes=False, en_vectors=False),
    "core": dict(full_determinant=False, core_inputs=True),
    "short-cusp": dict(full_determinant=False, ee_cusp_range=0.3),
}


def _build(mol, scf, ee_cusp=True, **kwargs):
    slater = slater_part(scf, mol.charges)
    options = SMALL | kwargs
    return generalized_from_slater(slater, mol.coords, mol.charges, ee_cusp=ee_cusp, **options)


def _two_determinants(scf):
    return dataclasses.replace(
        scf, occ_up=np.array([[0, 1], [0, 2]]), occ_down=np.array([[0, 1], [0, 2]]),
        ci=np.array([0.95, -0.3]),
    )  # fmt: skip


@pytest.mark.parametrize(
    "system, variant",
    [
        ("lih", "full-copies"),
        ("lih", "blocks"),
        ("lih", "plain"),
        ("be_triplet", "full"),
        ("lih", "core"),
        ("lih", "short-cusp"),
        ("lih_two_dets", "full-copies"),
    ],
)
def test_untrained_is_the_reference_wavefunction(system, variant, request):
    """exp(gamma) times the HF (or two-determinant) wavefunction, whatever the key."""
    if system == "lih_two_dets":
        mol, scf = request.getfixturevalue("lih")
        scf = _two_determinants(scf)
    else:
        mol, scf = request.getfixturevalue(system)
    ref = slater_jastrow(scf, mol.charges, mol.coords, jastrow=False)
    ansatz = _build(mol, scf, **VARIANTS[variant])
    params = ansatz.init(jax.random.PRNGKey(3))

    @jax.jit
    @jax.vmap
    def both(r):
        length = VARIANTS[variant].get("ee_cusp_range", 1.0)
        gamma = electron_cusp(r, mol.n_up, mol.n_down, length)
        s_ref, l_ref = ref.apply(ref.init(jax.random.PRNGKey(0)), r)
        s, l = ansatz.apply(params, r)
        return s_ref, l_ref + gamma, s, l

    s_ref, l_ref, s, l = both(_walkers(mol, 5))
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_allclose(l, l_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "system, variant", [("lih", "full-copies"), ("be_triplet", "full"), ("be_triplet", "blocks")]
)
def test_antisymmetry(system, variant, request):
    mol, scf = request.getfixturevalue(system)
    ansatz = _build(mol, scf, **VARIANTS[variant])
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 3)
    apply = jax.jit(jax.vmap(ansatz.apply, (None, 0)))
    s0, l0 = apply(params, r)
    swaps = [(0, 1)]
    if mol.n_down >= 2:
        swaps.append((mol.n_up, mol.n_up + 1))
    for i, j in swaps:
        perm = np.arange(mol.n_elec)
        perm[[i, j]] = perm[[j, i]]
        s1, l1 = apply(params, r[:, perm])
        np.testing.assert_array_equal(s1, -s0)
        np.testing.assert_allclose(l1, l0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "system, variant",
    [
        # the two slowest in the CI's slow set, keeping the default suite under 20 minutes
        pytest.param("lih", "full-copies", marks=pytest.mark.ci_slow),
        ("lih", "blocks"),
        ("be_triplet", "full"),
        pytest.param("lih", "core", marks=pytest.mark.ci_slow),
        ("h_atom", "full"),
        pytest.param("lih_two_dets", "full", marks=pytest.mark.ci_slow),
    ],
)
def test_forward_laplacian_matches_exact(system, variant, request):
    """The hand-written embedding jet (with the r - R inputs) and folx for the orbitals,
    envelopes and full determinants give the exact jvp-of-grad kinetic energy."""
    if system == "lih_two_dets":
        mol, scf = request.getfixturevalue("lih")
        scf = _two_determinants(scf)
    else:
        mol, scf = request.getfixturevalue(system)
    ansatz = _build(mol, scf, **VARIANTS[variant])
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 3, seed=5)

    @jax.jit
    def both(p, r):
        exact = jax.vmap(lambda x: kinetic_energy_exact(lambda y: ansatz.log_psi(p, y), x))(r)
        value_grad = jax.vmap(jax.value_and_grad(lambda x: ansatz.log_psi(p, x)))(r)
        return jax.vmap(lambda x: ansatz.kinetic_jet(p, x))(r), exact, value_grad

    (value, grad, forward), exact, (exact_value, exact_grad) = both(params, r)
    assert np.all(np.isfinite(np.asarray(forward)))
    np.testing.assert_allclose(forward, exact, rtol=1e-6)
    # the jet's value and gradient (the DMC drift) are those of log|psi| and backprop
    np.testing.assert_allclose(value, exact_value, rtol=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-6, atol=1e-12)


def test_envelope_has_the_nuclear_cusp_and_learned_decay():
    z, zeta = 5.0, 0.8
    log_env = lambda d: jnp.log(envelope(d, z, zeta))
    slope0 = jax.grad(log_env)(0.0)
    np.testing.assert_allclose(slope0, -z, rtol=1e-12)
    far = jax.grad(log_env)(40.0)
    np.testing.assert_allclose(far, -zeta, rtol=1e-3)
    assert float(envelope(0.0, z, zeta)) == 1.0


def test_kato_cusp_of_a_trained_orbital_correction(be_triplet):
    """With envelopes switched on and all parameters perturbed, the spherical average of
    d log|psi| / d r at an electron on the nucleus is still -Z (to the cusp correction's
    accuracy): the local energy stays finite there."""
    mol, scf = be_triplet
    ansatz = _build(mol, scf, full_determinant=True)
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)), scale=0.3)
    r0 = _walkers(mol, 1, seed=7)[0]
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs = np.concatenate([dirs, -dirs])  # antipodal pairs: the smooth part's slope cancels
    h = 1e-4

    def log_at(x):
        return ansatz.log_psi(params, r0.at[0].set(x))

    values = jax.jit(jax.vmap(log_at))(jnp.asarray(h * dirs))
    centre = log_at(jnp.zeros(3))
    slope = float(np.mean((np.asarray(values) - float(centre)) / h))
    np.testing.assert_allclose(slope, -4.0, atol=0.05)


@pytest.mark.parametrize("length", [1.0, 0.3])
def test_electron_cusp_has_kato_slopes_at_any_range(length):
    """d gamma / d r_ij = 1/2 (opposite spins) and 1/4 (same spins) at r_ij = 0, whatever
    the range; beyond it gamma is flat (its slope falls as (L / r)^2)."""

    def slope(d, n_up, n_down):
        def gamma(x):
            r = jnp.array([[0.0, 0.0, 0.0], [x, 0.0, 0.0]])
            return electron_cusp(r, n_up, n_down, length)

        return float(jax.grad(gamma)(d))

    assert slope(1e-9, 1, 1) == pytest.approx(0.5, abs=1e-8)
    assert slope(1e-9, 2, 0) == pytest.approx(0.25, abs=1e-8)
    assert slope(10 * length, 1, 1) == pytest.approx(0.5 / 121, rel=1e-10)


@pytest.mark.parametrize("kind", ["jastrow", "paulinet", "generalized"])
def test_every_kind_takes_the_cusp_range_from_its_config(kind):
    """``ansatz.ee_cusp_range`` reaches the untrained ansatz of every kind built from a
    config, and of the Python API's ``ansatz_from_orbitals``: log psi changes by exactly
    gamma(L) - gamma(1)."""
    from nnqmc.ansatz.custom import ansatz_from_orbitals
    from nnqmc.config import AnsatzConfig

    system = {"atoms": "H 0 0 0\nH 0 0 1.4", "unit": "bohr", "basis": "sto-3g"}
    small = {"embedding_dim": 8, "layers": 1, "n_rbf": 4}

    def built(length):
        ansatz = {"kind": kind, "ee_cusp_range": length} | small
        run = api.prepare(config_from_dict({"name": "h2", "system": system, "ansatz": ansatz}))
        return run.ansatz

    r = jnp.array([[0.1, 0.2, -0.3], [0.0, -0.1, 1.2]])
    expected = float(electron_cusp(r, 1, 1, 0.3) - electron_cusp(r, 1, 1, 1.0))
    short, default = built(0.3), built(1.0)
    key = jax.random.PRNGKey(0)
    got = short.log_psi(short.init(key), r) - default.log_psi(default.init(key), r)
    assert abs(expected) > 0.05
    assert float(got) == pytest.approx(expected, abs=1e-10)

    def orbital(x):
        return jnp.exp(-jnp.linalg.norm(x, axis=-1, keepdims=True))

    custom = {
        length: ansatz_from_orbitals(orbital, 1, 1, kind=kind,
                                     coords=np.zeros((1, 3)), charges=np.ones(1),
                                     options=AnsatzConfig(kind=kind, ee_cusp_range=length, **small))
        for length in (0.3, 1.0)
    }  # fmt: skip
    p_short, p_long = (custom[x].init(key) for x in (0.3, 1.0))
    got = custom[0.3].log_psi(p_short, r) - custom[1.0].log_psi(p_long, r)
    assert float(got) == pytest.approx(expected, abs=1e-10)


def test_copy_rotations_are_proper_rotations():
    rots = copy_rotations(4, 3)
    np.testing.assert_allclose(rots[0], np.eye(4))
    for q in rots:
        np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(q), 1.0, rtol=1e-12)
    assert np.abs(rots[1] - rots[2]).max() > 0.1
    assert copy_rotations(0, 2).shape == (2, 0, 0)


def test_copies_learn_different_things(lih):
    """At the start all copies are the same determinant, but their rotated orbitals give
    their heads gradients in different directions: the copies do not stay identical."""
    mol, scf = lih
    ansatz = _build(mol, scf, copies=2)
    params = ansatz.init(jax.random.PRNGKey(0))
    r = _walkers(mol, 16)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(jax.vmap(ansatz.log_psi, (None, 0))(p, r) ** 2)))(
        params
    )
    w = np.asarray(grad["orbitals"]["up"][-1]["w"])  # (dim, n_det * cols * per_col)
    per_det = w.reshape(w.shape[0], 2, -1)
    a, b = per_det[:, 0].ravel(), per_det[:, 1].ravel()
    assert np.linalg.norm(a) > 0 and np.linalg.norm(b) > 0
    cosine = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine < 0.99
    assert np.abs(np.asarray(grad["jastrow"][-1]["w"])).max() > 0


def test_embedding_with_en_vectors_translation_invariant_and_equivariant():
    """With r_i - R_I inputs the embedding is invariant under joint translations and
    equivariant under same-spin permutations; under rotations it is not (the molecule's
    frame enters), and without the vectors it is."""
    n_up, n_down = 3, 2
    coords = jnp.asarray([[0.0, 0.0, 0.0], [0.3, -0.5, 2.8]])
    rng = np.random.default_rng(3)
    r = jnp.asarray(rng.normal(scale=1.5, size=(n_up + n_down, 3)))
    shift = rng.normal(size=3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    for en_vectors in (True, False):
        init, apply = make_embedding(
            n_up, n_down, 2, dim=8, layers=2, n_rbf=4, en_vectors=en_vectors
        )
        params = init(jax.random.PRNGKey(0))
        x0 = apply(params, r, coords)
        np.testing.assert_allclose(apply(params, r + shift, coords + shift), x0, rtol=1e-10)
        perm = np.array([2, 0, 1, 4, 3])
        np.testing.assert_allclose(apply(params, r[perm], coords), x0[perm], rtol=1e-10)
        rotated = apply(params, r @ rot.T, coords @ rot.T)
        if en_vectors:
            assert np.abs(np.asarray(rotated - x0)).max() > 1e-3
        else:
            np.testing.assert_allclose(rotated, x0, rtol=1e-9, atol=1e-12)


def test_core_inputs_resolve_each_nucleus_at_its_own_scale():
    """The core-scaled inputs of a nucleus with k = Z at distance d are the unscaled ones at
    Z d: they change across the 1s core (~1/Z), where the unscaled ones are flat."""
    coords = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    scales = np.array([8.0, 1.0])
    direction = jnp.asarray([0.6, 0.0, 0.8])
    for d in (0.01, 0.1, 0.5, 2.0):
        scaled = electron_nuclear_inputs(d * direction, coords, scales).reshape(2, 8)
        plain_at_zd = electron_nuclear_inputs(8.0 * d * direction, coords[:1]).reshape(4)
        np.testing.assert_allclose(scaled[0, 4:], plain_at_zd, rtol=1e-12)
        np.testing.assert_allclose(scaled[:, :4].reshape(-1), electron_nuclear_inputs(
            d * direction, coords).reshape(-1), rtol=1e-12)  # fmt: skip
        np.testing.assert_allclose(scaled[1, 4:], scaled[1, :4], rtol=1e-12)  # k = 1
    # the [ansatz] switch reaches the network: eight inputs per nucleus instead of four
    for core, width in ((False, 4), (True, 8)):
        options = config_from_dict(
            {
                "name": "core",
                "ansatz": {"kind": "generalized", "core_inputs": core, "embedding_dim": 8},
            },
            require_system=False,
        ).ansatz
        mol = Molecule(("Li", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 3.015]])
        slater = slater_part(run_hf(mol, "sto-3g"), mol.charges)
        ansatz = generalized_from_options(slater, mol.coords, mol.charges, options)
        assert ansatz.init(jax.random.PRNGKey(0))["embedding"]["input"].shape == (2 * width, 8)
    # across the oxygen core the scaled log-distance changes by O(1), the unscaled by 1 %
    inner, outer = (
        electron_nuclear_inputs(d * direction, coords[:1], scales[:1]) for d in (0.02, 0.1)
    )
    assert abs(float(outer[7] - inner[7])) > 0.4 and abs(float(outer[3] - inner[3])) < 0.011


@pytest.mark.ci_slow  # 40 s on the 2-core CPU: the default suite stays under 20 minutes
def test_untrained_generalized_gives_hf_energy():
    """A VMC evaluation of the untrained ansatz (without gamma) is the HF energy."""
    config = config_from_dict(
        {
            "name": "lih",
            "system": {"atoms": "Li 0 0 0\nH 0 0 3.015", "unit": "bohr", "basis": "cc-pvdz"},
            "ansatz": {"kind": "generalized", "ee_cusp": False, "copies": 2} | SMALL,
            "sampler": {"burn_in": 200},
            "train": {"walkers": 512, "steps": 1},
            "eval": {"steps": 80},
        }
    )
    run = api.prepare(config)
    trained = api.train(run)
    params = run.ansatz.init(jax.random.PRNGKey(7))
    result = api.evaluate(run, params, trained.walkers, trained.width)
    assert abs(result.energy - run.scf.energy) < 3 * result.energy_err, (
        result.energy,
        result.energy_err,
        run.scf.energy,
    )


def test_full_determinant_cross_blocks_get_no_gradient_at_the_start(lih):
    """At the block-diagonal start the entries across the spin blocks have zero gradient
    (the inverse of a block-diagonal matrix is block-diagonal): why full determinants are
    off by default."""
    mol, scf = lih
    ansatz = _build(mol, scf, full_determinant=True)
    params = ansatz.init(jax.random.PRNGKey(0))
    r = _walkers(mol, 8)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(jax.vmap(ansatz.log_psi, (None, 0))(p, r))))(params)
    n, per_col = mol.n_elec, 1 + len(mol.coords)
    w = np.asarray(grad["orbitals"]["up"][-1]["w"]).reshape(-1, 1, n, per_col)
    own, cross = w[:, :, : mol.n_up], w[:, :, mol.n_up :]
    assert np.abs(own).max() > 1e-3
    np.testing.assert_array_equal(cross, 0.0)


def test_determinants_need_no_lapack_and_match_it():
    """The determinants' slogdet is plain XLA (no LAPACK custom call, which can hang a
    2-core CPU when two large batches of it run at once) and agrees with jnp.linalg in
    value, gradient and Hessian; a singular matrix gives sign 0 and log -inf."""
    from nnqmc.ansatz.determinants import slogdet

    a = jax.random.normal(jax.random.PRNGKey(3), (4, 2, 5, 5), jnp.float64)
    text = jax.jit(slogdet).lower(a).as_text()
    assert "lapack" not in text.lower() and "custom_call" not in text
    for got, want in zip(slogdet(a), jnp.linalg.slogdet(a), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)
    weights = jnp.arange(8.0).reshape(4, 2)
    grad = jax.grad(lambda x: jnp.sum(weights * slogdet(x)[1]))(a)
    want = jax.grad(lambda x: jnp.sum(weights * jnp.linalg.slogdet(x)[1]))(a)
    np.testing.assert_allclose(grad, want, atol=1e-10)
    hess = jax.hessian(lambda x: slogdet(x)[1])(a[0, 0])
    np.testing.assert_allclose(
        hess, jax.hessian(lambda x: jnp.linalg.slogdet(x)[1])(a[0, 0]), atol=1e-10
    )
    sign, log = slogdet(jnp.array([[1.0, 2.0], [2.0, 4.0]]))
    assert sign == 0 and log == -jnp.inf
