"""SPRING and Adam on toy problems; 1 vs 2 devices in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import nnqmc  # noqa: F401  (enables x64)
from nnqmc.config import TrainConfig
from nnqmc.optimize import (
    AXIS,
    SpringState,
    adam,
    jacobian_blocks,
    leaf_groups,
    make_optimizer,
    spring,
    spring_direction,
    vmc_gradient,
)

DAMPING = 1e-3


def features(x):
    """(n, 3) features of a linear log psi: O is exactly these."""
    x = jnp.asarray(x)
    return jnp.stack([x[:, 0], x[:, 1] ** 2, jnp.sin(x[:, 0] * x[:, 1])], axis=1)


def linear_log_psi(params, walkers):
    f = features(walkers)
    return f[:, :2] @ params["lin"] + params["sin"] * f[:, 2]


PARAMS = {"lin": jnp.array([0.3, -0.2]), "sin": jnp.array(0.1)}  # ravel order: lin, sin


def flat(params):
    return np.asarray(ravel_pytree(params)[0])


def reference_direction(o, e, previous, damping, momentum):
    """Dense numpy of delta = Ob^T (Ob Ob^T + l I)^-1 (eps - mu Ob prev) + mu prev."""
    n = o.shape[0]
    ob = (o - o.mean(0)) / np.sqrt(n)
    eps = -2.0 * (e - e.mean()) / np.sqrt(n)
    rhs = eps - momentum * ob @ previous
    return ob.T @ np.linalg.solve(ob @ ob.T + damping * np.eye(n), rhs) + momentum * previous


def run_pmapped(opt, params, steps):
    """Apply ``opt`` on one device for the given [(walkers, energies)]; returns records."""
    update = jax.pmap(opt.update, axis_name=AXIS)
    rep = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], t)
    p, s = rep(params), rep(opt.init(params))
    out = []
    for walkers, e in steps:
        p, s, g = update(p, s, jnp.asarray(walkers)[None], jnp.asarray(e)[None])
        out.append(
            (
                jax.tree_util.tree_map(lambda a: a[0], p),
                jax.tree_util.tree_map(lambda a: a[0], s),
                g[0],
            )
        )
    return out


def toy_batch(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return x, rng.normal(size=n) + x[:, 0] ** 2


@pytest.mark.parametrize("n", [2, 7])  # N < P (momentum matters) and N > P
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_spring_direction_matches_dense_numpy(momentum, n):
    batches = [toy_batch(1, n), toy_batch(2, n), toy_batch(3, n)]
    lr, decay = 0.05, 10.0
    opt = spring(linear_log_psi, lr, decay, DAMPING, momentum, max_norm=1e9)
    records = run_pmapped(opt, PARAMS, batches)
    theta, previous = flat(PARAMS), np.zeros(3)
    for k, ((x, e), (p, s, g)) in enumerate(zip(batches, records, strict=True)):
        o = np.asarray(features(x))
        delta = reference_direction(o, e, previous, DAMPING, momentum)
        np.testing.assert_allclose(np.asarray(s.direction), delta, rtol=1e-9, atol=1e-12)
        theta = theta + lr / (1 + k / decay) * delta
        np.testing.assert_allclose(flat(p), theta, rtol=1e-9, atol=1e-12)
        assert int(s.count) == k + 1
        # grad_norm is |grad E| = |2 cov(O, E_L)|
        grad = 2 * ((o - o.mean(0)) * (e - e.mean())[:, None]).mean(0)
        np.testing.assert_allclose(float(g), np.linalg.norm(grad), rtol=1e-9)
        previous = delta


@pytest.mark.parametrize("n", [2, 9])
def test_zero_momentum_is_minsr_and_sr(n):
    x, e = toy_batch(4, n)
    opt = spring(linear_log_psi, 1.0, 1e9, DAMPING, 0.0, max_norm=1e9)
    ((_, s, _),) = run_pmapped(opt, PARAMS, [(x, e)])
    o = np.asarray(features(x))
    ob = (o - o.mean(0)) / np.sqrt(n)
    eps = -2.0 * (e - e.mean()) / np.sqrt(n)
    sr = np.linalg.solve(ob.T @ ob + DAMPING * np.eye(3), ob.T @ eps)
    minsr = ob.T @ np.linalg.solve(ob @ ob.T + DAMPING * np.eye(n), eps)
    np.testing.assert_allclose(sr, minsr, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(s.direction), sr, rtol=1e-8, atol=1e-12)


def test_norm_constraint_and_schedule():
    x, e = toy_batch(5, 8)
    lr, max_norm = 10.0, 1e-3
    opt = spring(linear_log_psi, lr, 2.0, DAMPING, 0.5, max_norm=max_norm)
    records = run_pmapped(opt, PARAMS, [(x, e), toy_batch(6, 8)])
    before = flat(PARAMS)
    for p, s, _ in records:
        step = flat(p) - before
        np.testing.assert_allclose(np.linalg.norm(step), max_norm, rtol=1e-9)
        # direction preserved; stored momentum is the unconstrained delta
        cos = step @ np.asarray(s.direction) / np.linalg.norm(step) / np.linalg.norm(s.direction)
        np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
        before = flat(p)


def test_make_optimizer_spring_reads_train_config():
    cfg = TrainConfig(
        optimizer="spring",
        learning_rate=0.3,
        lr_decay_steps=1e9,
        damping=DAMPING,
        momentum=0.5,
        max_grad_norm=1.0,
    )
    x, e = toy_batch(8, 5)
    by_name = run_pmapped(make_optimizer("spring", linear_log_psi, cfg), PARAMS, [(x, e)] * 2)
    direct = run_pmapped(spring(linear_log_psi, 0.3, 1e9, DAMPING, 0.5, 1.0), PARAMS, [(x, e)] * 2)
    for (p1, _, _), (p2, _, _) in zip(by_name, direct, strict=True):
        np.testing.assert_allclose(flat(p1), flat(p2), rtol=1e-12)
    with pytest.raises(ValueError):
        make_optimizer("nope", linear_log_psi, cfg)


def test_spring_init_state():
    state = spring(linear_log_psi, 0.1, 10.0, DAMPING, 0.9, 1.0).init(PARAMS)
    assert isinstance(state, SpringState)
    assert state.direction.shape == (3,) and int(state.count) == 0


# 1D harmonic oscillator, psi = exp(-a x^2): E_L = a + x^2 (1/2 - 2 a^2), E(a) = a/2 + 1/(8a).
def ho_log_psi(params, x):
    return -params["a"] * x**2


def ho_energy(a):
    return a / 2 + 1 / (8 * a)


def optimise_ho(opt, steps, n=512, a0=0.2, seed=0):
    update = jax.pmap(opt.update, axis_name=AXIS)
    params = {"a": jnp.array([a0])}
    state = jax.tree_util.tree_map(lambda t: jnp.asarray(t)[None], opt.init({"a": jnp.array(a0)}))
    rng = np.random.default_rng(seed)
    history = [a0]
    for _ in range(steps):
        a = float(params["a"][0])
        x = rng.normal(scale=np.sqrt(1 / (4 * a)), size=n)  # |psi|^2 = N(0, 1/(4a))
        e_loc = a + x**2 * (0.5 - 2 * a**2)
        params, state, _ = update(params, state, jnp.asarray(x)[None], jnp.asarray(e_loc)[None])
        history.append(float(params["a"][0]))
    return np.array(history)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_spring_lowers_harmonic_oscillator_energy(momentum):
    opt = spring(ho_log_psi, 0.2, 1e4, DAMPING, momentum, max_norm=0.5)
    a = optimise_ho(opt, 40)
    assert a[1] > a[0]  # the very first step goes downhill in energy
    assert ho_energy(a[1]) < ho_energy(a[0])
    assert abs(a[-1] - 0.5) < 1e-2
    assert ho_energy(a[-1]) < ho_energy(a[0]) - 0.05


def test_adam_lowers_harmonic_oscillator_energy():
    opt = adam(ho_log_psi, 0.02, 1e4, 1.0)
    a = optimise_ho(opt, 150)
    assert ho_energy(a[1]) < ho_energy(a[0])
    assert abs(a[-1] - 0.5) < 2e-2


TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.flatten_util, jax.numpy as jnp, numpy as np
    import nnqmc
    from nnqmc.optimize import AXIS, spring, vmc_gradient

    def log_psi(params, x):  # tiny MLP
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return h @ params["w2"] - 0.5 * jnp.sum(x**2, axis=1)

    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w1": 0.5 * jax.random.normal(k1, (3, 4)), "b1": jnp.zeros(4),
              "w2": 0.5 * jax.random.normal(k2, (4,))}
    n = 8
    batches = [(jax.random.normal(jax.random.fold_in(k3, i), (n, 3)),
                jax.random.normal(jax.random.fold_in(k3, 100 + i), (n,))) for i in range(3)]
    opt = spring(log_psi, 0.05, 10.0, 1e-3, 0.9, 0.02)
    out = {"n_devices": jax.device_count()}
    for d in (1, 2):
        devs = jax.devices()[:d]
        rep = lambda t: jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(a, (d,) + jnp.shape(a)), t)
        split = lambda a: a.reshape((d, n // d) + a.shape[1:])
        update = jax.pmap(opt.update, axis_name=AXIS, devices=devs)
        grad = jax.pmap(lambda p, w, e: vmc_gradient(log_psi, p, w, e), axis_name=AXIS,
                        devices=devs)
        p, s = rep(params), rep(opt.init(params))
        rec = []
        for w, e in batches:
            g = grad(p, split(w), split(e))
            p, s, gn = update(p, s, split(w), split(e))
            leaves = jax.tree_util.tree_leaves((p, s, gn, g))
            # every device holds the same replicated result
            same = all(bool(jnp.all(x == x[0])) for x in leaves)
            rec.append({"params": np.asarray(jax.flatten_util.ravel_pytree(
                            jax.tree_util.tree_map(lambda a: a[0], p))[0]).tolist(),
                        "direction": np.asarray(s.direction[0]).tolist(),
                        "grad_norm": float(gn[0]),
                        "vmc_grad": np.asarray(jax.flatten_util.ravel_pytree(
                            jax.tree_util.tree_map(lambda a: a[0], g))[0]).tolist(),
                        "replicated": same})
        out[d] = rec
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_device_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["n_devices"] >= 2
    return out["1"], out["2"]


def test_spring_one_vs_two_devices(two_device_results):
    one, two = two_device_results
    for a, b in zip(one, two, strict=True):
        assert a["replicated"] and b["replicated"]
        np.testing.assert_allclose(b["direction"], a["direction"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b["params"], a["params"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-10)


def test_vmc_gradient_one_vs_two_devices(two_device_results):
    one, two = two_device_results
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b["vmc_grad"], a["vmc_grad"], rtol=1e-10, atol=1e-12)
        # SPRING's grad_norm is the norm of the same clipped VMC gradient
        np.testing.assert_allclose(a["grad_norm"], np.linalg.norm(a["vmc_grad"]), rtol=1e-10)


def test_vmc_gradient_matches_covariance_formula():
    x, e = toy_batch(7, 10)
    g = jax.pmap(lambda p, w, el: vmc_gradient(linear_log_psi, p, w, el), axis_name=AXIS)(
        jax.tree_util.tree_map(lambda a: a[None], PARAMS),
        jnp.asarray(x)[None],
        jnp.asarray(e)[None],
    )
    o = np.asarray(features(x))
    expected = 2 * ((o - o.mean(0)) * (e - e.mean())[:, None]).mean(0)
    np.testing.assert_allclose(
        flat(jax.tree_util.tree_map(lambda a: a[0], g)), expected, rtol=1e-10
    )


def test_leaf_groups_keep_big_leaves_alone_and_ravel_order():
    assert leaf_groups([1, 2, 2000, 3, 4, 5000, 7], min_block=1024) == [
        (0, 2),
        (2, 3),
        (3, 5),
        (5, 6),
        (6, 7),
    ]
    assert leaf_groups([5, 6], min_block=1024) == [(0, 2)]
    assert leaf_groups([5, 6], min_block=1) == [(0, 1), (1, 2)]


def mixed_log_psi(params, walkers):
    """A log psi with leaves of several sizes and shapes, nonlinear in the parameters."""
    h = jnp.tanh(walkers @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["c"] * jnp.sum(walkers**2, axis=1)


@pytest.mark.parametrize("min_block", [1, 8, 10**9])
def test_jacobian_blocks_concatenate_to_the_flat_jacobian(min_block):
    key = jax.random.PRNGKey(3)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "b1": jax.random.normal(k1, (6,)),
        "c": jnp.array(0.2),
        "w1": jax.random.normal(k2, (2, 6)),
        "w2": jax.random.normal(k3, (6,)),
    }
    walkers = jax.random.normal(key, (5, 2))
    blocks = jacobian_blocks(mixed_log_psi, params, walkers, min_block=min_block)
    theta, unravel = ravel_pytree(params)
    flat_jac = jax.jacrev(lambda t: mixed_log_psi(unravel(t), walkers))(theta)
    np.testing.assert_allclose(np.concatenate(blocks, axis=1), flat_jac, rtol=1e-12)
    assert len(blocks) == len(
        leaf_groups([x.size for x in jax.tree_util.tree_leaves(params)], min_block)
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_spring_direction_from_blocks_matches_dense_numpy(dtype, momentum):
    """Blocks give the dense result; large column means (constant-like gradients, e.g. of
    a bias) do not spoil it, in float64 (projector centring) or float32 (explicit)."""
    rng = np.random.default_rng(0)
    n, sizes = 12, [10, 25, 15]
    o = rng.normal(size=(n, sum(sizes))) + 300.0 * rng.normal(size=sum(sizes))
    e = rng.normal(size=n)
    previous = 0.1 * rng.normal(size=sum(sizes))
    want = reference_direction(o, e, previous, DAMPING, momentum)
    blocks = np.split(o, np.cumsum(sizes)[:-1], axis=1)
    delta, minus_grad = spring_direction(
        [jnp.asarray(b, dtype) for b in blocks],
        jnp.asarray(e, dtype),
        jnp.asarray(previous, dtype),
        DAMPING,
        momentum,
    )
    tol = 1e-9 if dtype == jnp.float64 else 2e-3
    scale = np.linalg.norm(want)
    assert np.linalg.norm(np.asarray(delta, np.float64) - want) / scale < tol
    grad = 2 * ((o - o.mean(0)) * (e - e.mean())[:, None]).mean(0)
    np.testing.assert_allclose(np.asarray(minus_grad, np.float64), -grad, rtol=tol, atol=tol)


def test_spring_with_no_parameters_is_a_no_op():
    """An ansatz without trainable parameters (the bare HF determinant) still trains."""
    x, e = toy_batch(9, 6)
    log_psi = lambda params, walkers: jnp.sum(walkers**2, axis=1)
    blocks = jacobian_blocks(log_psi, {}, jnp.asarray(x))
    assert [b.shape for b in blocks] == [(6, 0)]
    ((p, s, g),) = run_pmapped(spring(log_psi, 0.1, 10.0, DAMPING, 0.9, 0.1), {}, [(x, e)])
    assert p == {} and s.direction.shape == (0,) and float(g) == 0.0


def test_spring_direction_survives_a_float32_gram_that_rounds_indefinite():
    """One walker with a huge gradient row (near a node) makes the float32 Gram product
    indefinite by rounding; Cholesky fails there, and the fallback (more damping for this
    step) still gives a finite direction near the float64 one (the mixed-precision scans'
    non-finite steps). Near: float32 rounding at this scale already moves the direction by a
    third (and by 40 % where Cholesky still succeeds, at a third of this scale)."""
    rng = np.random.default_rng(1)
    n, p = 64, 30  # p < n: the Gram product has n - p eigenvalues at the damping
    o = rng.normal(size=(n, p))
    o[0] *= 1e4
    e = rng.normal(size=n)
    previous = np.zeros(p)
    blocks32 = [jnp.asarray(o, jnp.float32)]
    centred = blocks32[0] - blocks32[0].mean(0)
    t = np.asarray(centred @ centred.T, np.float64) / n
    t = t - t.mean(0) - t.mean(1)[:, None] + t.mean()
    t = 0.5 * (t + t.T) + DAMPING * np.eye(n) + 1.0 / n
    assert np.linalg.eigvalsh(t)[0] < 0  # the case this test is about
    delta, _ = spring_direction(
        blocks32, jnp.asarray(e, jnp.float32), jnp.zeros(p, jnp.float32), DAMPING, 0.0
    )
    delta = np.asarray(delta, np.float64)
    assert np.all(np.isfinite(delta))
    want = reference_direction(o, e, previous, DAMPING, 0.0)
    assert np.linalg.norm(delta - want) / np.linalg.norm(want) < 0.5
