"""The hand-written forward Laplacian of the embedding against autodiff of the embedding."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nnqmc.ansatz.embedding import make_embedding  # noqa: E402
from nnqmc.ansatz.embedding_laplacian import make_embedding_laplacian  # noqa: E402

SIZE = dict(dim=6, layers=2, n_rbf=5, cutoff=6.0)


def _reference(apply, params, r, coords):
    """Value, Jacobian [i, m, a, d] and Laplacian of every feature, by jacfwd and hessian."""
    f = lambda x: apply(params, x, coords)  # noqa: E731
    value = f(r)
    jac = jnp.moveaxis(jax.jacfwd(f)(r), (2, 3), (1, 2))
    hess = jax.hessian(f)(r)  # [i, d, m, a, m', a']
    lap = jnp.einsum("idmama->id", hess)
    return value, jac, lap


@pytest.mark.parametrize(
    "n_up,n_down,n_atoms",
    [(2, 2, 2), (3, 1, 1), (1, 0, 1), (2, 1, 0)],
)
def test_embedding_jet_matches_autodiff(n_up, n_down, n_atoms):
    init, apply = make_embedding(n_up, n_down, n_atoms, **SIZE)
    jet = make_embedding_laplacian(n_up, n_down, n_rbf=SIZE["n_rbf"], cutoff=SIZE["cutoff"])
    params = init(jax.random.PRNGKey(n_up + 3 * n_down + 7 * n_atoms))
    # biases start at zero; perturb them so that every term is exercised
    params = jax.tree_util.tree_map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype), params
    )
    rng = np.random.default_rng(0)
    n = n_up + n_down
    coords = jnp.asarray(rng.normal(scale=1.5, size=(n_atoms, 3)))
    r = jnp.asarray(rng.normal(scale=1.5, size=(n, 3)))
    got = jax.jit(jet)(params, r, coords)
    want = jax.jit(_reference, static_argnums=0)(apply, params, r, coords)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10)
    assert float(jnp.abs(got.laplacian).max()) > 1e-3  # not trivially zero
