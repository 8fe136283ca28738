"""Forces on the nuclei from VMC samples, F_I = -dE/dR_I (hartree/bohr).

Hellmann–Feynman: F_I = Z_I sum_i <(r_i - R_I)/|r_i - R_I|^3> + F_I^nn, whose estimator has
infinite variance (the 1/r^2 singularity). Zero-variance (Assaraf & Caffarel, J. Chem.
Phys. 119, 10536 (2003)): add -(H - E_L)(Q psi)/psi, which has zero mean for any psi, with

    Q_I(r) = Z_I sum_i (r_i - R_I)/|r_i - R_I|.

Since -1/2 nabla^2 Q_I = Z_I sum_i d_i/|d_i|^3 (d_i = r_i - R_I, u_i = d_i/|d_i|), the
singular terms cancel and

    F_I^ZV = Z_I sum_i [grad_i log|psi| - u_i (u_i . grad_i log|psi|)] / |d_i|,

an estimator with a 1/r singularity only (finite variance). Zero bias: for an approximate psi
the derivative of the variational energy has the Pulay term -2 <(E_L - E) d log|psi|/dR_I>:

    F_I = <F_I^ZV> - 2 (<E_L g_I> - <E_L><g_I>) + F_I^nn.

``g_I`` is the exact d log|psi|/dR_I at frozen parameters, MO and cusp coefficients
(:data:`FORCE_TERMS`), damped near nodes by f(d/eps) = 9x^2 - 15x^4 + 7x^6 (Pathak & Wagner,
AIP Adv. 10, 085213 (2020); d = 1/|grad log|psi||, eps = :data:`NODE_EPSILON`); with
``pulay = False`` it is approximated by ``Q_I``. ECP atoms (:func:`ecp_force`) have a bounded
potential and take its Hellmann–Feynman force directly, the nonlocal term differentiated
through its quadrature points (docs/ecp.md).

The per-walker quantities are observables of :func:`nnqmc.evaluate`; :func:`forces_from_records`
combines the per-step averages into the force and its blocking error.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..ecp import nonlocal_elements, quadrature, radial
from ..estimate import estimate
from ..hamiltonian import Hamiltonian, nuclei, positions
from ..steps import NuclearObservable, WaveObservable

# Observable names in eval.h5 (per step: walker averages, each (n_atoms, 3)).
FORCE_ZV = "force_zv"
FORCE_Q = "force_q"
FORCE_EQ = "force_eq"
# (3, n_atoms, 3) per step: F^HF (ZV for all-electron atoms), g and E_L g, with g the
# regularised d log|psi|/dR
FORCE_TERMS = "force_terms"
NODE_EPSILON = 0.01  # bohr; the node regularisation's width in d = 1/|grad log|psi||


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


def node_factor(grad_log_psi: jax.Array, epsilon: float = NODE_EPSILON) -> jax.Array:
    """Pathak–Wagner f(d/eps) with d = 1/|grad log|psi|| (all electrons): 1 away from the
    nodes, 9 (d/eps)^2 to leading order as d -> 0."""
    norm = jnp.sqrt(jnp.sum(grad_log_psi**2))
    x = 1.0 / jnp.maximum(epsilon * norm, 1e-30)
    x2 = jnp.minimum(x, 1.0) ** 2
    return jnp.where(x < 1.0, x2 * (9.0 - 15.0 * x2 + 7.0 * x2 * x2), 1.0)


def force_terms(
    log_psi_at: Any, coords: jax.Array, r: jax.Array, e_local: jax.Array, charges: jax.Array
) -> jax.Array:
    """(F^ZV, g, E_L g) of one walker, shape (3, n_atoms, 3): ``g`` = d log|psi|/dR at the
    nuclei ``coords``, node-regularised (:func:`node_factor`); one backward pass gives both
    d/dR and the electrons' gradient."""
    grad_nuclei, grad_r = jax.grad(log_psi_at, argnums=(0, 1))(coords, r)
    g = grad_nuclei.reshape(-1, 3) * node_factor(grad_r)
    zv = zv_force(grad_r, r, charges, coords.reshape(-1, 3))
    return jnp.stack([zv, g, e_local * g])


def ecp_potential(
    ecp: dict[str, Any], charges: jax.Array, coords: jax.Array, r: jax.Array
) -> jax.Array:
    """``sum_i sum_{I in ECP} (-Z_I/|r_i - R_I| + v_loc,I(|r_i - R_I|))`` of one walker:
    the ECP atoms' attraction and local channel together, whose singularities cancel
    (distances kept off zero, so that the gradient stays finite)."""
    atoms = ecp["atoms"]
    centres = coords.reshape(-1, 3)[atoms]
    d = r[:, None, :] - centres[None, :, :]
    dist = jnp.sqrt(jnp.sum(d * d, axis=-1) + jnp.finfo(r.dtype).tiny)
    local = radial(jnp.asarray(ecp["local"], r.dtype)[None], dist)  # (n_elec, n_ecp)
    return jnp.sum(local - charges[atoms][None, :] / dist)


def ecp_force(
    signed_log_psi: Any,
    ecp: dict[str, Any],
    points: np.ndarray,
    weights: np.ndarray,
    charges: jax.Array,
    coords: jax.Array,
    r: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """The Hellmann–Feynman force of the ECP atoms on one walker, shape (n_atoms, 3) (zero
    rows for the others): ``-d/dR`` of :func:`ecp_potential` plus ``(V_nl psi)/psi`` with
    psi (``signed_log_psi``, its nuclei fixed) and the quadrature's rotation (``key``)
    held fixed."""

    def energy(c: jax.Array) -> jax.Array:
        elements, _ = nonlocal_elements(signed_log_psi, ecp, c, r, key, points, weights)
        return ecp_potential(ecp, charges, c, r) + jnp.sum(elements)

    return -jax.grad(energy)(coords.reshape(-1, 3))


def force_observables(
    charges: np.ndarray,
    coords: np.ndarray,
    pulay: bool = True,
    ecp: dict[str, Any] | None = None,
    ecp_points: int = 12,
) -> dict[str, Any]:
    """The observables :func:`forces_from_records` needs. With ``pulay`` (a molecular run:
    the wavefunction as a function of the nuclei), :data:`FORCE_TERMS` and the exact
    zero-bias term, at the run's own nuclei (``coords`` is not used); without, F^ZV, Q and
    E_L Q per walker at ``coords`` (Q approximates d log|psi|/dR).

    With ``ecp`` (:func:`nnqmc.ecp.ecp_arrays`, possibly traced; ``charges`` then Z_eff)
    the ECP atoms' Hellmann–Feynman force is :func:`ecp_force` (by an ``ecp_points``
    quadrature), the others' F^ZV; it needs ``pulay``."""
    charges_np = np.asarray(charges, np.float64)
    coords_np = positions(coords)  # a JAX array when traced (one program for all geometries)

    if ecp is not None:
        if not pulay:
            raise ValueError("forces with effective core potentials need pulay = True")
        nodes, weights = quadrature(ecp_points)

        def ecp_terms(log_psi_at, centres, r, e_local, *, signed_log_psi, key):
            c = jnp.asarray(centres, r.dtype).reshape(-1, 3)
            z = jnp.asarray(charges_np, r.dtype)
            all_electron = z.at[jnp.asarray(ecp["atoms"])].set(0.0)
            out = force_terms(log_psi_at, c, r, e_local, all_electron)
            hf = ecp_force(signed_log_psi, ecp, nodes, weights, z, c, r, key)
            return out.at[0].add(hf)

        return {FORCE_TERMS: NuclearObservable(ecp_terms, signed=True)}

    if pulay:

        def terms(log_psi_at, centres, r, e_local):
            z = jnp.asarray(charges_np, r.dtype)
            return force_terms(log_psi_at, jnp.asarray(centres, r.dtype), r, e_local, z)

        return {FORCE_TERMS: NuclearObservable(terms)}

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
    """:func:`force_observables` of the Hamiltonian's nuclei and ECPs: as a function of the
    Hamiltonian, the evaluation builds them for each geometry inside one shared program."""
    ecp = getattr(hamiltonian, "ecp", None)
    if ecp is None:
        return force_observables(*nuclei(hamiltonian))
    if not isinstance(ecp, dict):
        raise ValueError("forces need the nonlocal term as ECP arrays (nnqmc.ecp.ecp_arrays)")
    base = getattr(hamiltonian, "base", hamiltonian)  # an ExtendedHamiltonian's own
    points = getattr(hamiltonian, "ecp_points", getattr(base, "ecp_points", 12))
    return force_observables(*nuclei(hamiltonian), ecp=ecp, ecp_points=points)


def forces_from_records(
    records: dict[str, np.ndarray],
    charges: np.ndarray,
    coords: np.ndarray,
    zero_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Force (n_atoms, 3) and its standard error from per-step averages (eval.h5), with
    the exact zero-bias term where the records hold :data:`FORCE_TERMS`, else its ``Q``
    approximation.

    The zero-bias term uses the mean energy over all steps; the error is from a blocking
    analysis of each component's per-step series.
    """
    if FORCE_TERMS in records:
        terms = np.asarray(records[FORCE_TERMS], np.float64)
        zv, g, eg = terms[:, 0], terms[:, 1], terms[:, 2]
    else:
        zv = np.asarray(records[FORCE_ZV], np.float64)
        g, eg = np.asarray(records[FORCE_Q], np.float64), np.asarray(records[FORCE_EQ], np.float64)
    series = zv
    if zero_bias:
        e_mean = float(np.mean(np.asarray(records["energy"], np.float64)))
        # per step: -2 (<E_L g>_t - E <g>_t); its mean is -2 cov(E_L, g) over all samples
        series = zv - 2.0 * (eg - e_mean * g)
    n_steps, shape = series.shape[0], series.shape[1:]
    flat = series.reshape(n_steps, -1)
    parts = [estimate(flat[:, k]) for k in range(flat.shape[1])]
    mean = np.array([p.mean for p in parts]).reshape(shape)
    error = np.array([p.error for p in parts]).reshape(shape)
    return mean + nuclear_forces(charges, coords), error
