"""Geometry generators of a scan: bond stretches, angle bends, grids of them, normal-mode and
random displacements, multi-frame xyz files, a thermal scan's initial geometries. All
coordinates in bohr, angles in degrees.

Each generator returns ``(coords, labels)``: ``coords`` (n_geom, n_atoms, 3) and ``labels``
(n_geom, n_labels), the scan coordinates of each geometry (bond length in bohr, angle in
degrees, normal-mode amplitude in bohr, frame number) for tables and plots.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import ScanConfig
from ..molecule import ANGSTROM, Molecule, MoleculeError


class GeometryError(ValueError):
    """A scan that cannot produce valid geometries (e.g. atoms pushed on top of each other)."""


def set_distance(coords: np.ndarray, i: int, j: int, distance: float) -> np.ndarray:
    """Move atom ``j`` along the bond i→j so that ``|R_j - R_i| = distance``."""
    coords = np.array(coords, dtype=np.float64)
    bond = coords[j] - coords[i]
    coords[j] = coords[i] + bond / np.linalg.norm(bond) * distance
    return coords


def angle(coords: np.ndarray, i: int, j: int, k: int) -> float:
    """The angle i–j–k at vertex j in degrees."""
    a, b = coords[i] - coords[j], coords[k] - coords[j]
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _rotation(axis: np.ndarray, theta: float) -> np.ndarray:
    """Rodrigues: the rotation by ``theta`` (radians) about the unit vector ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def set_angle(coords: np.ndarray, i: int, j: int, k: int, degrees: float) -> np.ndarray:
    """Rotate atom ``k`` about vertex ``j`` in the plane i–j–k so that the angle i–j–k is
    ``degrees``; the distance j–k is kept. A linear arrangement bends in a plane that
    contains a coordinate axis perpendicular to i–j."""
    coords = np.array(coords, dtype=np.float64)
    a, b = coords[i] - coords[j], coords[k] - coords[j]
    normal = np.cross(a, b)
    if np.linalg.norm(normal) < 1e-10 * np.linalg.norm(a) * np.linalg.norm(b):
        trial = np.eye(3)[np.argmin(np.abs(a))]
        normal = np.cross(a, trial)
    normal /= np.linalg.norm(normal)
    theta = np.radians(degrees - angle(coords, i, j, k))
    coords[k] = coords[j] + _rotation(normal, theta) @ b
    return coords


def set_coordinate(coords: np.ndarray, atoms: Sequence[int], value: float) -> np.ndarray:
    """A bond length (two atoms, bohr) or an angle (three atoms, degrees)."""
    if len(atoms) == 2:
        return set_distance(coords, *atoms, value)
    return set_angle(coords, *atoms, value)


def grid(
    coords: np.ndarray, coordinates: Sequence[Sequence[int]], values: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Every combination of the values of several coordinates, set one after the other
    (the last coordinate varies fastest)."""
    frames, labels = [], []
    for combo in itertools.product(*values):
        c = np.array(coords, dtype=np.float64)
        for atoms, value in zip(coordinates, combo, strict=True):
            c = set_coordinate(c, atoms, value)
        frames.append(c)
        labels.append(combo)
    return np.array(frames), np.array(labels, dtype=np.float64)


def random_displacements(
    coords: np.ndarray, count: int, amplitude: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` geometries ``R + amplitude * N(0, 1)`` per coordinate, reproducible by
    ``seed``; labels: the RMS displacement."""
    rng = np.random.default_rng(seed)
    shifts = amplitude * rng.standard_normal((count, *np.shape(coords)))
    rms = np.sqrt(np.mean(shifts**2, axis=(1, 2)))
    return np.asarray(coords)[None] + shifts, rms[:, None]


def kabsch_rotation(reference: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The proper rotation R of least squared distance from ``coords`` to ``reference``
    (both (n_atoms, 3), centred): ``(coords - mean) @ R`` ≈ ``reference - mean`` (Kabsch)."""
    x = coords - coords.mean(axis=0)
    y = reference - reference.mean(axis=0)
    u, _, vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rigid_motions(coords: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Orthonormal mass-weighted translations and rotations (rows, length 3 n_atoms); 5 for
    a linear molecule, else 6."""
    coords = np.asarray(coords, dtype=np.float64)
    sqrt_m = np.sqrt(np.asarray(masses, dtype=np.float64))
    center = np.sum(coords * masses[:, None], axis=0) / np.sum(masses)
    x = coords - center
    vectors = []
    for a in range(3):
        t = np.zeros_like(x)
        t[:, a] = 1.0
        vectors.append((t * sqrt_m[:, None]).ravel())
        vectors.append((np.cross(np.eye(3)[a], x) * sqrt_m[:, None]).ravel())
    u, s, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    return u[:, s > 1e-8 * s[0]].T


def normal_modes(
    coords: np.ndarray, masses: np.ndarray, hessian: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of a Cartesian Hessian (hartree/bohr², (3N, 3N)): the eigenvectors
    of the mass-weighted Hessian with translations and rotations projected out, as
    Cartesian displacements normalised to 1 bohr, softest first; and their eigenvalues.

    Each mode's sign is fixed (an eigenvector's is arbitrary and may differ between LAPACK
    builds and thread counts): its largest component, the last of equal ones, is positive.
    """
    n = len(masses)
    inv_sqrt = np.repeat(1.0 / np.sqrt(masses), 3)
    h = hessian.reshape(3 * n, 3 * n) * inv_sqrt[:, None] * inv_sqrt[None, :]
    rigid = rigid_motions(coords, masses)
    p = np.eye(3 * n) - rigid.T @ rigid
    values, vectors = np.linalg.eigh(p @ h @ p)
    # the rigid motions are (numerically) zero modes of p h p: drop them by overlap
    keep = np.argsort(np.linalg.norm(rigid @ vectors, axis=0))[: 3 * n - len(rigid)]
    keep = keep[np.argsort(values[keep])]
    values, vectors = _degenerate_canonical(values[keep], vectors[:, keep])
    cart = (vectors * inv_sqrt[:, None]).T.reshape(len(keep), n, 3)
    cart /= np.linalg.norm(cart.reshape(len(keep), -1), axis=1)[:, None, None]
    return cart * _mode_signs(cart.reshape(len(keep), -1))[:, None, None], values


DEGENERATE = 1e-5
"""Eigenvalues within this fraction of the largest magnitude count as one degenerate set."""


def _degenerate_canonical(values: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted eigenpairs with each degenerate set (:data:`DEGENERATE`) given one basis that
    depends only on its subspace, and their mean eigenvalue: an eigensolver returns any
    rotation inside a degenerate set (CO2's bends, CH4's triplets), which would make the
    modes, and geometries drawn from them, differ from run to run."""
    values, vectors = np.array(values, np.float64), np.array(vectors, np.float64)
    tol = DEGENERATE * max(float(np.max(np.abs(values), initial=0.0)), 1e-12)
    starts = [0, *(i for i in range(1, len(values)) if values[i] - values[i - 1] > tol)]
    for a, b in zip(starts, [*starts[1:], len(values)], strict=True):
        if b - a > 1:
            vectors[:, a:b] = subspace_basis(vectors[:, a:b] @ vectors[:, a:b].T, b - a)
            values[a:b] = np.mean(values[a:b])
    return values, vectors


def subspace_basis(projector: np.ndarray, k: int, share: float = 0.45) -> np.ndarray:
    """An orthonormal basis (d, k) of the range of ``projector`` (d, d) that depends on the
    projector alone: Gram–Schmidt over the projected unit vectors P e_j, each time the
    first j whose remainder is at least ``share`` of the largest remainder."""
    basis = np.zeros((len(projector), 0))
    for _ in range(k):
        rest = projector - basis @ basis.T
        norms = np.linalg.norm(rest, axis=0)
        j = int(np.argmax(norms >= share * norms.max()))
        basis = np.column_stack([basis, rest[:, j] / norms[j]])
    return basis


def _mode_signs(flat: np.ndarray) -> np.ndarray:
    """+1 or -1 per row so that its largest-magnitude entry (the last of ties) is positive."""
    size = np.round(np.abs(flat), 8)[:, ::-1]
    last_max = flat.shape[1] - 1 - np.argmax(size, axis=1)
    return np.where(flat[np.arange(len(flat)), last_max] < 0, -1.0, 1.0)


def mode_displacements(
    coords: np.ndarray,
    modes: np.ndarray,
    amplitudes: Sequence[float],
    indices: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``R + a * mode`` for every mode and amplitude; labels (mode index, amplitude)."""
    frames, labels = [], []
    indices = range(len(modes)) if indices is None else indices
    for m, mode in zip(indices, modes, strict=True):
        for a in amplitudes:
            frames.append(np.asarray(coords) + a * mode)
            labels.append((m, a))
    return np.array(frames), np.array(labels, dtype=np.float64)


def read_xyz_frames(path: str | Path, symbols: Sequence[str]) -> np.ndarray:
    """All frames of a multi-frame xyz file (angstrom) as (n_frames, n_atoms, 3) bohr; the
    elements must be ``symbols`` in order."""
    lines = Path(path).read_text().splitlines()
    frames, pos = [], 0
    while pos < len(lines):
        if not lines[pos].strip():
            pos += 1
            continue
        try:
            n = int(lines[pos].split()[0])
        except ValueError:
            raise GeometryError(f"{path}: line {pos + 1}: expected the number of atoms") from None
        body = lines[pos + 2 : pos + 2 + n]
        if len(body) != n:
            raise GeometryError(f"{path}: frame {len(frames) + 1} is truncated")
        found = [line.split()[0].capitalize() for line in body]
        if found != [s.capitalize() for s in symbols]:
            raise GeometryError(
                f"{path}: frame {len(frames) + 1} has atoms {found}, expected {list(symbols)}"
            )
        try:
            frames.append([[float(x) for x in line.split()[1:4]] for line in body])
        except ValueError:
            raise GeometryError(f"{path}: frame {len(frames) + 1}: bad coordinate") from None
        pos += 2 + n
    if not frames:
        raise GeometryError(f"{path}: no frames")
    return np.array(frames) * ANGSTROM


def _distances(scan: ScanConfig, values: Sequence[float]) -> list[float]:
    return [v * ANGSTROM if scan.unit == "angstrom" else v for v in values]


def _values(scan: ScanConfig) -> list[float]:
    if scan.values is not None:
        return list(scan.values)
    start, stop, count = scan.linspace
    return list(np.linspace(start, stop, count))


SOFTEST = 1e-3  # hartree/bohr²: the least curvature a mode is drawn with (about a torsion's)
STENCIL = 2.0  # the first initial geometries: ± this many thermal widths along each mode


def thermal_modes(
    coords: np.ndarray, masses: np.ndarray, hessian: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """The normal modes c (unit Cartesian displacements, softest first) and the classical
    thermal width of the amplitude along each at ``temperature`` (K), √(kT / cᵀHc) bohr:
    independent of the masses, as a classical distribution is; a mode softer than
    ``SOFTEST`` (or unstable) counts as one of that curvature."""
    from ..thermal.sample import BOLTZMANN

    modes, _ = normal_modes(coords, masses, hessian)
    flat = modes.reshape(len(modes), -1)
    curvature = np.abs(np.einsum("mi,ij,mj->m", flat, hessian, flat))
    return modes, np.sqrt(BOLTZMANN * temperature / np.maximum(curvature, SOFTEST))


def harmonic_geometries(
    coords: np.ndarray,
    masses: np.ndarray,
    hessian: np.ndarray,
    temperature: float,
    count: int,
    seed: int,
) -> np.ndarray:
    """``count`` geometries (bohr) about ``coords`` from the classical harmonic Boltzmann
    distribution at ``temperature`` (:func:`thermal_modes`): first + and − ``STENCIL``
    widths along each mode, softest first (a spread that a few random draws need not
    have), then draws of N(0, width²) along every mode, reproducible by ``seed``."""
    modes, width = thermal_modes(coords, masses, hessian, temperature)
    n = len(modes)
    stencil = np.zeros((2 * n, n))
    stencil[np.arange(2 * n), np.repeat(np.arange(n), 2)] = np.tile([STENCIL, -STENCIL], n)
    rest = max(count - 2 * n, 0)
    draws = np.random.default_rng(seed).standard_normal((rest, n))
    amplitudes = np.concatenate([stencil, draws])[:count] * width
    return np.asarray(coords)[None] + np.einsum("km,mai->kai", amplitudes, modes)


def thermal_initial(
    molecule: Molecule, scan: ScanConfig, basis: str | dict[str, str]
) -> np.ndarray:
    """A thermal scan's initial geometries (bohr): the frames of ``scan.xyz`` (2..budget of
    them), else the input geometry and ``initial - 1`` geometries of the harmonic
    Boltzmann distribution of its HF Hessian in ``basis`` at ``scan.temperature``
    (:func:`harmonic_geometries`, ``scan.seed``); the scan's rounds append the others."""
    if scan.xyz is not None:
        frames = read_xyz_frames(scan.xyz, molecule.symbols)
        if not 2 <= len(frames) <= scan.budget:
            raise GeometryError(
                f"{scan.xyz}: {len(frames)} frames; a thermal scan starts from 2..{scan.budget} "
                "(scan.budget)"
            )
        return frames
    from ..scf import hf_hessian

    hessian, masses = hf_hessian(molecule, basis)
    coords, t = molecule.coords, scan.temperature
    others = harmonic_geometries(coords, masses, hessian, t, scan.initial - 1, scan.seed)
    return np.concatenate([coords[None], others])


def generate(
    molecule: Molecule, scan: ScanConfig, basis: str | dict[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """The geometries (bohr) and labels of a validated ``[scan]`` (normal modes from the
    RHF Hessian in ``basis``); GeometryError if one of them is impossible."""
    coords = molecule.coords
    if scan.kind in ("bond", "angle"):
        values = _values(scan)
        if scan.kind == "bond":
            values = _distances(scan, values)
        frames, labels = grid(coords, [scan.atoms], [values])
    elif scan.kind == "grid":
        values = [
            _distances(scan, v) if len(a) == 2 else list(v)
            for a, v in zip(scan.grid_atoms, scan.grid_values, strict=True)
        ]
        frames, labels = grid(coords, scan.grid_atoms, values)
    elif scan.kind == "adaptive":
        values = [
            _distances(scan, np.linspace(a, b, int(n)))
            if len(atoms) == 2
            else np.linspace(a, b, int(n))
            for atoms, (a, b, n) in zip(scan.grid_atoms, scan.ranges, strict=True)
        ]
        frames, labels = grid(coords, scan.grid_atoms, values)
    elif scan.kind == "random":
        amplitude = _distances(scan, [scan.amplitude])[0]
        frames, labels = random_displacements(coords, scan.count, amplitude, scan.seed)
    elif scan.kind == "normal_modes":
        from ..scf import hf_hessian

        hessian, masses = hf_hessian(molecule, basis)
        modes, _ = normal_modes(coords, masses, hessian)
        chosen = list(range(len(modes)) if scan.modes is None else scan.modes)
        if max(chosen) >= len(modes):
            raise GeometryError(f"scan.modes: the molecule has {len(modes)} normal modes")
        amplitudes = _distances(scan, scan.amplitudes)
        frames, labels = mode_displacements(coords, modes[chosen], amplitudes, chosen)
    elif scan.kind == "xyz":
        frames = read_xyz_frames(scan.xyz, molecule.symbols)
        labels = np.arange(len(frames), dtype=np.float64)[:, None]
    elif scan.kind == "thermal":
        frames = thermal_initial(molecule, scan, basis)
        labels = np.arange(len(frames), dtype=np.float64)[:, None]  # the selection order
    else:  # pragma: no cover - validated by the config
        raise GeometryError(f"unknown scan kind {scan.kind!r}")
    for n, frame in enumerate(frames):
        try:
            molecule.with_coords(frame)
        except MoleculeError as err:
            raise GeometryError(f"geometry {n}: {err}") from None
    return frames, labels
