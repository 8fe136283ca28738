"""Gaussian atomic orbitals, molecular orbitals and a nuclear cusp correction.

Atomic orbitals follow PySCF/libcint exactly (order and normalisation of
``mol.eval_gto("GTOval_sph")``).  A contracted spherical AO on centre ``R`` is

    chi_{l m}(r) = sum_p c_p exp(-a_p |d|^2) * sum_t U[t, m] x^i y^j z^k,   d = r - R,

with ``c_p`` PySCF's libcint coefficients (radial normalisation included), ``t``
running over the Cartesian monomials ``x^i y^j z^k`` (i + j + k = l) in PySCF
order and ``U = pyscf.gto.cart2sph(l)``.  For l >= 2 ``U`` is libcint's own
transformation; for l = 0, 1 it carries libcint's extra factors ``1/sqrt(4 pi)``
and ``sqrt(3/(4 pi))`` (checked against ``GTOval_sph`` in the tests).  Only
``|d|^2`` enters, so AOs are smooth (all derivatives finite) on the nuclei.

The cusp correction (after Ma, Towler, Drummond and Needs, J. Chem. Phys. 122,
224322 (2005), simplified) replaces, for each nucleus A and MO k inside a sphere
of radius ``rc_A``, the s-part ``phi_s`` of the MO centred on A by
``sgn * exp(p(r))`` with a quartic ``p``; see :func:`fit_cusps`.

All set-up is done once in NumPy (float64); the returned functions are pure
``jax.numpy`` and work under ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .scf import GaussianBasis

__all__ = [
    "AOTables",
    "CuspParams",
    "ao_tables",
    "ao_function",
    "eval_aos",
    "eval_mos",
    "fit_cusps",
    "cusp_radii",
    "build_orbitals",
    "orbital_arrays",
    "orbitals_from_arrays",
]

# --------------------------------------------------------------------------------------
# Atomic orbitals
# --------------------------------------------------------------------------------------


def _cart_powers(l: int) -> np.ndarray:
    """Exponents (i, j, k) of the Cartesian monomials of degree ``l`` in PySCF order."""
    return np.array(
        [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)],
        dtype=np.int32,
    )


def _cart2sph(l: int) -> np.ndarray:
    """libcint's Cartesian -> real-spherical matrix ``(n_cart, 2l+1)``, incl. s/p factors."""
    from pyscf import gto

    return np.asarray(gto.cart2sph(l), dtype=np.float64)


@dataclass(frozen=True)
class _LGroup:
    """All contracted functions of one angular momentum ``l`` (primitives zero-padded)."""

    l: int
    center: np.ndarray  # (n_fn,) int, atom of each contracted function
    exponents: np.ndarray  # (n_fn, n_prim)
    coeffs: np.ndarray  # (n_fn, n_prim), zero for padding
    powers: np.ndarray  # (n_cart, 3) int
    c2s: np.ndarray  # (n_cart, 2l+1)


@dataclass(frozen=True)
class AOTables:
    """NumPy constants for AO evaluation: per-l groups and the gather into PySCF order.

    ``perm[i]`` is the column of the concatenated group output (groups by increasing
    ``l``, each flattened as (function, m)) that holds PySCF's AO ``i``.
    """

    centers: np.ndarray  # (n_atoms, 3)
    groups: tuple[_LGroup, ...]
    perm: np.ndarray  # (n_ao,)
    ao_center: np.ndarray  # (n_ao,) atom of each AO
    ao_l: np.ndarray  # (n_ao,) angular momentum of each AO


def ao_tables(basis: GaussianBasis) -> AOTables:
    """Group the contracted functions of ``basis`` by ``l`` (NumPy set-up, done once)."""
    entries: dict[int, list[tuple[int, np.ndarray, np.ndarray, int]]] = {}
    ao_center = np.zeros(basis.n_ao, dtype=np.int64)
    ao_l = np.zeros(basis.n_ao, dtype=np.int64)
    offset = 0
    for shell in basis.shells:
        n_m = 2 * shell.l + 1
        coeffs = np.asarray(shell.coeffs, dtype=np.float64).reshape(len(shell.exponents), -1)
        for c in range(coeffs.shape[1]):
            entries.setdefault(shell.l, []).append(
                (shell.center, np.asarray(shell.exponents, np.float64), coeffs[:, c], offset)
            )
            ao_center[offset : offset + n_m] = shell.center
            ao_l[offset : offset + n_m] = shell.l
            offset += n_m
    if offset != basis.n_ao:
        raise ValueError(f"shells give {offset} AOs but basis.n_ao is {basis.n_ao}")

    groups = []
    perm = np.full(basis.n_ao, -1, dtype=np.int64)
    column = 0
    for l in sorted(entries):
        fns = entries[l]
        n_prim = max(len(e[1]) for e in fns)
        exps = np.ones((len(fns), n_prim))  # padded exponents are harmless: coeff 0
        coefs = np.zeros((len(fns), n_prim))
        for f, (_, e, c, ao0) in enumerate(fns):
            exps[f, : len(e)] = e
            coefs[f, : len(c)] = c
            for m in range(2 * l + 1):
                perm[ao0 + m] = column + f * (2 * l + 1) + m
        column += len(fns) * (2 * l + 1)
        groups.append(
            _LGroup(
                l=l,
                center=np.array([e[0] for e in fns], dtype=np.int64),
                exponents=exps,
                coeffs=coefs,
                powers=_cart_powers(l),
                c2s=_cart2sph(l),
            )
        )
    assert np.all(perm >= 0)
    return AOTables(
        centers=np.asarray(basis.centers, dtype=np.float64).reshape(-1, 3),
        groups=tuple(groups),
        perm=perm,
        ao_center=ao_center,
        ao_l=ao_l,
    )


def _aos(tables: AOTables, r, xp, dtype, centers=None):
    """AO values ``(n, n_ao)`` using array module ``xp`` (``numpy`` or ``jax.numpy``).

    ``d = r - R_A`` per atom (``centers``, default ``tables.centers``); angular parts
    ``sum_t U[t,m] d^powers[t]`` are built per atom and l, radial parts
    ``sum_p c_p exp(-a_p |d|^2)`` per contracted function.
    """

    def const(x):
        return xp.asarray(x, dtype=dtype)

    centers = const(tables.centers) if centers is None else centers
    d = r[:, None, :] - centers[None]  # (n, n_atoms, 3)
    r2 = xp.sum(d * d, axis=-1)  # (n, n_atoms)
    max_l = max(g.l for g in tables.groups)
    pows = [xp.ones_like(d)]
    for _ in range(max_l):
        pows.append(pows[-1] * d)
    pows = xp.stack(pows)  # (max_l + 1, n, n_atoms, 3)
    blocks = []
    for g in tables.groups:
        r2_fn = r2[:, g.center]  # (n, n_fn)
        radial = xp.sum(
            const(g.coeffs) * xp.exp(-const(g.exponents) * r2_fn[..., None]), axis=-1
        )  # (n, n_fn)
        if g.l == 0:
            ang = xp.broadcast_to(const(g.c2s[0, 0]), r2_fn.shape)[..., None]
        else:
            px, py, pz = (g.powers[:, i] for i in range(3))
            mono = pows[px, ..., 0] * pows[py, ..., 1] * pows[pz, ..., 2]  # (nc, n, nA)
            ang_atom = xp.einsum("tna,tm->nam", mono, const(g.c2s))  # (n, n_atoms, 2l+1)
            ang = ang_atom[:, g.center]  # (n, n_fn, 2l+1)
        blocks.append((radial[..., None] * ang).reshape(r.shape[0], -1))
    return xp.concatenate(blocks, axis=1)[:, tables.perm]


def ao_function(basis: GaussianBasis, dtype=jnp.float64) -> Callable[[jax.Array], jax.Array]:
    """Pure ``r (n, 3) -> (n, n_ao)`` AO evaluator with constants in ``dtype``."""
    tables = ao_tables(basis)

    def aos(r: jax.Array) -> jax.Array:
        return _aos(tables, jnp.asarray(r, dtype), jnp, dtype)

    return aos


def eval_aos(basis: GaussianBasis, r: jax.Array) -> jax.Array:
    """Spherical AO values ``(n, n_ao)`` at ``r (n, 3)``, equal to PySCF ``GTOval_sph``.

    Set-up runs at every call (trace time under ``jit``); reuse :func:`ao_function`
    in loops.
    """
    r = jnp.asarray(r)
    return ao_function(basis, r.dtype)(r)


def eval_mos(basis: GaussianBasis, mo_coeff: np.ndarray, r: jax.Array) -> jax.Array:
    """Uncorrected MOs ``phi_k(r) = sum_mu chi_mu(r) C[mu, k]``, shape ``(n, n_mo)``."""
    aos = eval_aos(basis, r)
    return aos @ jnp.asarray(mo_coeff, aos.dtype)


def _aos_numpy(tables: AOTables, r: np.ndarray) -> np.ndarray:
    return _aos(tables, np.asarray(r, np.float64).reshape(-1, 3), np, np.float64)


# --------------------------------------------------------------------------------------
# Nuclear cusp correction
# --------------------------------------------------------------------------------------

CUSP_RC_Z = 0.5  # rc_A = CUSP_RC_Z / Z_A ...
CUSP_RC_NEIGHBOUR = 0.4  # ... but at most this fraction of the nearest-nucleus distance
CUSP_REL_TOL = 1e-7  # correct (A, k) only if |phi_s(0)| > max(REL * max_B |phi_k(R_B)|,
CUSP_ABS_TOL = 1e-8  #                                       ABS)
CUSP_MAX_GROWTH = 10.0  # reject fits with max|exp p| > this * max(|phi_s|, |phi(0)|) on [0, rc]


@dataclass(frozen=True)
class CuspParams:
    """Fitted cusp corrections, NumPy float64.

    ``alpha[A, k]`` are the coefficients of ``p(r) = sum_i alpha_i r^i`` (zero where
    ``mask[A, k]`` is False, i.e. the pair is not corrected), ``sign[A, k]`` the sign of
    ``phi_s`` and ``rc[A]`` the correction radius.  ``s_weights[A]`` are the s-AO MO
    coefficients restricted to the s-AOs on atom A (``(n_s, n_mo)``, zero elsewhere),
    with ``s_index`` the AO columns of all s-AOs.
    """

    rc: np.ndarray  # (n_atoms,)
    alpha: np.ndarray  # (n_atoms, n_mo, 5)
    sign: np.ndarray  # (n_atoms, n_mo)
    mask: np.ndarray  # (n_atoms, n_mo) bool
    s_index: np.ndarray  # (n_s,)
    s_weights: np.ndarray  # (n_atoms, n_s, n_mo)


def cusp_radii(centers: np.ndarray, charges: np.ndarray, radius: float = CUSP_RC_Z) -> np.ndarray:
    """``rc_A = min(radius / Z_A, 0.4 * min_B |R_A - R_B|)`` (only the first term for atoms)."""
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    charges = np.asarray(charges, np.float64)
    rc = radius / np.where(charges > 0, charges, 1.0)
    if len(centers) > 1:
        dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        rc = np.minimum(rc, CUSP_RC_NEIGHBOUR * dist.min(axis=1))
    return rc


def _s_radial(tables: AOTables, atom: int, mo_coeff: np.ndarray):
    """Primitive expansion ``phi_s(r) = sum_p w[p, k] exp(-a_p r^2)`` of the s-part on ``atom``."""
    group = next((g for g in tables.groups if g.l == 0), None)
    if group is None:
        return np.zeros(0), np.zeros((0, mo_coeff.shape[1]))
    s_aos = np.nonzero(tables.ao_l == 0)[0]  # PySCF order; matches group order
    s_cols = tables.perm[s_aos]  # column within the l=0 block == function index
    exps, weights = [], []
    for ao, f in zip(s_aos, s_cols, strict=True):
        if group.center[f] != atom:
            continue
        exps.append(group.exponents[f])
        weights.append(group.c2s[0, 0] * group.coeffs[f][:, None] * mo_coeff[ao][None, :])
    if not exps:
        return np.zeros(0), np.zeros((0, mo_coeff.shape[1]))
    return np.concatenate(exps), np.concatenate(weights, axis=0)


def _solve_pair(z, rc, x0, eta0, vals, d1, d2):
    """Quartic ``p`` given the corrected s-part at the nucleus ``x0 = sgn e^alpha0``.

    alpha1 = -Z (eta(0) + x0) / x0 (Kato's cusp for the whole MO); alpha2..4 solve
    p(rc) = ln|phi_s(rc)|, p'(rc) = phi_s'/phi_s, p''(rc) = phi_s''/phi_s - (phi_s'/phi_s)^2.
    """
    sgn = np.sign(x0)
    a0 = np.log(abs(x0))
    a1 = -z * (eta0 + x0) / x0
    g1 = d1 / vals
    rhs = np.array([np.log(vals * sgn) - a0 - a1 * rc, g1 - a1, d2 / vals - g1**2])
    mat = np.array(
        [
            [rc**2, rc**3, rc**4],
            [2 * rc, 3 * rc**2, 4 * rc**3],
            [2.0, 6 * rc, 12 * rc**2],
        ]
    )
    return np.concatenate([[a0, a1], np.linalg.solve(mat, rhs)])


def _one_electron_local_energy(alpha, sgn, eta0, z, r):
    """-1/2 lap(phi)/phi - Z/r of ``eta0 + sgn e^p(r)`` (eta taken constant inside rc)."""
    poly = np.polynomial.polynomial
    p, dp, d2p = (poly.polyval(r, poly.polyder(alpha, m)) for m in (0, 1, 2))
    x = sgn * np.exp(p)
    return -0.5 * x * (d2p + dp**2 + 2 * dp / r) / (eta0 + x) - z / r


def _fit_pair(z, rc, phi0_s, phi0, vals, d1, d2, grid_phi_s):
    """Cusp-correcting quartic for one (nucleus, MO) pair, or None if unusable.

    The free value at the nucleus is chosen (after Ma et al. 2005) so that the one-electron
    local energy of the corrected orbital is as flat as possible on (0, rc]: a scan of
    ``x0 = sgn e^alpha0`` over 0.5..1.5 times the basis-set value ``phi_s(0)``, minimising the
    largest deviation from its value at rc. Keeping ``x0 = phi_s(0)`` instead leaves a deep
    local-energy well within ~0.05 bohr of heavier nuclei (E_L ~ -15 Ha for Li).
    """
    eta0 = phi0 - phi0_s
    sgn = np.sign(phi0_s)
    r = np.linspace(rc / 200, rc, 100)
    best, best_cost = None, np.inf
    for factor in np.linspace(0.5, 1.5, 201):
        alpha = _solve_pair(z, rc, factor * phi0_s, eta0, vals, d1, d2)
        if not np.all(np.isfinite(alpha)):
            continue
        e_loc = _one_electron_local_energy(alpha, sgn, eta0, z, r)
        cost = np.max(np.abs(e_loc - e_loc[-1]))
        if np.isfinite(cost) and cost < best_cost:
            best, best_cost = alpha, cost
    if best is None:
        return None
    grid = np.linspace(0.0, rc, grid_phi_s.shape[0])
    fitted = np.exp(np.polynomial.polynomial.polyval(grid, best))
    bound = CUSP_MAX_GROWTH * max(np.abs(grid_phi_s).max(), abs(phi0))
    if not np.all(np.isfinite(fitted)) or fitted.max() > bound:
        return None
    return best


def fit_cusps(
    basis: GaussianBasis,
    mo_coeff: np.ndarray,
    charges: np.ndarray,
    rc: np.ndarray | None = None,
    n_grid: int = 201,
) -> CuspParams:
    """Fit the cusp correction for every nucleus A and MO k (NumPy, float64).

    ``phi_k = eta + phi_s`` near A, with ``phi_s`` the part from s-AOs on A.  For
    ``r = |r_e - R_A| < rc_A``, ``phi_s`` is replaced by ``sgn exp(p(r))`` with alpha0 chosen
    to flatten the one-electron local energy (see ``_fit_pair``), alpha1 from Kato's cusp
    (the spherically averaged slope is ``-Z_A`` times the corrected MO at the nucleus) and
    alpha2..4 matching value, slope and curvature of ``phi_s`` at rc.

    A pair is corrected only if ``phi_s`` keeps one sign on ``[0, rc]`` (checked on
    ``n_grid`` points), ``|phi_s(0)| > max(1e-7 * max_B |phi_k(R_B)|, 1e-8)``, the atom's
    charge is positive (pass 0 for atoms with an effective core potential), and the
    fitted ``exp(p)`` stays below ``10 * max(|phi_s|, |phi_k(R_A)|)`` on ``[0, rc]``.
    """
    mo_coeff = np.asarray(mo_coeff, np.float64)
    charges = np.asarray(charges, np.float64)
    tables = ao_tables(basis)
    n_atoms, n_mo = len(tables.centers), mo_coeff.shape[1]
    rc = cusp_radii(tables.centers, charges) if rc is None else np.asarray(rc, np.float64)

    phi_nuc = _aos_numpy(tables, tables.centers) @ mo_coeff  # (n_atoms, n_mo)
    threshold = np.maximum(CUSP_REL_TOL * np.abs(phi_nuc).max(axis=0), CUSP_ABS_TOL)

    alpha = np.zeros((n_atoms, n_mo, 5))
    sign = np.zeros((n_atoms, n_mo))
    mask = np.zeros((n_atoms, n_mo), dtype=bool)
    s_index = np.nonzero(tables.ao_l == 0)[0]
    s_weights = np.zeros((n_atoms, len(s_index), n_mo))
    for a in range(n_atoms):
        if charges[a] <= 0:  # an ECP atom (bounded potential) or a ghost: no cusp
            continue
        on_a = tables.ao_center[s_index] == a
        s_weights[a, on_a] = mo_coeff[s_index[on_a]]
        exps, w = _s_radial(tables, a, mo_coeff)
        if exps.size == 0:
            continue

        def radial(x, exps=exps, w=w):
            e = np.exp(-exps[None] * np.square(x)[:, None])  # (n_x, n_p)
            x = x[:, None]
            return e @ w, (-2 * exps * x * e) @ w, ((4 * exps**2 * x**2 - 2 * exps) * e) @ w

        grid = np.linspace(0.0, rc[a], n_grid)
        grid_vals = radial(grid)[0]  # (n_grid, n_mo)
        v, d1, d2 = (x[0] for x in radial(np.array([rc[a]])))
        for k in range(n_mo):
            phi0_s = grid_vals[0, k]
            if abs(phi0_s) <= threshold[k]:
                continue
            if not np.all(np.sign(grid_vals[:, k]) == np.sign(phi0_s)):
                continue
            fit = _fit_pair(
                charges[a], rc[a], phi0_s, phi_nuc[a, k], v[k], d1[k], d2[k], grid_vals[:, k]
            )
            if fit is None:
                continue
            alpha[a, k], sign[a, k], mask[a, k] = fit, np.sign(phi0_s), True
    return CuspParams(rc, alpha, sign, mask, s_index, s_weights)


def _safe_norm_sq(r2: jax.Array) -> jax.Array:
    """``sqrt(r2)`` with finite derivatives of all orders at ``r2 = 0`` (double where)."""
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)


def orbital_arrays(
    basis: GaussianBasis,
    mo_coeff: np.ndarray,
    charges: np.ndarray,
    cusp: bool = True,
    *,
    rc: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The geometry-dependent constants of :func:`orbitals_from_arrays` (NumPy, float64):
    the nuclei ``centers``, the MO coefficients ``mo`` and, with ``cusp``, the fitted
    correction of every (nucleus, MO) pair (``rc``, ``alpha``, ``sign``, ``mask``,
    ``s_weights``; see :func:`fit_cusps`; a pair that is not corrected has mask 0)."""
    mo_coeff = np.asarray(mo_coeff, np.float64)
    arrays = {
        "centers": np.asarray(basis.centers, np.float64).reshape(-1, 3),
        "mo": mo_coeff,
    }
    if cusp:
        fit = fit_cusps(basis, mo_coeff, charges, rc=rc)
        arrays.update(
            rc=fit.rc,
            alpha=fit.alpha,
            sign=fit.sign,
            mask=fit.mask.astype(np.float64),
            s_weights=fit.s_weights,
        )
    return arrays


def orbitals_from_arrays(
    tables: AOTables, arrays: dict[str, jax.Array], dtype=jnp.float64
) -> Callable[[jax.Array], jax.Array]:
    """Pure ``orbitals(r (n, 3)) -> (n, n_mo)`` from :func:`orbital_arrays`' output, which
    may be traced (one compiled program serves every geometry of the same basis):

    ``phi~_k(r) = phi_k(r) + sum_A [r_A < rc_A] (sgn exp(p_Ak(r_A)) - phi_s,Ak(r))``
    for corrected pairs; exactly ``phi_k`` outside all spheres. ``tables`` supplies the
    basis functions (their exponents and contractions), ``arrays["centers"]`` the nuclei.
    """
    centers = jnp.asarray(arrays["centers"], dtype)
    coeff = jnp.asarray(arrays["mo"], dtype)
    s_index = np.nonzero(tables.ao_l == 0)[0]

    def plain(r: jax.Array) -> jax.Array:
        r = jnp.asarray(r, dtype)
        aos = _aos(tables, r, jnp, dtype, centers=centers)
        return aos, aos @ coeff

    if "alpha" not in arrays:
        return lambda r: plain(r)[1]
    rc = jnp.asarray(arrays["rc"], dtype)
    alpha = jnp.asarray(arrays["alpha"], dtype)  # (n_atoms, n_mo, 5)
    sign = jnp.asarray(arrays["sign"], dtype)
    mask = jnp.asarray(arrays["mask"], dtype) > 0
    s_weights = jnp.asarray(arrays["s_weights"], dtype)  # (n_atoms, n_s, n_mo)

    def orbitals(r: jax.Array) -> jax.Array:
        aos, mos = plain(r)
        d = jnp.asarray(r, dtype)[:, None, :] - centers[None]
        r2 = jnp.sum(d * d, axis=-1)  # (n, n_atoms)
        dist = jnp.minimum(_safe_norm_sq(r2), rc)[..., None]  # clamped, (n, n_atoms, 1)
        poly = alpha[..., 4]
        for i in (3, 2, 1, 0):  # Horner: no pow, smooth at r = 0
            poly = alpha[..., i] + dist * poly  # (n, n_atoms, n_mo)
        phi_s = jnp.einsum("ns,ask->nak", aos[:, s_index], s_weights)
        inside = (r2 < rc**2)[..., None] & mask
        delta = jnp.where(inside, sign * jnp.exp(poly) - phi_s, 0.0)
        return mos + jnp.sum(delta, axis=1)

    return orbitals


def build_orbitals(
    basis: GaussianBasis,
    mo_coeff: np.ndarray,
    charges: np.ndarray,
    cusp: bool = True,
    dtype=jnp.float64,
    *,
    rc: np.ndarray | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """Pure ``orbitals(r (n, 3)) -> (n, n_mo)``: MOs, cusp-corrected if ``cusp``
    (:func:`orbital_arrays` then :func:`orbitals_from_arrays`)."""
    arrays = orbital_arrays(basis, mo_coeff, charges, cusp, rc=rc)
    return orbitals_from_arrays(ao_tables(basis), arrays, dtype)
