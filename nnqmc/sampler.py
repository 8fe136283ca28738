"""Metropolis walkers sampling |psi|^2 with all-electron Gaussian moves.

The move of electron i has the width ``w * s_i(r)``: ``w`` adapts to the target acceptance,
``s_i`` is 1 (``proposal = "uniform"``) or grows with the electron's distance to its nearest
nucleus (``"nucleus"``, :func:`nucleus_step_scale`), so that core electrons take small steps
and valence electrons large ones. A position-dependent width makes the proposal asymmetric;
the Metropolis–Hastings ratio q(r|r') / q(r'|r) corrects for it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .hamiltonian import positions

BatchLogPsi = Callable[[jax.Array], jax.Array]  # (n_walkers, n_elec, 3) -> (n_walkers,)
StepScale = Callable[[jax.Array], jax.Array]  # (n_walkers, n_elec, 3) -> (n_walkers, n_elec)

MIN_WIDTH, MAX_WIDTH = 1e-3, 5.0


def electrons_per_atom(charges: np.ndarray, charge: int) -> np.ndarray:
    """Neutral atoms, then electrons removed from (added to) the most (least) charged atoms."""
    counts = np.asarray(charges, dtype=int).copy()
    order = np.argsort(-counts, kind="stable")
    for k in range(abs(charge)):
        atom = order[k % len(order)] if charge > 0 else order[::-1][k % len(order)]
        counts[atom] += -1 if charge > 0 else 1
    return np.maximum(counts, 0)


def assign_spins(counts: np.ndarray, n_up: int, n_down: int) -> tuple[list[int], list[int]]:
    """Atom index of each up and each down electron: pairs per atom, odd electrons
    alternate, then electrons change spin where needed for ``n_up`` and ``n_down``."""
    up, down, odd = [], [], []
    for atom, n in enumerate(counts):
        up += [atom] * (n // 2)
        down += [atom] * (n // 2)
        if n % 2:
            odd.append(atom)
    for k, atom in enumerate(odd):
        (up if k % 2 == 0 else down).append(atom)
    while len(up) > n_up:
        _move_one(up, down)
    while len(down) > n_down:
        _move_one(down, up)
    return up, down


def _move_one(source: list[int], target: list[int]) -> None:
    """One electron from ``source`` to ``target`` spin, from the atom (the first of equal
    ones) where ``source`` most outnumbers ``target``: each atom's spins stay as even as
    the total allows."""
    atom = max(sorted(set(source)), key=lambda a: source.count(a) - target.count(a))
    source.remove(atom)
    target.append(atom)


SHELLS = (
    (1, "sp", 2),
    (2, "sp", 8),
    (3, "sp", 8),
    (4, "sp", 2),
    (3, "d", 10),
    (4, "sp", 6),
    (5, "sp", 2),
    (4, "d", 10),
    (5, "sp", 6),
)
"""Shells in filling order (1s; 2s2p; 3s3p; 4s; 3d; 4p; 5s; 4d; 5p): Slater's group
(n, "sp" or "d") and electrons; 4s and 4p (5s and 5p) are one group."""

EFFECTIVE_N = {1: 1.0, 2: 2.0, 3: 3.0, 4: 3.7, 5: 4.0}


def _screening(group: tuple[int, str], other: tuple[int, str]) -> float:
    """What one electron of group ``other`` takes from the charge seen in ``group``."""
    (n, kind), (m, other_kind) = group, other
    if other == group:
        return 0.30 if n == 1 else 0.35
    inside = m < n or (m == n and kind == "d" and other_kind == "sp")
    if not inside:
        return 0.0
    return 1.0 if kind == "d" or m < n - 1 else 0.85


def shell_radii(z: float, n_electrons: int) -> np.ndarray:
    """Mean radius (bohr) of each shell of :data:`SHELLS` of an atom of nuclear charge
    ``z`` holding ``n_electrons`` (core included), by Slater's rules: an electron sees
    Z_eff = z less 0.35 (1s: 0.30) per other electron of its group, 0.85 per electron of
    shell n - 1 and 1 per deeper one (a d electron: 1 per electron inside its group), and
    <r> = n* (2n* + 1) / (2 Z_eff) with Slater's n* (3.7 for n = 4)."""
    counts, left = [], n_electrons
    for _, _, cap in SHELLS:
        counts.append(min(cap, left))
        left -= counts[-1]
    groups = [(n, kind) for n, kind, _ in SHELLS]
    totals = {g: sum(c for h, c in zip(groups, counts, strict=True) if h == g) for g in groups}
    radii = []
    for g in groups:
        others = sum(_screening(g, h) * c for h, c in totals.items())
        z_eff = max(z - others + _screening(g, g) * (totals[g] > 0), 1.0)
        n_star = EFFECTIVE_N[g[0]]
        radii.append(n_star * (2 * n_star + 1) / (2 * z_eff))
    return np.asarray(radii)


def _shell_of(orbital: int) -> int:
    """The shell (index into :data:`SHELLS`) of the spatial orbital ``orbital`` in filling
    order."""
    bounds = np.cumsum([cap // 2 for _, _, cap in SHELLS])
    return int(np.searchsorted(bounds, orbital, side="right"))


def electron_widths(
    atoms: list[int], counts: np.ndarray, charges: np.ndarray, core: np.ndarray
) -> np.ndarray:
    """The Gaussian width of each electron of one spin (``atoms``: its atom): the k-th
    electron of that spin on an atom fills the atom's spatial orbital core/2 + k, and its
    width gives its shell's mean radius (a 3-D Gaussian of width s has <r> = 2 s sqrt(2/pi))."""
    seen: dict[int, int] = {}
    widths = []
    for a in atoms:
        k = seen.get(a, 0)
        seen[a] = k + 1
        z = float(charges[a] + core[a])
        radii = shell_radii(z, int(counts[a] + core[a]))
        shell = min(_shell_of(int(core[a]) // 2 + k), len(radii) - 1)
        widths.append(radii[shell] / (2.0 * np.sqrt(2.0 / np.pi)))
    return np.asarray(widths, dtype=np.float64).reshape(-1)


def init_walkers(
    key: jax.Array,
    coords: np.ndarray,
    charges: np.ndarray,
    charge: int,
    n_up: int,
    n_down: int,
    n_walkers: int,
    dtype=jnp.float64,
    core: np.ndarray | None = None,
) -> jax.Array:
    """Walkers (n_walkers, n_elec, 3): each electron in a Gaussian around its atom as wide
    as its shell (``core``: electrons an atom's ECP removes), spin-up first."""
    counts = electrons_per_atom(charges, charge)
    core = np.zeros(len(counts), int) if core is None else np.asarray(core, int)
    up, down = assign_spins(counts, n_up, n_down)
    centers = np.asarray(coords)[np.array(up + down, dtype=int)]
    z = np.asarray(charges, np.float64)
    widths = np.concatenate(
        [electron_widths(up, counts, z, core), electron_widths(down, counts, z, core)]
    )
    spread = jnp.asarray(np.clip(widths, 0.01, 3.0), dtype)[None, :, None]
    noise = jax.random.normal(key, (n_walkers, len(up) + len(down), 3), dtype)
    return (jnp.asarray(centers, dtype)[None] + spread * noise).astype(dtype)


SCALE_RANGE = (0.2, 2.0)
"""Bounds of the nucleus-distance step scale (bohr): steps stay finite on a nucleus and do
not blow up for an electron far out."""


def nucleus_step_scale(coords: np.ndarray, bounds: tuple[float, float] = SCALE_RANGE) -> StepScale:
    """s_i = clip(min_I |r_i - R_I|, *bounds): the step scale of each electron."""
    lo, hi = bounds
    centres = positions(coords)

    def scale(walkers: jax.Array) -> jax.Array:
        diff = walkers[..., None, :] - jnp.asarray(centres, walkers.dtype)
        d = jnp.sqrt(jnp.min(jnp.sum(diff * diff, axis=-1), axis=-1))
        return jnp.clip(d, lo, hi)

    return scale


def _log_proposal_density(step: jax.Array, sigma: jax.Array) -> jax.Array:
    """log q of an all-electron Gaussian move ``step`` (W, n, 3) with widths ``sigma``
    (W, n), up to a constant."""
    return jnp.sum(-jnp.sum(step * step, axis=-1) / (2.0 * sigma**2) - 3.0 * jnp.log(sigma), -1)


def metropolis_step(
    log_psi: BatchLogPsi,
    walkers: jax.Array,
    log_psi_now: jax.Array,
    key: jax.Array,
    width: jax.Array,
    step_scale: StepScale | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One all-electron Gaussian move per walker, accepted with
    min(1, |psi'/psi|^2 q(r|r') / q(r'|r)) (the q ratio is 1 without ``step_scale``)."""
    key_move, key_accept = jax.random.split(key)
    noise = jax.random.normal(key_move, walkers.shape, walkers.dtype)
    if step_scale is None:
        proposal = walkers + width * noise
        log_psi_new = log_psi(proposal)
        log_ratio = 2.0 * (log_psi_new - log_psi_now)
    else:
        sigma = width * step_scale(walkers)
        step = sigma[..., None] * noise
        proposal = walkers + step
        sigma_back = width * step_scale(proposal)
        log_psi_new = log_psi(proposal)
        hastings = _log_proposal_density(step, sigma_back) - _log_proposal_density(step, sigma)
        log_ratio = 2.0 * (log_psi_new - log_psi_now) + hastings
    u = jax.random.uniform(key_accept, log_ratio.shape, walkers.dtype)
    accept = jnp.log(u) < log_ratio
    walkers = jnp.where(accept[:, None, None], proposal, walkers)
    log_psi_now = jnp.where(accept, log_psi_new, log_psi_now)
    return walkers, log_psi_now, jnp.mean(accept.astype(walkers.dtype))


def sample(
    log_psi: BatchLogPsi,
    walkers: jax.Array,
    log_psi_now: jax.Array,
    key: jax.Array,
    width: jax.Array,
    n_steps: int,
    step_scale: StepScale | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``n_steps`` Metropolis steps; returns walkers, their log|psi| and the mean acceptance."""

    def body(k, carry):
        walkers, log_psi_now, accepted = carry
        walkers, log_psi_now, acc = metropolis_step(
            log_psi, walkers, log_psi_now, jax.random.fold_in(key, k), width, step_scale
        )
        return walkers, log_psi_now, accepted + acc

    zero = jnp.zeros((), walkers.dtype)
    walkers, log_psi_now, accepted = jax.lax.fori_loop(
        0, n_steps, body, (walkers, log_psi_now, zero)
    )
    return walkers, log_psi_now, accepted / n_steps


def adapt_width(width: jax.Array, acceptance: jax.Array, target: float) -> jax.Array:
    """Multiplicative step-width update towards the target acceptance."""
    return jnp.clip(width * jnp.exp(acceptance - target), MIN_WIDTH, MAX_WIDTH)
