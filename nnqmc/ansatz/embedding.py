"""A permutation-equivariant SchNet-like electron embedding (after PauliNet, Hermann et al.,
Nat. Chem. 12, 891 (2020)), in pure ``jax.numpy`` with parameters as dict/list pytrees.

Features.  Every distance d (electron–electron and electron–nucleus) enters only through

    s(d) = d^2 / (1 + d),        g_k(d) = exp(-((s - mu_k) / sigma_k)^2),    k = 1..n_rbf,

times a compactly supported envelope ``e(d) = max(1 - (d / cutoff)^2, 0)^3`` (C^2 at the
cutoff).  Because s ~ d^2 near d = 0, all features are smooth at coalescence points (no kink
from |r|), so they leave the orbital cusps and the fixed e–e cusp alone and have a finite
Laplacian everywhere.  The e–e "distance" of an electron to itself is never used: its squared
distance is shifted by 1 (the difference r_i - r_i is identically zero, so no NaN gradient)
and its messages are masked out.

Layers.  Electrons start from a learned vector per spin, x_i^0 = X_{s(i)}.  Layer l computes

    h_j = x_j W_h,
    z_i^same = sum_{j != i, same spin}     w_same(e_ij) * h_j,
    z_i^anti = sum_{j, opposite spin}      w_anti(e_ij) * h_j,
    z_i^nuc  = sum_I                       w_nuc(e_iI)  * Y_I,
    x_i <- x_i + silu(z^same A + z^anti B + z^nuc C + b)      (residual update),

with separate filter networks w for the three kinds of neighbours (n_rbf -> D, SiLU, then one
linear D -> D head per layer; times the envelope) and learned nuclear embeddings Y_I per layer.
The filters depend on distances only, so they are evaluated once, before the layer loop.
Same/opposite spin is decided relative to electron i, so swapping electrons of equal spin
permutes the rows of the output; only distances enter, so the output is invariant under
rotations and translations.

Cost per walker: one (n_elec, n_elec, n_rbf) basis tensor, and the filters (all layers at
once) on n_up^2 + n_down^2 same-spin pairs, n_up * n_down opposite-spin pairs (the down->up
block is the transpose of the up->down one) and n_elec * n_atoms electron–nucleus pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

__all__ = [
    "activation",
    "init_linear",
    "init_mlp",
    "mlp",
    "radial_basis_parameters",
    "radial_features",
    "filter_hidden",
    "pair_distances",
    "initial_features",
    "nuclear_weights",
    "make_embedding",
    "electron_nuclear_inputs",
]


def activation(x: jax.Array) -> jax.Array:
    """SiLU, smooth (unlike ReLU) so that Laplacians are well defined."""
    return x * jax.nn.sigmoid(x)


def scaled_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
    """N(0, 1 / fan_in) weights in ``dtype`` (the scale is a Python float, which keeps the
    dtype; a NumPy float64 scalar would promote float32 weights under x64)."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(max(fan_in, 1))


def init_linear(key: jax.Array, n_in: int, n_out: int, zero: bool = False, dtype=jnp.float64):
    if zero:
        w = jnp.zeros((n_in, n_out), dtype)
    else:
        w = scaled_normal(key, (n_in, n_out), n_in, dtype)
    return {"w": w, "b": jnp.zeros((n_out,), dtype)}


def init_mlp(key: jax.Array, sizes: list[int], zero_last: bool = False, dtype=jnp.float64):
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``; optionally a zero last one."""
    keys = jax.random.split(key, len(sizes) - 1)
    n_layers = len(sizes) - 1
    return [
        init_linear(k, a, b, zero=zero_last and i == n_layers - 1, dtype=dtype)
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    ]


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """SiLU between layers, none after the last."""
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = activation(x)
    return x


def _contract(w: jax.Array, h: jax.Array) -> jax.Array:
    """sum_j w_ijd h_jd as a broadcast product and a sum (cheaper than einsum under folx)."""
    return jnp.sum(w * h[None], axis=1)


def _s(d: np.ndarray) -> np.ndarray:
    return d**2 / (1.0 + d)


# Narrowest Gaussian width in s = d^2/(1+d). Narrower features put a large curvature into J
# within ~0.1 bohr of the nuclei and coalescence points, which shows up as heavy tails of the
# local energy (measured on H2: variance 0.25 Ha^2 with the unfloored widths).
MIN_WIDTH = 0.2


def radial_basis_parameters(n_rbf: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres and widths of the Gaussians in s = d^2/(1+d): denser at short distance,
    widths at least ``MIN_WIDTH``."""
    if n_rbf == 1:
        return np.zeros(1), np.array([_s(cutoff)])
    d = cutoff * np.linspace(0.0, 1.0, n_rbf) ** 2
    mu = _s(d)
    gaps = np.diff(mu)
    sigma = np.empty(n_rbf)
    sigma[0] = gaps[0]
    sigma[-1] = gaps[-1]
    sigma[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    return mu, np.maximum(sigma, MIN_WIDTH)


def radial_features(
    d: jax.Array, mu: np.ndarray, sigma: np.ndarray, cutoff: float
) -> tuple[jax.Array, jax.Array]:
    """The Gaussians g_k(d) in s = d^2/(1+d), shape (..., n_rbf), and the envelope e(d)."""
    mu = jnp.asarray(mu, d.dtype)
    sigma = jnp.asarray(sigma, d.dtype)
    s = d * d / (1.0 + d)
    basis = jnp.exp(-(((s[..., None] - mu) / sigma) ** 2))
    envelope = jnp.maximum(1.0 - (d / cutoff) ** 2, 0.0) ** 3
    return basis, envelope


def filter_hidden(hidden: dict[str, jax.Array], rbf: jax.Array, env: jax.Array) -> jax.Array:
    """Envelope-weighted hidden filter features ``[silu(rbf A + a) * env, env]``, (..., dim + 1):
    each layer's filter is these times its head ``[[W], [b]]``."""
    h = activation(rbf @ hidden["w"] + hidden["b"]) * env[..., None]
    return jnp.concatenate([h, env[..., None]], axis=-1)


def pair_distances(
    r: jax.Array, coords: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(r_i - r_j, d_ij, r_i - R_I, d_iI)``. The e–e diagonal's squared distance is
    shifted by 1 (never used, no NaN gradient); the tiny e–n shift only guards sqrt' at an
    electron exactly on a nucleus."""
    diff_ee = r[:, None, :] - r[None, :, :]
    d_ee = jnp.sqrt(jnp.sum(diff_ee * diff_ee, axis=-1) + jnp.eye(r.shape[0], dtype=r.dtype))
    diff_en = r[:, None, :] - coords.astype(r.dtype)[None, :, :]
    d_en = jnp.sqrt(jnp.sum(diff_en * diff_en, axis=-1) + 1e-30)
    return diff_ee, d_ee, diff_en, d_en


def initial_features(spin: jax.Array, n_up: int, n_down: int, dtype) -> jax.Array:
    """x^0: the learned vector of each electron's spin, (n_up + n_down, dim)."""
    dim = spin.shape[1]
    up = jnp.broadcast_to(spin[0], (n_up, dim))
    down = jnp.broadcast_to(spin[1], (n_down, dim))
    return jnp.concatenate([up, down]).astype(dtype)


def electron_nuclear_inputs(
    r_i: jax.Array, coords: jax.Array, scales: np.ndarray | None = None
) -> jax.Array:
    """Per-electron input features from the vectors to the nuclei, (4 n_atoms,) for one
    electron position ``r_i`` (3,):

        [(r_i - R_I) / sqrt(1 + d_iI^2),  log(1 + d_iI^2)]  for each nucleus I,

    and with ``scales`` (n_atoms,) the same again in units of 1/k_I, (8 n_atoms,):

        [k_I (r_i - R_I) / sqrt(1 + k_I^2 d_iI^2),  log(1 + k_I^2 d_iI^2)],

    which vary within the core of a nucleus of charge Z for k_I = Z (1s radius ~ 1/Z) where
    the unscaled ones are flat. All are smooth functions of r_i (only d^2 enters), so they
    keep the nuclear cusps of the orbitals; the vectors give the embedding directions, which
    distances alone cannot. They are invariant under joint translations of electrons and
    nuclei, not under rotations of the electrons about a molecule (its frame enters)."""
    diff = r_i[None, :] - coords.astype(r_i.dtype)
    d2 = jnp.sum(diff * diff, axis=-1, keepdims=True)
    parts = [diff / jnp.sqrt(1.0 + d2), jnp.log1p(d2)]
    if scales is not None:
        k = jnp.asarray(scales, r_i.dtype)[:, None]
        k2d2 = k * k * d2
        parts += [k * diff / jnp.sqrt(1.0 + k2d2), jnp.log1p(k2d2)]
    return jnp.concatenate(parts, axis=-1).reshape(-1)


def nuclear_weights(head: jax.Array, nuclei: jax.Array) -> jax.Array:
    """(n_atoms, dim + 1, dim): a layer's nuclear message is
    ``sum_I f_iI @ (head * Y_I)`` with f the hidden filter features."""
    return head[None] * nuclei[:, None]


def make_embedding(
    n_up: int,
    n_down: int,
    n_atoms: int,
    *,
    dim: int = 64,
    layers: int = 3,
    n_rbf: int = 16,
    cutoff: float = 10.0,
    en_vectors: bool = False,
    en_scales: np.ndarray | None = None,
    dtype=jnp.float64,
) -> tuple[Callable[[jax.Array], Params], Callable[[Params, jax.Array, jax.Array], jax.Array]]:
    """``(init(key) -> params, apply(params, r, coords) -> x)`` with x of shape (n_elec, dim).

    ``r``: (n_up + n_down, 3) electrons, first ``n_up`` spin-up; ``coords``: (n_atoms, 3).
    ``en_vectors``: x^0 also gets a learned linear map of
    :func:`electron_nuclear_inputs` (the generalized ansatz), with ``en_scales`` its
    core-scaled inputs too.
    """
    n = n_up + n_down
    mu_np, sigma_np = radial_basis_parameters(n_rbf, cutoff)
    eye_up = np.eye(n_up)
    eye_down = np.eye(n_down)
    not_self_up = 1.0 - eye_up
    not_self_down = 1.0 - eye_down

    def init(key: jax.Array) -> Params:
        k = iter(jax.random.split(key, 8 + 3 * layers))
        params: dict[str, Any] = {
            "spin": jax.random.normal(next(k), (2, dim), dtype),
            # one filter network per neighbour kind: a shared hidden layer n_rbf -> dim and
            # one linear output head dim -> dim per interaction layer (last row: its bias)
            "filters": {
                name: {
                    "hidden": init_linear(next(k), n_rbf, dim, dtype=dtype),
                    "heads": scaled_normal(next(k), (layers, dim + 1, dim), dim, dtype),
                }
                for name in ("same", "anti", "nuc")
            },
            "layers": [],
        }
        if en_vectors:
            n_in = (4 if en_scales is None else 8) * n_atoms
            params["input"] = scaled_normal(next(k), (n_in, dim), n_in, dtype)
        for _ in range(layers):
            params["layers"].append(
                {
                    "h": scaled_normal(next(k), (dim, dim), dim, dtype),
                    "nuclei": jax.random.normal(next(k), (n_atoms, dim), dtype),
                    "update": {
                        "w": scaled_normal(next(k), (3, dim, dim), 3 * dim, dtype),
                        "b": jnp.zeros((dim,), dtype),
                    },
                }
            )
        return params

    def features(d: jax.Array) -> tuple[jax.Array, jax.Array]:
        return radial_features(d, mu_np, sigma_np, cutoff)

    def apply(params: Params, r: jax.Array, coords: jax.Array) -> jax.Array:
        dt = r.dtype
        _, d_ee, _, d_en = pair_distances(r, coords)
        rbf_ee, env_ee = features(d_ee)
        rbf_en, env_en = features(d_en)

        # static pair blocks; filters are only evaluated where needed, once for all layers
        def filters(which, rbf, env):
            return filter_hidden(params["filters"][which]["hidden"], rbf, env)

        def head(which, l, hidden):
            """Layer l's filter w(e) * env = [hidden * env, env] @ [[W], [b]]."""
            return hidden @ params["filters"][which]["heads"][l]

        up, dn = slice(0, n_up), slice(n_up, n)
        mask_up = jnp.asarray(not_self_up, dt)
        mask_dn = jnp.asarray(not_self_down, dt)
        if n_down:
            same_rbf = jnp.concatenate(
                [rbf_ee[up, up].reshape(-1, n_rbf), rbf_ee[dn, dn].reshape(-1, n_rbf)]
            )
            same_env = jnp.concatenate(
                [(env_ee[up, up] * mask_up).reshape(-1), (env_ee[dn, dn] * mask_dn).reshape(-1)]
            )
        else:
            same_rbf = rbf_ee[up, up].reshape(-1, n_rbf)
            same_env = (env_ee[up, up] * mask_up).reshape(-1)
        f_same = filters("same", same_rbf, same_env)  # (n_up^2 + n_down^2, dim + 1)
        has_anti = n_down > 0
        if has_anti:
            f_anti = filters("anti", rbf_ee[up, dn], env_ee[up, dn])  # (n_up, n_down, dim + 1)
        f_nuc = filters("nuc", rbf_en, env_en)  # (n, n_atoms, dim + 1)

        x = initial_features(params["spin"], n_up, n_down, dt)
        if "input" in params:
            inputs = jax.vmap(electron_nuclear_inputs, in_axes=(0, None, None))(
                r, coords, en_scales
            )
            x = x + inputs @ params["input"].astype(dt)

        for l, layer in enumerate(params["layers"]):
            h = x @ layer["h"]
            h_up, h_dn = h[:n_up], h[n_up:]
            w_same = head("same", l, f_same)
            w_uu = w_same[: n_up * n_up].reshape(n_up, n_up, dim)
            z_same = _contract(w_uu, h_up)
            if n_down:
                w_dd = w_same[n_up * n_up :].reshape(n_down, n_down, dim)
                z_same = jnp.concatenate([z_same, _contract(w_dd, h_dn)])
            upd = layer["update"]
            pre = z_same @ upd["w"][0] + upd["b"]
            if has_anti:
                w_ud = head("anti", l, f_anti)
                z_anti = jnp.concatenate(
                    [
                        _contract(w_ud, h_dn),
                        _contract(jnp.swapaxes(w_ud, 0, 1), h_up),
                    ]
                )
                pre = pre + z_anti @ upd["w"][1]
            # sum_I (f_iI W_l) * Y_I = f_i. @ (W_l * Y_I) stacked over I: one constant matmul
            nuc_weights = nuclear_weights(params["filters"]["nuc"]["heads"][l], layer["nuclei"])
            z_nuc = f_nuc.reshape(n, -1) @ nuc_weights.reshape(-1, dim)
            pre = pre + z_nuc @ upd["w"][2]
            x = x + activation(pre)
        return x

    return init, apply
