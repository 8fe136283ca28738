import dataclasses
import logging

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nnqmc.ansatz import slater_jastrow  # noqa: E402
from nnqmc.ansatz.jastrow import electron_cusp  # noqa: E402
from nnqmc.ansatz.paulinet import make_network, paulinet  # noqa: E402
from nnqmc.laplacian import (  # noqa: E402
    SPARSITY,
    kinetic_energy_exact,
    kinetic_energy_forward,
    sparsity_threshold,
)

# a small network keeps compilation (and the tests) fast; the architecture is the same
SMALL = dict(embedding_dim=16, layers=2, n_rbf=8, jastrow_layers=2, backflow_layers=2)


def _walkers(mol, n, seed=0):
    rng = np.random.default_rng(seed)
    centre = np.repeat(mol.coords, -(-mol.n_elec // len(mol.coords)), axis=0)[: mol.n_elec]
    return jnp.asarray(centre + rng.normal(scale=1.0, size=(n, mol.n_elec, 3)))


def _perturb(params, scale=0.1, seed=1):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)


@pytest.mark.parametrize("system", ["lih", "be_triplet"])
def test_init_is_hartree_fock(system, request):
    mol, scf = request.getfixturevalue(system)
    size = {} if system == "lih" else SMALL  # LiH with the default architecture
    hf = slater_jastrow(scf, mol.charges, mol.coords, jastrow=False)
    bare = paulinet(scf, mol.charges, mol.coords, ee_cusp=False, **size)
    with_cusp = paulinet(scf, mol.charges, mol.coords, ee_cusp=True, **size)
    params = bare.init(jax.random.PRNGKey(0))

    @jax.jit
    @jax.vmap
    def evaluate(r):
        gamma = electron_cusp(r, mol.n_up, mol.n_down)
        return hf.apply({}, r), bare.apply(params, r), with_cusp.apply(params, r), gamma

    (s_hf, l_hf), (s, l), (s_c, l_c), gamma = evaluate(_walkers(mol, 5))
    np.testing.assert_array_equal(s, s_hf)
    np.testing.assert_allclose(l, l_hf, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(s_c, s_hf)
    np.testing.assert_allclose(l_c, l_hf + gamma, rtol=0, atol=1e-10)


def test_multideterminant_ci_is_trainable(lih):
    mol, scf = lih
    two = dataclasses.replace(
        scf, occ_up=np.array([[0, 1], [0, 2]]), occ_down=np.array([[0, 1], [0, 2]]),
        ci=np.array([0.95, -0.3]),
    )  # fmt: skip
    ansatz = paulinet(two, mol.charges, mol.coords, ee_cusp=False, **SMALL)
    ref = slater_jastrow(two, mol.charges, mol.coords, jastrow=False)
    params = ansatz.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(params["ci"], [0.95, -0.3])
    r = _walkers(mol, 1)[0]
    ref_params = ref.init(jax.random.PRNGKey(0))
    value_and_grad = jax.value_and_grad(lambda p: ansatz.apply(p, r)[::-1], has_aux=True)
    ((l, s), grad), (s_ref, l_ref) = jax.jit(
        lambda p: (value_and_grad(p), ref.apply(ref_params, r))
    )(params)
    assert s == s_ref
    np.testing.assert_allclose(l, l_ref, atol=1e-10)
    assert np.all(np.abs(np.asarray(grad["ci"])) > 0)


@pytest.mark.parametrize("system", ["lih", "be_triplet"])
def test_antisymmetry(system, request):
    mol, scf = request.getfixturevalue(system)
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 3)
    apply = jax.jit(jax.vmap(ansatz.apply, (None, 0)))
    s0, l0 = apply(params, r)
    swaps = [(0, 1)]  # two up electrons
    if mol.n_down >= 2:
        swaps.append((mol.n_up, mol.n_up + 1))
    for i, j in swaps:
        perm = np.arange(mol.n_elec)
        perm[[i, j]] = perm[[j, i]]
        s1, l1 = apply(params, r[:, perm])
        np.testing.assert_array_equal(s1, -s0)
        np.testing.assert_allclose(l1, l0, rtol=1e-12, atol=1e-12)


def test_network_invariance_and_equivariance(be_triplet):
    mol, _ = be_triplet
    coords = jnp.asarray([[0.0, 0.0, 0.0], [0.3, -0.5, 2.8]])  # two nuclei: not trivially symmetric
    n_up, n_down = 3, 2
    net = make_network(n_up, n_down, len(coords), 2, **SMALL)
    init, apply = net.init, net.apply
    params = _perturb(init(jax.random.PRNGKey(0)), scale=0.3)
    rng = np.random.default_rng(3)
    r = jnp.asarray(rng.normal(scale=1.5, size=(n_up + n_down, 3)))
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    shift = rng.normal(size=3)
    j0, fu0, fd0 = apply(params, r, coords)
    assert np.abs(np.asarray(fu0) - 1).max() > 1e-3 and abs(float(j0)) > 1e-3  # non-trivial
    j1, fu1, fd1 = apply(params, r @ rot.T + shift, coords @ rot.T + shift)
    np.testing.assert_allclose(j1, j0, rtol=1e-10)
    np.testing.assert_allclose(fu1, fu0, rtol=1e-10)
    np.testing.assert_allclose(fd1, fd0, rtol=1e-10)
    # permuting same-spin electrons permutes the rows of f and leaves J unchanged
    perm = np.array([2, 0, 1, 4, 3])
    j2, fu2, fd2 = apply(params, r[perm], coords)
    np.testing.assert_allclose(j2, j0, rtol=1e-10)
    np.testing.assert_allclose(fu2, fu0[:, perm[:n_up]], rtol=1e-10)
    np.testing.assert_allclose(fd2, fd0[:, perm[n_up:] - n_up], rtol=1e-10)


def _fd_kinetic(log_psi, r, h=1e-4):
    x0 = np.asarray(r, dtype=np.float64).reshape(-1)
    f = jax.jit(lambda x: log_psi(x.reshape(r.shape)))
    f0 = float(f(x0))
    lap, grad2 = 0.0, 0.0
    for k in range(x0.size):
        e = np.zeros_like(x0)
        e[k] = h
        fp, fm = float(f(x0 + e)), float(f(x0 - e))
        lap += (fp - 2 * f0 + fm) / h**2
        grad2 += ((fp - fm) / (2 * h)) ** 2
    return -0.5 * (lap + grad2)


def test_forward_laplacian_matches_exact(lih):
    mol, scf = lih
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 4, seed=2)

    def kinetic(engine):
        return jax.jit(jax.vmap(lambda p, x: engine(lambda y: ansatz.log_psi(p, y), x), (None, 0)))

    t_fwd = np.asarray(kinetic(kinetic_energy_forward)(params, r))
    t_exact = np.asarray(kinetic(kinetic_energy_exact)(params, r))
    assert np.all(np.isfinite(t_fwd))
    np.testing.assert_allclose(t_fwd, t_exact, rtol=1e-5)
    t_fd = _fd_kinetic(lambda y: ansatz.log_psi(params, y), r[0])
    np.testing.assert_allclose(t_fd, t_fwd[0], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("system", ["be_triplet", "h_atom", "lih_two_dets"])
def test_structured_kinetic_energy_matches_exact(system, request):
    """The ansatz's own forward Laplacian (hand-written embedding jet + folx for the rest)
    against the exact jvp-of-grad Laplacian, on closed and open shells, one electron
    (no pairs at all) and a two-determinant expansion."""
    if system == "lih_two_dets":
        mol, scf = request.getfixturevalue("lih")
        scf = dataclasses.replace(
            scf, occ_up=np.array([[0, 1], [0, 2]]), occ_down=np.array([[0, 1], [0, 2]]),
            ci=np.array([0.95, -0.3]),
        )  # fmt: skip
    else:
        mol, scf = request.getfixturevalue(system)
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    assert ansatz.kinetic_energy is not None
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 3, seed=5)

    @jax.jit
    def both(p, r):
        exact = jax.vmap(lambda x: kinetic_energy_exact(lambda y: ansatz.log_psi(p, y), x))(r)
        value_grad = jax.vmap(jax.value_and_grad(lambda x: ansatz.log_psi(p, x)))(r)
        return jax.vmap(lambda x: ansatz.kinetic_jet(p, x))(r), exact, value_grad

    (value, grad, structured), exact, (exact_value, exact_grad) = both(params, r)
    assert np.all(np.isfinite(np.asarray(structured)))
    np.testing.assert_allclose(structured, exact, rtol=1e-9)
    # the jet's value and gradient (the DMC drift) are those of log|psi| and backprop
    np.testing.assert_allclose(value, exact_value, rtol=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-9, atol=1e-12)


def test_sparse_forward_laplacian_equals_dense_and_stays_quiet(lih, caplog):
    """folx's sparse Jacobians (the default threshold, and all electrons sparse) give the
    dense result; its dense-fallback warning at our cutoffs is filtered, others are not."""
    mol, scf = lih
    assert [sparsity_threshold(n) for n in (2, 4, 10)] == [0, 3, 12]
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 3, seed=4)

    def kinetic(sparsity):
        def one(p, x):
            return kinetic_energy_forward(lambda y: ansatz.log_psi(p, y), x, sparsity)

        return np.asarray(jax.jit(jax.vmap(one, (None, 0)))(params, r))

    with caplog.at_level(logging.WARNING):
        dense, default, all_sparse = kinetic(0.0), kinetic(SPARSITY), kinetic(1.0)
    np.testing.assert_allclose(default, dense, rtol=1e-10)
    np.testing.assert_allclose(all_sparse, dense, rtol=1e-10)
    assert not [m for m in caplog.messages if "index operation" in m]
    logging.getLogger().warning("Could not perform index operation elsewhere")
    assert caplog.messages[-1].endswith("elsewhere")


def test_jit_vmap_grad(lih):
    mol, scf = lih
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    params = _perturb(ansatz.init(jax.random.PRNGKey(0)))
    r = _walkers(mol, 8)

    @jax.jit
    def loss_grad(p, r):
        return jax.grad(lambda p: jnp.mean(jax.vmap(ansatz.log_psi, (None, 0))(p, r)))(p)

    grads = loss_grad(params, r)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # at initialisation the zero last layers get a gradient, so training can start
    g0 = loss_grad(ansatz.init(jax.random.PRNGKey(0)), r)
    assert float(jnp.abs(g0["net"]["jastrow"][-1]["w"]).max()) > 0
    assert float(jnp.abs(g0["net"]["backflow"]["up"][-1]["w"]).max()) > 0


def test_one_electron(h_atom):
    mol, scf = h_atom
    assert (mol.n_up, mol.n_down) == (1, 0)
    ansatz = paulinet(scf, mol.charges, mol.coords, **SMALL)
    params = ansatz.init(jax.random.PRNGKey(0))
    hf = slater_jastrow(scf, mol.charges, mol.coords, jastrow=False)
    r = _walkers(mol, 3)
    s, l = jax.jit(jax.vmap(ansatz.apply, (None, 0)))(params, r)
    s_hf, l_hf = jax.jit(jax.vmap(lambda x: hf.apply({}, x)))(r)
    np.testing.assert_allclose(l, l_hf, atol=1e-10)
    params = _perturb(params)

    def kinetic(engine):
        return jax.jit(jax.vmap(lambda p, x: engine(lambda y: ansatz.log_psi(p, y), x), (None, 0)))

    t_fwd = kinetic(kinetic_energy_forward)(params, r)
    t_ex = kinetic(kinetic_energy_exact)(params, r)
    np.testing.assert_allclose(t_fwd, t_ex, rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: ansatz.log_psi(p, r[0])))(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))


def test_default_size_parameter_count(lih):
    mol, scf = lih
    params = paulinet(scf, mol.charges, mol.coords).init(jax.random.PRNGKey(0))
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert 50_000 < n < 200_000


def _strong_float64(jaxpr) -> list[str]:
    """Primitives (in all nested jaxprs) that produce a float64 value that is not weakly
    typed: with float32 parameters and walkers these are silent promotions."""
    found = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = v.aval
            if getattr(aval, "dtype", None) == jnp.float64 and not aval.weak_type:
                found.append(str(eqn.primitive))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _strong_float64(inner)
    return found


def test_float32_ansatz_computes_in_float32(lih):
    """precision = "float32": parameters, log|psi| and its parameter gradient stay float32
    throughout (initialisers once divided by np.sqrt, a float64 scalar, and silently
    promoted half the network), and agree with float64 to float32 accuracy."""
    mol, scf = lih
    a32 = paulinet(scf, mol.charges, mol.coords, dtype=jnp.float32, **SMALL)
    a64 = paulinet(scf, mol.charges, mol.coords, **SMALL)
    p32 = a32.init(jax.random.PRNGKey(0))
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(p32)} == {"float32"}
    p64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), p32)
    r64 = _walkers(mol, 3, seed=6)
    r32 = r64.astype(jnp.float32)

    def grad_log_psi(p, x):
        return jax.grad(a32.log_psi)(p, x)

    # (the kinetic energy is left out here: folx adds a float64 zero as the second-order
    # term of linear primitives and casts back, a transient that is folx's own)
    for fn in (a32.log_psi, grad_log_psi):
        jaxpr = jax.make_jaxpr(jax.vmap(fn, (None, 0)))(p32, r32).jaxpr
        assert _strong_float64(jaxpr) == [], fn
    log32 = jax.jit(jax.vmap(a32.log_psi, (None, 0)))(p32, r32)
    log64 = jax.jit(jax.vmap(a64.log_psi, (None, 0)))(p64, r64)
    assert log32.dtype == jnp.float32
    np.testing.assert_allclose(log32, log64, rtol=1e-5, atol=1e-5)
    t32 = jax.jit(jax.vmap(a32.kinetic_energy, (None, 0)))(p32, r32)
    t64 = jax.jit(jax.vmap(a64.kinetic_energy, (None, 0)))(p64, r64)
    assert t32.dtype == jnp.float32
    np.testing.assert_allclose(t32, t64, rtol=1e-3)
