"""Forces on the nuclei from VMC samples, F_I = -dE/dR_I (hartree/bohr).

Hellmann–Feynman: F_I = Z_I sum_i <(r_i - R_I)/|r_i - R_I|^3> + F_I^nn, whose estimator has
infinite variance (the 1/r^2 singularity). Zero-variance (Assaraf & Caffarel, J. Chem.
Phys. 119, 10536 (2003)): add -(H - E_L)(Q psi)/psi, which has zero mean for any psi, with

    Q_I(r) = Z_I sum_i (r_i - R_I)/|r_i - R_I|.

Since -1/2 nabla^2 Q_I = Z_I sum_i d_i/|d_i|^3 (d_i = r_i - R_I, u_i = d_i/|d_i|), the
singular terms cancel and

    F_I^ZV = Z_I sum_i [grad_i log|psi| - u_i (u_i . grad_i log|psi|)] / |d_i|,

an estimator with a 1/r singularity only (finite variance). Zero bias: for an approximate psi
the exact derivative of the variational energy has the extra term
-2 <(E_L - E) d log psi/dR_I>, and d log psi/dR_I ~ Q_I near the nuclear cusps, so

    F_I^ZVZB = <F_I^ZV> - 2 (<E_L Q_I> - <E_L><Q_I>) + F_I^nn.

The per-walker quantities are observables of :func:`nnqmc.evaluate`; :func:`forces_from_records`
combines the per-step averages into the force and its blocking error.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..estimate import estimate
from ..hamiltonian import Hamiltonian, nuclei, positions
from ..train import WaveObservable

# Observable names in eval.h5 (per step: walker averages, each (n_atoms, 3)).
FORCE_ZV = "force_zv"
FORCE_Q = "force_q"
FORCE_EQ = "force_eq"


def nuclear_forces(charges: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """F_I^nn = sum_{J != I} Z_I Z_J (R_I - R_J)/|R_I - R_J|^3, shape (n_atoms, 3)."""
    z, c = np.asarray(charges, np.float64), np.asarray(coords, np.float64)
    d = c[:, None, :] - c[None, :, :]
    dist = np.linalg.norm(d, axis=-1)
    np.fill_diagonal(dist, np.inf)
    return np.sum((z[:, None] * z[None, :] / dist**3)[..., None] * d, axis=1)


def _unit_vectors(r: jax.Array, coords: jax.Array) -> tuple[jax.Array, jax.Array]:
    """u (n_atoms, n_elec, 3) from each nucleus to each electron and the distances."""
    d = r[None, :, :] - coords[:, None, :]
    dist = jnp.sqrt(jnp.sum(d * d, axis=-1))
    return d / dist[..., None], dist


def q_function(r: jax.Array, charges: jax.Array, coords: jax.Array) -> jax.Array:
    """Q_I = Z_I sum_i (r_i - R_I)/|r_i - R_I| of one walker, shape (n_atoms, 3)."""
    u, _ = _unit_vectors(r, coords)
    return charges[:, None] * jnp.sum(u, axis=1)


def zv_force(
    grad_log_psi: jax.Array, r: jax.Array, charges: jax.Array, coords: jax.Array
) -> jax.Array:
    """F_I^ZV of one walker (electrons only), shape (n_atoms, 3); ``grad_log_psi``
    (n_elec, 3) is the gradient of log|psi| at ``r``."""
    u, dist = _unit_vectors(r, coords)
    g = grad_log_psi[None, :, :]
    along = jnp.sum(u * g, axis=-1, keepdims=True)
    return charges[:, None] * jnp.sum((g - u * along) / dist[..., None], axis=1)


def force_observables(charges: np.ndarray, coords: np.ndarray) -> dict[str, Any]:
    """The observables :func:`forces_from_records` needs: F^ZV, Q and E_L Q per walker."""
    charges_np = np.asarray(charges, np.float64)
    coords_np = positions(coords)  # a JAX array when traced (one program for all geometries)

    def zv(log_psi, r, e_local):
        del e_local
        c, z = jnp.asarray(coords_np, r.dtype), jnp.asarray(charges_np, r.dtype)
        return zv_force(jax.grad(log_psi)(r), r, z, c)

    def q(r):
        return q_function(r, jnp.asarray(charges_np, r.dtype), jnp.asarray(coords_np, r.dtype))

    def eq(log_psi, r, e_local):
        del log_psi
        return e_local * q(r)

    return {FORCE_ZV: WaveObservable(zv), FORCE_Q: q, FORCE_EQ: WaveObservable(eq)}


def nuclear_force_observables(hamiltonian: Hamiltonian) -> dict[str, Any]:
    """:func:`force_observables` of the Hamiltonian's nuclei: as a function of the
    Hamiltonian, the evaluation builds them for each geometry inside one shared program."""
    return force_observables(*nuclei(hamiltonian))


def forces_from_records(
    records: dict[str, np.ndarray],
    charges: np.ndarray,
    coords: np.ndarray,
    zero_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Force (n_atoms, 3) and its standard error from per-step averages (eval.h5).

    The zero-bias term uses the mean energy over all steps; the error is from a blocking
    analysis of each component's per-step series.
    """
    zv = np.asarray(records[FORCE_ZV], np.float64)
    series = zv
    if zero_bias:
        energy = np.asarray(records["energy"], np.float64)
        e_mean = float(np.mean(energy))
        eq = np.asarray(records[FORCE_EQ], np.float64)
        q = np.asarray(records[FORCE_Q], np.float64)
        # per step: -2 (<E_L Q>_t - E <Q>_t); its mean is -2 cov(E_L, Q) over all samples
        series = zv - 2.0 * (eq - e_mean * q)
    n_steps, shape = series.shape[0], series.shape[1:]
    flat = series.reshape(n_steps, -1)
    parts = [estimate(flat[:, k]) for k in range(flat.shape[1])]
    mean = np.array([p.mean for p in parts]).reshape(shape)
    error = np.array([p.error for p in parts]).reshape(shape)
    return mean + nuclear_forces(charges, coords), error
