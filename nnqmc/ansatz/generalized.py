"""The generalized PauliNet ansatz: PauliNet's HF/CASSCF start, FermiNet's freedom.

    psi(r) = sum_p c_p det[M_p(r)] * exp(gamma(r) + J(r)),

    M_p[i, mu] = phi_mu(r_i) B_{p i mu} + sum_I a_{p i mu I} e_{p mu I}(|r_i - R_I|),

with HF/CASSCF orbitals phi (nuclear cusps corrected), the fixed e–e cusp gamma, and the
embedding x_i of :mod:`nnqmc.ansatz.embedding` (with the electron–nucleus vectors
r_i - R_I as extra inputs) feeding J = sum_i MLP_J(x_i) and, per spin of electron i, heads
for the log-backflow g and the envelope amplitudes a:

- ``full_determinant``: one (n x n) matrix per determinant, up then down orbitals as
  columns, B = exp(g) where the spins of electron and orbital agree, B = g across; at the
  start block-diagonal (the HF/CASSCF determinant). Otherwise two spin blocks, B = exp(g).
- ``envelopes``: learned orbital corrections a * e with exponential envelopes per nucleus

      e(d) = exp(-Z d + (Z - zeta) d^2 / (1/Z + d)),

  which has the slope -Z e at d = 0 (so the correction obeys the same nuclear cusp as the
  orbitals and the local energy stays finite there) and decays as exp(-zeta d) beyond
  ~1/Z, with zeta > 0 learned per determinant, orbital and nucleus. At another nucleus
  the envelope is smooth and the cusp holds up to its (small) value there.
- ``copies``: each HF/CASSCF determinant ``copies`` times, copy k with its occupied
  orbitals mixed by a fixed rotation U_k (det U_k = +1): the same determinant with its own
  backflow and envelopes to learn; c_p = c_q / copies.
- ``core_inputs``: the embedding's r_i - R_I inputs also at each nucleus's 1/Z scale
  (:func:`nnqmc.ansatz.embedding.electron_nuclear_inputs`).

All heads start at zero, so the untrained ansatz is exactly the HF/CASSCF wavefunction
times exp(gamma) (J = 0, B = 1 on the spin blocks, 0 across, no corrections).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..hamiltonian import positions
from . import Ansatz
from .determinants import combine_determinants, log_sum_determinants, slogdet
from .embedding import activation, init_mlp, make_embedding, mlp
from .embedding_laplacian import kinetic_jet_from_embedding, make_embedding_laplacian
from .jastrow import electron_cusp
from .paulinet import NETWORK_OPTIONS
from .slater import SlaterPart

Params = Any

__all__ = ["generalized_from_slater", "generalized_from_options", "copy_rotations", "envelope"]

INITIAL_ZETA = 1.0


def copy_rotations(n: int, copies: int, seed: int = 0) -> np.ndarray:
    """(copies, n, n) fixed rotations, the first the identity, all with determinant +1."""
    rng = np.random.default_rng(seed)
    out = [np.eye(n)]
    for _ in range(copies - 1):
        q, r = np.linalg.qr(rng.normal(size=(n, n)) if n else np.zeros((0, 0)))
        q = q * np.sign(np.diag(r))[None, :] if n else q
        if n and np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        out.append(q)
    return np.stack(out) if n else np.zeros((copies, 0, 0))


def envelope(d: jax.Array, z: jax.Array, zeta: jax.Array) -> jax.Array:
    """exp(-Z d + (Z - zeta) d^2 / (1/Z + d)): slope -Z at d = 0, decay exp(-zeta d);
    for Z = 0 (an atom with an effective core potential: no cusp) exp(-zeta d^2 / (1 + d))."""
    scale = jnp.where(z > 0, 1.0 / jnp.where(z > 0, z, 1.0), 1.0)
    return jnp.exp(-z * d + (z - zeta) * d * d / (scale + d))


def _softplus_inverse(x: float) -> float:
    return float(np.log(np.expm1(x)))


def generalized_from_slater(
    slater: SlaterPart,
    coords: np.ndarray,
    charges: np.ndarray,
    *,
    embedding_dim: int = 32,
    layers: int = 3,
    n_rbf: int = 16,
    cutoff: float = 10.0,
    jastrow_layers: int = 3,
    backflow_layers: int = 3,
    full_determinant: bool = False,
    envelopes: bool = True,
    en_vectors: bool = True,
    core_inputs: bool = False,
    copies: int = 1,
    ee_cusp: bool = True,
    ee_cusp_range: float = 1.0,
    dtype=jnp.float64,
) -> Ansatz:
    """The generalized ansatz on a determinant part (see the module docstring).

    ``apply(params, r) -> (sign, log|psi|)`` for one walker ``r`` of shape (n_elec, 3).
    """
    if jastrow_layers < 1 or backflow_layers < 1:
        raise ValueError("jastrow_layers and backflow_layers must be >= 1")
    if copies < 1:
        raise ValueError("copies must be >= 1")
    n_up, n_down = slater.n_up, slater.n_down
    n = n_up + n_down
    coords_np = positions(coords)
    charges_np = np.asarray(charges, dtype=np.float64).reshape(-1)
    n_atoms = len(coords_np)
    envelopes = envelopes and n_atoms > 0
    en_vectors = en_vectors and n_atoms > 0
    n_ref = slater.ci.shape[0]
    n_det = n_ref * copies
    multi = n_det > 1
    # determinant p = (q, k): reference q, copy k
    occ_up = np.repeat(slater.occ_up, copies, axis=0)
    occ_down = np.repeat(slater.occ_down, copies, axis=0)
    ci0 = np.repeat(np.asarray(slater.ci, np.float64), copies) / copies
    rot_up = np.tile(copy_rotations(n_up, copies, seed=1), (n_ref, 1, 1))
    rot_down = np.tile(copy_rotations(n_down, copies, seed=2), (n_ref, 1, 1))
    rotate = copies > 1
    # columns each electron's heads fill: all n in a full determinant, own spin otherwise
    cols_up = n if full_determinant else n_up
    cols_down = n if full_determinant else n_down
    per_col = 1 + (n_atoms if envelopes else 0)
    dim = embedding_dim
    en_scales = np.maximum(charges_np, 1.0) if en_vectors and core_inputs else None
    emb_init, emb_apply = make_embedding(
        n_up,
        n_down,
        n_atoms,
        dim=dim,
        layers=layers,
        n_rbf=n_rbf,
        cutoff=cutoff,
        en_vectors=en_vectors,
        en_scales=en_scales,
        dtype=dtype,
    )
    emb_jet = make_embedding_laplacian(
        n_up, n_down, n_rbf=n_rbf, cutoff=cutoff, en_scales=en_scales
    )

    def init(key: jax.Array) -> Params:
        k_emb, k_jas, k_trunk, k_up, k_dn = jax.random.split(key, 5)
        trunk = [dim] * backflow_layers
        params: dict[str, Any] = {
            "embedding": emb_init(k_emb),
            "jastrow": init_mlp(k_jas, [dim] * jastrow_layers + [1], zero_last=True, dtype=dtype),
            "orbitals": {
                "trunk": init_mlp(k_trunk, trunk, dtype=dtype) if backflow_layers > 1 else [],
                "up": init_mlp(k_up, [dim, n_det * cols_up * per_col], zero_last=True, dtype=dtype),
                "down": init_mlp(
                    k_dn, [dim, n_det * cols_down * per_col], zero_last=True, dtype=dtype
                ),
            },
        }
        if envelopes:
            zeta = jnp.full((n_det, n, n_atoms), _softplus_inverse(INITIAL_ZETA), dtype)
            params["zeta"] = zeta
        if multi:
            params["ci"] = jnp.asarray(ci0, dtype)
        return params

    def head_outputs(params: Params, x: jax.Array):
        """Per electron: g (n_det, cols) and a (n_det, cols, n_atoms) for each spin."""
        orb = params["orbitals"]
        hidden = activation(mlp(orb["trunk"], x)) if orb["trunk"] else x
        out_up = mlp(orb["up"], hidden[:n_up]).reshape(n_up, n_det, cols_up, per_col)
        out_dn = mlp(orb["down"], hidden[n_up:]).reshape(n_down, n_det, cols_down, per_col)
        return out_up, out_dn

    def orbitals(r: jax.Array, spin: str) -> jax.Array:
        """The ``spin`` HF orbitals of each determinant at electrons ``r`` (m, 3), rotated
        per copy: (n_det, m, n_spin)."""
        if r.shape[0] == 0:
            return jnp.zeros((n_det, 0, n_up if spin == "up" else n_down), r.dtype)
        if spin == "up":
            phi = jnp.moveaxis(slater.orbitals_up(r)[:, occ_up], 1, 0)
            return phi @ jnp.asarray(rot_up, r.dtype) if rotate else phi
        phi = jnp.moveaxis(slater.orbitals_down(r)[:, occ_down], 1, 0)
        return phi @ jnp.asarray(rot_down, r.dtype) if rotate else phi

    def corrections(params: Params, r: jax.Array, amplitudes: jax.Array, columns: slice):
        """sum_I a_{p i mu I} e_{p mu I}(d_iI) for electrons ``r`` (m, 3) and orbital
        ``columns``; ``amplitudes`` (m, n_det, cols, n_atoms). Returns (n_det, m, cols)."""
        d = jnp.sqrt(jnp.sum((r[:, None] - coords_j(r)) ** 2, axis=-1) + 1e-30)  # (m, I)
        zeta = jax.nn.softplus(params["zeta"][:, columns]).astype(r.dtype)  # (n_det, cols, I)
        z = jnp.asarray(charges_np, r.dtype)
        env = envelope(d[:, None, None, :], z, zeta[None])  # (m, n_det, cols, I)
        return jnp.moveaxis(jnp.sum(amplitudes * env, axis=-1), 1, 0)

    def coords_j(r):
        return jnp.asarray(coords_np, r.dtype)

    def block(params, r, out, phi, columns, own: bool):
        """Matrix entries (n_det, m, cols) of electrons ``r`` against orbital ``columns``."""
        g = jnp.moveaxis(out[..., 0], 1, 0)
        factor = jnp.exp(g) if own else g
        entries = phi * factor
        if envelopes:
            entries = entries + corrections(params, r, out[..., 1:], columns)
        return entries

    def from_embedding(params: Params, r: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        jastrow = jnp.sum(mlp(params["jastrow"], x))
        out_up, out_dn = head_outputs(params, x)
        r_up, r_dn = r[:n_up], r[n_up:]
        ci = params["ci"] if multi else jnp.asarray(ci0, r.dtype)
        up_cols, dn_cols = slice(0, n_up), slice(n_up, n)
        if full_determinant:
            rows = (("up", r_up, out_up), ("down", r_dn, out_dn))
            cols = (("up", up_cols), ("down", dn_cols))
            matrix = jnp.concatenate(
                [
                    jnp.concatenate(
                        [
                            block(params, r_s, out[:, :, c], orbitals(r_s, o), c, s == o)
                            for o, c in cols
                        ],
                        axis=-1,
                    )
                    for s, r_s, out in rows
                ],
                axis=1,
            )
            sign, log = combine_determinants(*slogdet(matrix), ci)
        else:
            m_up = block(params, r_up, out_up, orbitals(r_up, "up"), up_cols, True)
            m_dn = block(params, r_dn, out_dn, orbitals(r_dn, "down"), dn_cols, True)
            sign, log = log_sum_determinants(m_up, m_dn, ci)
        log = log + jastrow
        if ee_cusp:
            log = log + electron_cusp(r, n_up, n_down, ee_cusp_range)
        return sign, log

    def apply(params: Params, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        return from_embedding(params, r, emb_apply(params["embedding"], r, coords_j(r)))

    def kinetic_jet(params: Params, r: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Forward Laplacian: the embedding's jet by hand, folx for orbitals and heads."""
        jet = emb_jet(params["embedding"], r, coords_j(r))
        return kinetic_jet_from_embedding(lambda y, z: from_embedding(params, y, z)[1], r, jet)

    return Ansatz(init, apply, n_up, n_down, kinetic_jet)


def generalized_from_options(
    slater: SlaterPart, coords: np.ndarray, charges: np.ndarray, options: Any, dtype=jnp.float64
) -> Ansatz:
    """:func:`generalized_from_slater` with the sizes and switches of an ``[ansatz]``
    section (:class:`nnqmc.config.AnsatzConfig`)."""
    switches = (
        "full_determinant", "envelopes", "en_vectors", "core_inputs", "copies", "ee_cusp",
        "ee_cusp_range",
    )  # fmt: skip
    chosen = {name: getattr(options, name) for name in NETWORK_OPTIONS + switches}
    return generalized_from_slater(slater, coords, charges, dtype=dtype, **chosen)
