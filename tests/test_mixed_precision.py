"""precision = "mixed": float64 parameters, walkers and local energies; the optimizer's
per-walker gradients and SPRING's Gram product in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import nnqmc
from nnqmc.ansatz.paulinet import paulinet
from nnqmc.api import RunError
from nnqmc.config import TrainConfig
from nnqmc.molecule import Molecule
from nnqmc.optimize import AXIS, cast_floats, make_optimizer
from nnqmc.scf import run_hf
from nnqmc.steps import batch_log_psi

SMALL = dict(embedding_dim=16, layers=2, n_rbf=8, jastrow_layers=2, backflow_layers=2)
N_WALKERS = 32


@pytest.fixture(scope="module")
def lih_pair():
    """LiH's PauliNet in float64 and float32, perturbed float64 parameters, walkers and
    local energies around -8 Ha."""
    mol = Molecule(("Li", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 3.015]])
    scf = run_hf(mol, "cc-pvdz")
    a64 = paulinet(scf, mol.charges, mol.coords, **SMALL)
    a32 = paulinet(scf, mol.charges, mol.coords, dtype=jnp.float32, **SMALL)
    params = a64.init(jax.random.PRNGKey(0))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef,
        [
            x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
            for x, k in zip(leaves, keys, strict=True)
        ],
    )
    rng = np.random.default_rng(2)
    centre = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 3.015], [0, 0, 0]], float)
    walkers = jnp.asarray(centre + rng.normal(size=(N_WALKERS, 4, 3)))
    e = jnp.asarray(-8.07 + 0.1 * rng.normal(size=N_WALKERS))
    return a64, a32, params, walkers, e


def _update(optimizer, params, walkers, e):
    """One optimizer update on one pmapped device; (new params, new state, grad norm)."""
    rep = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], t)
    out = jax.pmap(optimizer.update, axis_name=AXIS)(
        rep(params), rep(optimizer.init(params)), walkers[None], e[None]
    )
    return jax.tree_util.tree_map(lambda a: a[0], out)


@pytest.mark.parametrize("name", ["spring", "adam"])
def test_mixed_step_matches_float64_step(lih_pair, name):
    """The step taken from float32 gradients is the float64 one to float32 accuracy, and
    parameters and optimizer state stay float64. (Adam's first step is lr * sign(g), so
    for it only the steps of parameters whose gradient is not rounding noise compare.)"""
    a64, a32, params, walkers, e = lih_pair
    cfg = TrainConfig()
    p64, s64, g64 = _update(make_optimizer(name, batch_log_psi(a64), cfg), params, walkers, e)
    mixed = make_optimizer(name, batch_log_psi(a32), cfg, jnp.float32)
    pmx, smx, gmx = _update(mixed, params, walkers, e)
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves((pmx, smx))} <= {
        "float64",
        "int32",
    }
    start = ravel_pytree(params)[0]
    step64 = np.asarray(ravel_pytree(p64)[0] - start)
    step_mx = np.asarray(ravel_pytree(pmx)[0] - start)
    assert np.linalg.norm(step64) > 0
    if name == "adam":
        big = np.abs(step64) > 0.5 * np.abs(step64).max()
        assert big.mean() > 0.5
        step64, step_mx = step64[big], step_mx[big]
    assert np.linalg.norm(step_mx - step64) / np.linalg.norm(step64) < 1e-3
    np.testing.assert_allclose(float(gmx), float(g64), rtol=1e-4)


def _gram_dtypes(optimizer, params, walkers, e) -> set[str]:
    """dtypes of the N x N products (the Gram matrix) in the optimizer update's program."""
    jaxpr = jax.make_jaxpr(jax.pmap(optimizer.update, axis_name=AXIS))(
        *jax.tree_util.tree_map(
            lambda a: jnp.asarray(a)[None], (params, optimizer.init(params), walkers, e)
        )
    )
    found = set()

    def visit(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                shape = eqn.outvars[0].aval.shape
                if shape == (N_WALKERS, N_WALKERS):
                    found.add(str(eqn.outvars[0].aval.dtype))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        visit(inner)

    visit(jaxpr.jaxpr)
    return found


def test_mixed_spring_gram_product_is_float32(lih_pair):
    a64, a32, params, walkers, e = lih_pair
    cfg = TrainConfig()
    plain = make_optimizer("spring", batch_log_psi(a64), cfg)
    mixed = make_optimizer("spring", batch_log_psi(a32), cfg, jnp.float32)
    assert _gram_dtypes(plain, params, walkers, e) == {"float64"}
    assert _gram_dtypes(mixed, params, walkers, e) == {"float32"}


def test_cast_floats_keeps_integers():
    tree = {"w": jnp.ones(3), "n": jnp.arange(3), "s": 1.5}
    out = cast_floats(tree, jnp.float32)
    assert out["w"].dtype == jnp.float32 and out["s"].dtype == jnp.float32
    assert out["n"].dtype == jnp.arange(3).dtype


H2 = Molecule(("H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]])


def _h2_mixed(basis: str, width: int, layers: int, **sections) -> nnqmc.Config:
    return nnqmc.settings(
        molecule=H2,
        basis=basis,
        precision="mixed",
        ansatz={"embedding_dim": width, "layers": layers},
        **sections,
    )


def test_mixed_run_from_config_and_custom_run():
    """prepare() builds the float32 copy; a custom run without one is refused."""
    h2 = H2
    config = _h2_mixed("sto-3g", 8, 1, train={"walkers": 16})
    run = nnqmc.prepare(config)
    assert run.dtype == jnp.float64 and run.gradient_dtype == jnp.float32
    p64 = run.ansatz.init(jax.random.PRNGKey(0))
    p32 = run.gradient_ansatz.init(jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(p64) == jax.tree_util.tree_structure(p32)
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(p32)} == {"float32"}
    with pytest.raises(RunError, match="mixed"):
        nnqmc.custom_run(run.hamiltonian, run.ansatz, config, molecule=h2)
    with pytest.raises(ValueError, match="gradient_ansatz"):
        nnqmc.custom_run(
            run.hamiltonian,
            run.ansatz,
            nnqmc.settings(molecule=h2, basis="sto-3g", precision="float64"),
            molecule=h2,
            gradient_ansatz=run.gradient_ansatz,
        )


def test_mixed_training_lowers_h2_energy():
    """A short mixed-precision SPRING run of H2 goes below HF and keeps float64 parameters."""
    config = _h2_mixed("cc-pvdz", 16, 2, train={"walkers": 128, "steps": 150}, eval={"steps": 100})
    run = nnqmc.prepare(config)
    trained = nnqmc.train(run)
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(trained.params)} == {"float64"}
    assert np.all(trained.history["finite"] == 1)
    result = nnqmc.evaluate(run, trained.params, trained.walkers, trained.width)
    assert result.energy < run.scf.energy - 10 * result.energy_err
    assert result.energy < -1.170
