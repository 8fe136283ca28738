"""PauliNet-style ansatz (Hermann, Schätzle and Noé, Nat. Chem. 12, 891 (2020)):

    psi(r) = sum_p c_p det[phi_mu(r_i^up) f_{p mu i}] det[phi_mu(r_i^down) f_{p mu i}]
             * exp(gamma(r) + J(r)),

with HF/CASSCF orbitals phi (cusp-corrected), the fixed e–e cusp gamma, and J and the
backflow factors f = 1 + (...) computed from a SchNet-like permutation-equivariant electron
embedding (:mod:`nnqmc.ansatz.embedding`):

    J = sum_i MLP_J(x_i),      f_{p mu i} = 1 + MLP_f^{spin(i)}(x_i)_{p mu}.

The last layers of both MLPs start at zero, so at initialisation J = 0, f = 1 and (without
gamma) the ansatz is exactly the HF/CASSCF wavefunction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..hamiltonian import positions
from ..scf import SCFResult
from . import Ansatz
from .determinants import log_sum_determinants
from .embedding import activation, init_mlp, make_embedding, mlp
from .embedding_laplacian import Jet, kinetic_jet_from_embedding, make_embedding_laplacian
from .jastrow import electron_cusp
from .slater import SlaterPart, slater_part

Params = Any

__all__ = ["paulinet", "paulinet_from_slater", "make_network", "Network", "BACKFLOW_FORMS"]

# f as a function of the network output g (g = 0 at initialisation gives f = 1).
# "exp" keeps every factor positive, so the backflow cannot open spurious nodes by a
# factor crossing zero; "linear" is PauliNet's 1 + g; "none" switches the backflow off.
BACKFLOW_FORMS = {
    "exp": jnp.exp,
    "linear": lambda g: 1.0 + g,
    "none": lambda g: jnp.ones_like(g),
}


class Network(NamedTuple):
    """The neural part of PauliNet.

    ``init(key)``; ``apply(params, r, coords) -> (J, f_up, f_down)``, which is
    ``heads(params, embed(params["embedding"], r, coords))``; ``embedding_jet`` gives the
    embedding with its Jacobian and Laplacian (:mod:`~nnqmc.ansatz.embedding_laplacian`).
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    embed: Callable[[Params, jax.Array, jax.Array], jax.Array]
    heads: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    embedding_jet: Callable[[Params, jax.Array, jax.Array], Jet]


def make_network(
    n_up: int,
    n_down: int,
    n_atoms: int,
    n_det: int,
    *,
    embedding_dim: int = 64,
    layers: int = 3,
    n_rbf: int = 16,
    cutoff: float = 10.0,
    jastrow_layers: int = 3,
    backflow_layers: int = 3,
    backflow: str = "exp",
    dtype=jnp.float64,
) -> Network:
    """The neural part: ``init(key)`` and ``apply(params, r, coords) -> (J, f_up, f_down)``.

    ``f_up``: (n_det, n_up, n_up), ``f_down``: (n_det, n_down, n_down), rows = electrons,
    columns = orbitals, as the matrices of :class:`~nnqmc.ansatz.slater.SlaterPart`.
    """
    if jastrow_layers < 1 or backflow_layers < 1:
        raise ValueError("jastrow_layers and backflow_layers must be >= 1")
    dim = embedding_dim
    emb_init, emb_apply = make_embedding(
        n_up, n_down, n_atoms, dim=dim, layers=layers, n_rbf=n_rbf, cutoff=cutoff, dtype=dtype
    )
    emb_jet = make_embedding_laplacian(n_up, n_down, n_rbf=n_rbf, cutoff=cutoff)

    def init(key: jax.Array) -> Params:
        k_emb, k_jas, k_trunk, k_up, k_dn = jax.random.split(key, 5)
        trunk = [dim] * backflow_layers  # backflow_layers - 1 hidden layers, then the heads
        return {
            "embedding": emb_init(k_emb),
            "jastrow": init_mlp(k_jas, [dim] * jastrow_layers + [1], zero_last=True, dtype=dtype),
            "backflow": {
                "trunk": init_mlp(k_trunk, trunk, dtype=dtype) if backflow_layers > 1 else [],
                "up": init_mlp(k_up, [dim, n_det * n_up], zero_last=True, dtype=dtype),
                "down": init_mlp(k_dn, [dim, n_det * n_down], zero_last=True, dtype=dtype),
            },
        }

    def heads(params: Params, x: jax.Array):
        jastrow = jnp.sum(mlp(params["jastrow"], x))
        bf = params["backflow"]
        hidden = x
        if bf["trunk"]:
            hidden = mlp(bf["trunk"], x)
            hidden = activation(hidden)  # the trunk's last layer is activated too
        g_up = mlp(bf["up"], hidden[:n_up]).reshape(n_up, n_det, n_up)
        g_down = mlp(bf["down"], hidden[n_up:]).reshape(n_down, n_det, n_down)
        f_up, f_down = BACKFLOW_FORMS[backflow](g_up), BACKFLOW_FORMS[backflow](g_down)
        return jastrow, jnp.moveaxis(f_up, 1, 0), jnp.moveaxis(f_down, 1, 0)

    def apply(params: Params, r: jax.Array, coords: jax.Array):
        return heads(params, emb_apply(params["embedding"], r, coords))

    return Network(init, apply, emb_apply, heads, emb_jet)


def paulinet(
    scf: SCFResult,
    charges: np.ndarray,
    coords: np.ndarray,
    *,
    ee_cusp: bool = True,
    cusp: bool = True,
    dtype=jnp.float64,
    **net: Any,
) -> Ansatz:
    """PauliNet: HF/CASSCF determinants with neural backflow factors and Jastrow; ``net``:
    the sizes and backflow form of :func:`make_network`.

    ``apply(params, r) -> (sign, log|psi|)`` for one walker ``r`` of shape (n_elec, 3).
    The CI coefficients are trainable when there is more than one determinant.
    """
    slater = slater_part(scf, charges, cusp=cusp, dtype=dtype)
    return paulinet_from_slater(slater, coords, ee_cusp=ee_cusp, dtype=dtype, **net)


def paulinet_from_slater(
    slater: SlaterPart,
    coords: np.ndarray,
    *,
    ee_cusp: bool = True,
    ee_cusp_range: float = 1.0,
    dtype=jnp.float64,
    **net_options: Any,
) -> Ansatz:
    """:func:`paulinet` for any determinant part: HF/CASSCF orbitals or user orbitals.

    ``coords`` (n_atoms, 3) are the nuclei the embedding sees; with none (n_atoms = 0, e.g.
    Hooke's atom) the embedding has electron–electron messages only.
    """
    n_up, n_down = slater.n_up, slater.n_down
    n_det = slater.ci.shape[0]
    multi = n_det > 1
    coords_np = positions(coords)
    net = make_network(n_up, n_down, len(coords_np), n_det, dtype=dtype, **net_options)

    def init(key: jax.Array) -> Params:
        params = {"net": net.init(key)}
        if multi:
            params["ci"] = jnp.asarray(slater.ci, dtype)
        return params

    def from_embedding(params: Params, r: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sign, log|psi|) given the embedding x of r."""
        jastrow, f_up, f_down = net.heads(params["net"], x)
        up, down = slater.matrices(r)
        ci = params["ci"] if multi else jnp.asarray(slater.ci, r.dtype)
        sign, log = log_sum_determinants(up * f_up, down * f_down, ci)
        log = log + jastrow
        if ee_cusp:
            log = log + electron_cusp(r, n_up, n_down, ee_cusp_range)
        return sign, log

    def apply(params: Params, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        coords = jnp.asarray(coords_np, r.dtype)
        return from_embedding(params, r, net.embed(params["net"]["embedding"], r, coords))

    def kinetic_jet(params: Params, r: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Forward Laplacian with the embedding's jet written out by hand; folx does the rest."""
        coords = jnp.asarray(coords_np, r.dtype)
        jet = net.embedding_jet(params["net"]["embedding"], r, coords)
        return kinetic_jet_from_embedding(lambda y, z: from_embedding(params, y, z)[1], r, jet)

    return Ansatz(init, apply, n_up, n_down, kinetic_jet)


NETWORK_OPTIONS = (
    "embedding_dim", "layers", "n_rbf", "cutoff", "jastrow_layers", "backflow_layers"
)  # fmt: skip


def paulinet_from_options(
    slater: SlaterPart, coords: np.ndarray, options: Any, dtype=jnp.float64
) -> Ansatz:
    """:func:`paulinet_from_slater` with the sizes and switches of an ``[ansatz]`` section
    (:class:`nnqmc.config.AnsatzConfig`)."""
    sizes = {name: getattr(options, name) for name in NETWORK_OPTIONS}
    return paulinet_from_slater(
        slater,
        coords,
        backflow=options.backflow,
        ee_cusp=options.ee_cusp,
        ee_cusp_range=options.ee_cusp_range,
        dtype=dtype,
        **sizes,
    )
