"""Effective core potentials (ECPs): the local channel and the nonlocal term by quadrature.

A semilocal ECP on atom I (PySCF's convention, as in ccECP and BFD) adds to the Coulomb
attraction ``-Z_eff/r`` of its valence electrons

    V_I = v_loc(r) + sum_{l < L} v_l(r) sum_m |lm><lm|,     v(r) = sum_k c_k r^(n_k) exp(-a_k r^2),

with ``r = |r_i - R_I|``. The projector's action on a many-electron ψ is an integral over the
sphere through electron i (Mitas, Shirley & Ceperley, J. Chem. Phys. 95, 3467 (1991)):

    (V_nl ψ)(R)/ψ(R) = sum_l v_l(r) (2l+1)/(4π) ∫ dΩ' P_l(cos θ') ψ(.., R_I + r Ω', ..)/ψ(R),

done by a quadrature ``∫ dΩ f ≈ 4π sum_q w_q f(Ω_q)`` rotated at random for every evaluation,
so that its angular error averages out. One set of ψ ratios per (electron, atom, point)
serves every angular channel. Pairs farther apart than :data:`CUTOFF_TOLERANCE` makes the
nonlocal channels negligible contribute exactly zero (see :func:`cutoff_radius`).

The arrays of :func:`ecp_arrays` are step data: nuclear positions come from the
geometry, the ECP atoms are indices into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CUTOFF_TOLERANCE",
    "NONLOCAL_BLOCKS",
    "QUADRATURES",
    "AtomECP",
    "batch_nonlocal_elements",
    "configuration_key",
    "cutoff_radius",
    "ecp_arrays",
    "electron_elements",
    "legendre",
    "local_potential",
    "nonlocal_elements",
    "quadrature",
    "radial",
    "random_rotation",
    "t_move_choice",
]

CUTOFF_TOLERANCE = 1e-8
"""Ha: beyond the radius where every nonlocal channel |v_l(r)| stays below this, an
electron–ECP pair contributes nothing to the nonlocal term."""

NONLOCAL_BLOCKS = 8
"""Blocks that :func:`batch_nonlocal_elements` cuts a batch's electron–ECP pairs into by
default: the cost is that of the pairs inside the cutoff rounded up to an eighth."""

SignedLogPsi = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
"""``r -> (sign ψ, log|ψ|)`` of one walker, at frozen parameters."""


@dataclass(frozen=True)
class AtomECP:
    """One atom's potential: ``name`` (family or file), ``core`` electrons removed, the
    ``local`` channel and the nonlocal ``channels`` (l = 0, 1, ...), each an (n, 3) array
    of rows ``(power n_k, exponent a_k, coefficient c_k)`` of ``c r^n exp(-a r^2)``."""

    name: str
    core: int
    local: np.ndarray
    channels: tuple[np.ndarray, ...]

    @property
    def max_l(self) -> int:
        """The highest nonlocal angular momentum (-1: local only)."""
        return len(self.channels) - 1


def radial_numpy(terms: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``sum_k c_k r^n_k exp(-a_k r^2)`` in NumPy (for the cutoff and tests)."""
    terms = np.asarray(terms, np.float64).reshape(-1, 3)
    r = np.asarray(r, np.float64)[..., None]
    return np.sum(terms[:, 2] * r ** terms[:, 0] * np.exp(-terms[:, 1] * r * r), axis=-1)


def cutoff_radius(atom: AtomECP, tolerance: float = CUTOFF_TOLERANCE) -> float:
    """The radius beyond which every nonlocal channel of ``atom`` is below ``tolerance``
    (0 without nonlocal channels), found on a grid of 0.005 bohr up to 30 bohr."""
    if not atom.channels:
        return 0.0
    grid = np.arange(1, 6001) * 0.005
    big = np.zeros_like(grid, dtype=bool)
    for terms in atom.channels:
        big |= np.abs(radial_numpy(terms, grid)) >= tolerance
    if not big.any():
        return 0.0
    return float(grid[np.nonzero(big)[0][-1]] + 0.005)


def _padded(tables: Sequence[np.ndarray], n_terms: int) -> np.ndarray:
    """Rows ``(power, exponent, coefficient)`` padded with zero terms to ``n_terms``."""
    out = np.zeros((len(tables), n_terms, 3))
    out[:, :, 1] = 1.0
    for k, t in enumerate(tables):
        t = np.asarray(t, np.float64).reshape(-1, 3)
        out[k, : len(t)] = t
    return out


def ecp_arrays(atoms: Sequence[AtomECP | None]) -> dict[str, np.ndarray] | None:
    """Step data for the atoms with a potential (None: all-electron; None if no atom has
    one): ``atoms`` (n_ecp,) indices, ``local`` (n_ecp, T, 3), ``nonlocal`` (n_ecp, L, T, 3)
    with L the most channels of any atom (absent channels zero), ``cutoff`` (n_ecp,)."""
    which = [i for i, a in enumerate(atoms) if a is not None]
    if not which:
        return None
    chosen = [atoms[i] for i in which]
    n_l = max(len(a.channels) for a in chosen)
    tables = [a.local for a in chosen] + [c for a in chosen for c in a.channels]
    n_terms = max([len(np.reshape(t, (-1, 3))) for t in tables] + [1])
    empty = np.zeros((0, 3))
    channels = [_padded([*a.channels, *[empty] * (n_l - len(a.channels))], n_terms) for a in chosen]
    return {
        "atoms": np.asarray(which, np.int32),
        "local": _padded([a.local for a in chosen], n_terms),
        "nonlocal": np.stack(channels) if n_l else np.zeros((len(chosen), 0, n_terms, 3)),
        "cutoff": np.array([cutoff_radius(a) for a in chosen]),
    }


def radial(terms: jax.Array, r: jax.Array) -> jax.Array:
    """``sum_k c_k r^n_k exp(-a_k r^2)`` for ``terms`` (..., T, 3) and ``r`` broadcastable
    to ``terms.shape[:-2]``."""
    r = r[..., None]
    power, exponent, coeff = terms[..., 0], terms[..., 1], terms[..., 2]
    return jnp.sum(coeff * r**power * jnp.exp(-exponent * r * r), axis=-1)


def _distances(r: jax.Array, centres: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = r[:, None, :] - centres[None, :, :]
    return d, jnp.sqrt(jnp.sum(d * d, axis=-1))


def local_potential(ecp: dict[str, Any], coords: jax.Array, r: jax.Array) -> jax.Array:
    """``sum_i sum_I v_loc,I(|r_i - R_I|)`` of one walker (the ``-Z_eff/r`` part is not
    included: it is the nuclear attraction with the effective charge)."""
    centres = jnp.asarray(coords, r.dtype).reshape(-1, 3)[ecp["atoms"]]
    _, dist = _distances(r, centres)
    return jnp.sum(radial(jnp.asarray(ecp["local"], r.dtype)[None], dist))


# --------------------------------------------------------------------------- quadrature
def _normalised(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points / np.linalg.norm(points, axis=-1, keepdims=True)


def _signed_permutations(base: Sequence[float]) -> np.ndarray:
    """All points from ``base`` by cyclic permutations and sign changes (no duplicates)."""
    out = set()
    for shift in range(3):
        v = np.roll(np.asarray(base, np.float64), shift)
        for signs in np.ndindex(2, 2, 2):
            w = tuple(float(x * (-1) ** s) for x, s in zip(v, signs, strict=True))
            out.add(tuple(0.0 if x == 0 else x for x in w))
    return np.array(sorted(out))


def _octahedron() -> np.ndarray:
    return _signed_permutations((1.0, 0.0, 0.0))


def _edges() -> np.ndarray:
    return _normalised(_signed_permutations((1.0, 1.0, 0.0)))


def _cube() -> np.ndarray:
    return _normalised(np.array(list(np.ndindex(2, 2, 2)), np.float64) * 2 - 1)


def _icosahedron() -> np.ndarray:
    golden = (1 + np.sqrt(5)) / 2
    return _normalised(_signed_permutations((0.0, 1.0, golden)))


def _dodecahedron() -> np.ndarray:
    """The dodecahedron dual to :func:`_icosahedron`: the directions of its face centres."""
    golden = (1 + np.sqrt(5)) / 2
    return _normalised(
        np.concatenate([_cube(), _signed_permutations((0.0, golden, 1 / golden))], axis=0)
    )


def _rule(parts: Sequence[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    points = np.concatenate([p for p, _ in parts], axis=0)
    weights = np.concatenate([np.full(len(p), w) for p, w in parts])
    return points, weights


QUADRATURES: dict[int, tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    6: (3, lambda: _rule([(_octahedron(), 1 / 6)])),
    12: (5, lambda: _rule([(_icosahedron(), 1 / 12)])),
    18: (5, lambda: _rule([(_octahedron(), 1 / 30), (_edges(), 1 / 15)])),
    26: (7, lambda: _rule([(_octahedron(), 1 / 21), (_edges(), 4 / 105), (_cube(), 27 / 840)])),
    32: (9, lambda: _rule([(_icosahedron(), 25 / 840), (_dodecahedron(), 27 / 840)])),
}
"""Points -> (the highest degree of spherical harmonics integrated exactly, rule): the
octahedron, the icosahedron, and the rules of Mitas, Shirley & Ceperley (1991) built on the
octahedron's vertices, edge centres and cube corners, and on the icosahedron with the
dodecahedron. Weights sum to 1 (``∫ dΩ f ≈ 4π sum_q w_q f(Ω_q)``)."""


def quadrature(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (n_points, 3) and weights (summing to 1) of a rule of :data:`QUADRATURES`."""
    if n_points not in QUADRATURES:
        raise ValueError(
            f"no ECP quadrature with {n_points} points; choose one of {sorted(QUADRATURES)}"
        )
    return QUADRATURES[n_points][1]()


def random_rotation(key: jax.Array, dtype: Any = jnp.float64) -> jax.Array:
    """A rotation matrix drawn uniformly (Haar) from a random unit quaternion."""
    q = jax.random.normal(key, (4,), dtype)
    w, x, y, z = q / jnp.sqrt(jnp.sum(q * q))
    return jnp.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


HASH_RESOLUTION = 2.0**-20
"""bohr: :func:`configuration_key` sees positions on this grid (about 1e-6 bohr), so that
two computations of the same configuration that round apart in the last bit (a traced step
loaded from disk against one traced anew) still draw the same rotation."""


def configuration_key(key: jax.Array, r: jax.Array) -> jax.Array:
    """``key`` folded with a hash of ``r`` on a grid of :data:`HASH_RESOLUTION`: a new,
    independent rotation for every configuration, and the same one whenever the same
    configuration is evaluated again (so a stored local energy can be recomputed, e.g. on
    resuming DMC)."""
    cells = jnp.floor(r.reshape(-1) / HASH_RESOLUTION).astype(jnp.int32)
    bits = jax.lax.bitcast_convert_type(cells, jnp.uint32)
    odd = (jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    mixed = bits * odd
    mixed = mixed ^ (mixed >> jnp.uint32(15))
    folded = jax.lax.reduce(
        mixed * jnp.uint32(2246822519), jnp.uint32(0), jax.lax.bitwise_xor, (0,)
    )
    return jax.random.fold_in(key, folded)


def legendre(n_l: int, x: jax.Array) -> jax.Array:
    """``P_0(x) .. P_{n_l - 1}(x)`` stacked on a last axis (Bonnet's recursion)."""
    values = [jnp.ones_like(x), x][:n_l]
    for l in range(2, n_l):
        values.append(((2 * l - 1) * x * values[-1] - (l - 1) * values[-2]) / l)
    return jnp.stack(values, axis=-1)


def _kernel(
    ecp: dict[str, Any],
    coords: jax.Array,
    r: jax.Array,
    rotation: jax.Array,
    points: np.ndarray,
    weights: np.ndarray,
) -> tuple[jax.Array, jax.Array]:
    """``w_q sum_l (2l+1) v_l(r_iI) P_l(cos θ_iIq)`` (n, A, q), zero beyond the cutoff,
    and the quadrature positions (n, A, q, 3) of the electrons ``r`` (n, 3)."""
    dtype = r.dtype
    centres = jnp.asarray(coords, dtype).reshape(-1, 3)[ecp["atoms"]]
    channels = jnp.asarray(ecp["nonlocal"], dtype)  # (A, L, T, 3)
    n_l = channels.shape[1]
    d, dist = _distances(r, centres)  # (n, A, 3), (n, A)
    directions = jnp.asarray(points, dtype) @ rotation.T  # (q, 3)
    moved = centres[None, :, None, :] + dist[..., None, None] * directions[None, None]
    unit = d / dist[..., None]
    cosine = jnp.einsum("iac,qc->iaq", unit, directions)
    v = radial(channels[None], dist[..., None])  # (n, A, L)
    ell = jnp.arange(n_l, dtype=dtype)
    kernel = jnp.einsum("ial,iaql->iaq", (2 * ell + 1) * v, legendre(n_l, cosine))
    inside = dist < jnp.asarray(ecp["cutoff"], dtype)[None]
    kernel = jnp.where(inside[..., None], kernel * jnp.asarray(weights, dtype), 0.0)
    return kernel, moved


def _ratio(signed_log_psi: SignedLogPsi, r: jax.Array) -> Callable[..., jax.Array]:
    """``(i, position) -> ψ(r with electron i at position) / ψ(r)``, signs included."""
    sign0, log0 = signed_log_psi(r)

    def ratio(i: jax.Array, position: jax.Array) -> jax.Array:
        sign, log = signed_log_psi(r.at[i].set(position))
        return sign * sign0 * jnp.exp(log - log0)

    return ratio


def nonlocal_elements(
    signed_log_psi: SignedLogPsi,
    ecp: dict[str, Any],
    coords: jax.Array,
    r: jax.Array,
    key: jax.Array,
    points: np.ndarray,
    weights: np.ndarray,
    rotation: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The nonlocal term's matrix elements of one walker and where they lead.

    Returns ``elements`` (n_elec, n_ecp, n_q) with ``sum = (V_nl ψ)/ψ`` and the positions
    ``moved`` (n_elec, n_ecp, n_q, 3) of the electron on each quadrature point;
    ``elements[i, I, q] = w_q ψ(R_iIq)/ψ(R) sum_l (2l+1) v_l(r_iI) P_l(cos θ_iIq)``. The
    quadrature is rotated by one random rotation per call (``key``; or ``rotation``);
    pairs beyond the cutoff give zero.
    """
    rotation = random_rotation(key, r.dtype) if rotation is None else rotation
    kernel, moved = _kernel(ecp, coords, r, rotation, points, weights)
    ratio = _ratio(signed_log_psi, r)
    index = jnp.broadcast_to(jnp.arange(r.shape[0])[:, None, None], kernel.shape).reshape(-1)
    ratios = jax.vmap(ratio)(index, moved.reshape(-1, 3)).reshape(kernel.shape)
    return jnp.where(kernel != 0, kernel * ratios, 0.0), moved


def batch_nonlocal_elements(
    signed_log_psi: SignedLogPsi,
    ecp: dict[str, Any],
    coords: jax.Array,
    r: jax.Array,
    keys: jax.Array,
    points: np.ndarray,
    weights: np.ndarray,
    *,
    blocks: int = NONLOCAL_BLOCKS,
    block_evaluations: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`nonlocal_elements` of a batch of walkers ``r`` (W, n, 3), walker ``w`` rotated
    by ``random_rotation(keys[w])``, evaluating ψ only for the electron–atom pairs inside
    the cutoff.

    The W n A pairs whose kernel is nonzero somewhere on the sphere are listed first
    (``jnp.nonzero`` with a static size) and cut into blocks of a static size:
    ``ceil(W n A / blocks)`` pairs, or ``block_evaluations // q`` pairs (about that many ψ
    evaluations) where that is given. A block is evaluated (ψ at its pairs' q points,
    vmapped) only when it holds a pair of the list (``lax.cond`` in a ``lax.scan``), so the
    cost follows the number of pairs inside, rounded up to a block, and is the dense cost
    when all are inside. The ratios are scattered back: ``elements`` (W, n, A, q) and
    ``moved`` (W, n, A, q, 3) are those of :func:`nonlocal_elements` walker by walker, zero
    beyond the cutoff. The compaction is over the batch: under ``vmap`` over walkers every
    block would be evaluated (the cond becomes a select).
    """
    dtype = r.dtype
    n_walkers, n_elec = r.shape[:2]
    rotations = jax.vmap(lambda k: random_rotation(k, dtype))(keys)
    kernel, moved = jax.vmap(lambda x, rot: _kernel(ecp, coords, x, rot, points, weights))(
        r, rotations
    )
    n_atoms, n_q = kernel.shape[2:]
    n_pairs = n_walkers * n_elec * n_atoms
    if block_evaluations is None:
        size = -(-n_pairs // max(1, min(blocks, n_pairs)))
    else:
        size = min(max(1, block_evaluations // n_q), n_pairs)
    n_blocks = -(-n_pairs // size)
    needed = jnp.any(kernel != 0, axis=-1).reshape(-1)
    count = jnp.sum(needed)
    slots = jnp.nonzero(needed, size=n_blocks * size, fill_value=n_pairs)[0]
    slots = slots.reshape(n_blocks, size)
    sign0, log0 = jax.vmap(signed_log_psi)(r)
    targets = moved.reshape(n_pairs, n_q, 3)

    def ratios(pairs: jax.Array) -> jax.Array:
        pairs = jnp.minimum(pairs, n_pairs - 1)  # the fill: evaluated, then dropped
        w, i = pairs // (n_elec * n_atoms), (pairs // n_atoms) % n_elec

        def pair(w, i, positions):
            def at(position):
                sign, log = signed_log_psi(r[w].at[i].set(position))
                return (sign * sign0[w] * jnp.exp(log - log0[w])).astype(dtype)

            return jax.vmap(at)(positions)

        return jax.vmap(pair)(w, i, targets[pairs])

    def block(_, xs):
        k, pairs = xs
        skip = lambda pairs: jnp.zeros((size, n_q), dtype)
        return None, jax.lax.cond(k * size < count, ratios, skip, pairs)

    _, values = jax.lax.scan(block, None, (jnp.arange(n_blocks), slots))
    dense = jnp.zeros((n_pairs, n_q), dtype)
    dense = dense.at[slots.reshape(-1)].set(values.reshape(-1, n_q), mode="drop")
    dense = dense.reshape(kernel.shape)
    return jnp.where(kernel != 0, kernel * dense, 0.0), moved


def electron_elements(
    signed_log_psi: SignedLogPsi,
    ecp: dict[str, Any],
    coords: jax.Array,
    r: jax.Array,
    i: jax.Array,
    rotation: jax.Array,
    points: np.ndarray,
    weights: np.ndarray,
) -> tuple[jax.Array, jax.Array]:
    """Electron ``i``'s row of :func:`nonlocal_elements` of one walker, flattened:
    ``elements`` (n_ecp n_q,) and the positions ``moved`` (n_ecp n_q, 3) they lead to."""
    kernel, moved = _kernel(ecp, coords, r[i][None], rotation, points, weights)
    kernel, moved = kernel.reshape(-1), moved.reshape(-1, 3)
    ratio = _ratio(signed_log_psi, r)
    ratios = jax.vmap(lambda position: ratio(i, position))(moved)
    return jnp.where(kernel != 0, kernel * ratios, 0.0), moved


def t_move_choice(
    elements: jax.Array, moved: jax.Array, position: jax.Array, u: jax.Array, tau: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One electron's T-move (Casula, Moroni, Sorella & Filippi, J. Chem. Phys. 132, 154113
    (2010)): to ``moved[k]`` with probability ``τ |T_k| / (1 + τ sum |T|)`` over the
    elements ``T < 0`` (those that keep the sign of the importance-sampled propagator),
    else it stays at ``position``; ``u`` is uniform in [0, 1).

    Returns the new position and whether it moved. Done for every electron in turn, each
    with its elements at the configuration the electrons before it left, this is the
    size-consistent sweep of that paper (:func:`nnqmc.diffusion.dmc_step`).
    """
    rates = jnp.where(elements < 0, -tau * elements, 0.0)
    cumulative = jnp.cumsum(rates) / (1.0 + jnp.sum(rates))
    choice = jnp.searchsorted(cumulative, u, side="right")
    move = choice < rates.size
    target = moved[jnp.minimum(choice, rates.size - 1)]
    return jnp.where(move, target, position), move
