"""Z-matrix coordinates: a molecule's geometry without its position and orientation.

Atom 0 is the origin; atom k ≥ 1 is placed by its distance r_k to a bond partner b_k, for
k ≥ 2 the angle θ_k between the bonds k–b_k and a_k–b_k, and for k ≥ 3 the dihedral φ_k
of t_k–a_k–b_k–k; b_k, a_k, t_k are earlier atoms, nearest ones in a reference geometry
(:func:`zmatrix`). The coordinates q = (r_1; r_2, θ_2; r_3, θ_3, φ_3; ...) number 3n - 6
(1 for a diatomic, 3 for a triatomic).

Each atom's spherical coordinates (r_k, θ_k, φ_k) are taken about an axis fixed by earlier
atoms only, so the Cartesian volume element factorises:

    d^{3n}x = d³x_0 · dΩ_1 dφ_2 · r_1² dr_1 · r_2² sin θ_2 dr_2 dθ_2
              · Π_{k≥3} r_k² sin θ_k dr_k dθ_k dφ_k

where d³x_0 (translations) and dΩ_1 dφ_2 (rotations, 8π² in all) do not enter the energy.
The Boltzmann density of Cartesian geometries, exp(-u(x)) d^{3n}x, is therefore in q

    p(q) ∝ exp(-u(x(q))) J(q),   log J(q) = Σ_{k≥1} 2 log r_k + Σ_{k≥2} log sin θ_k,

e.g. r² exp(-u(r)) for a diatomic (the radial density in 3-D). Dihedrals live on a circle:
a box for them is any interval of length 2π, and :func:`wrap` maps a dihedral into it.
Linear references (an angle within 1° of 180°, in an angle or a dihedral's chain) are
refused by :func:`check_not_linear`: their Z-matrix coordinates are singular.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class ZMatrix:
    """Which earlier atoms place each atom: ``bond``, ``angle``, ``dihedral`` (n_atoms,),
    -1 where not used; ``reference`` (d,) its coordinates q at the reference geometry."""

    bond: np.ndarray
    angle: np.ndarray
    dihedral: np.ndarray
    reference: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.bond)

    @property
    def dim(self) -> int:
        return 1 if self.n_atoms == 2 else 3 * self.n_atoms - 6

    def kinds(self) -> list[str]:
        """``"bond"``, ``"angle"`` or ``"dihedral"`` for each coordinate of q, in order."""
        names = ["bond", "angle", "dihedral"]
        return [names[j] for k in range(1, self.n_atoms) for j in range(min(k, 3))]

    def labels(self) -> list[str]:
        """Names of the coordinates, atoms counted from 0: ``r(1-0)``, ``θ(2-0-1)``, ..."""
        out = []
        for k in range(1, self.n_atoms):
            b, a, t = self.bond[k], self.angle[k], self.dihedral[k]
            out.append(f"r({k}-{b})")
            if k >= 2:
                out.append(f"θ({k}-{b}-{a})")
            if k >= 3:
                out.append(f"φ({k}-{b}-{a}-{t})")
        return out

    def bounds(self, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The box q is sampled in: bonds (0, 3 r_ref), angles (0, π), dihedrals one turn
        (c - π, c + π) about ``centre`` (d,) (only its dihedral entries are read; default
        the reference's dihedrals)."""
        kinds = np.array(self.kinds())
        c = self.reference if centre is None else np.asarray(centre, np.float64)
        dihedral = kinds == "dihedral"
        lower = np.where(dihedral, c - np.pi, 0.0)
        upper = np.where(dihedral, c + np.pi, np.pi)
        upper = np.where(kinds == "bond", 3.0 * self.reference, upper)
        return lower, upper


def wrap(z: ZMatrix, q, lower: np.ndarray):
    """q (..., d) with each dihedral moved by a multiple of 2π into [lower, lower + 2π)
    (the box of :meth:`ZMatrix.bounds`); other coordinates unchanged (JAX or numpy)."""
    dihedral = np.array(z.kinds()) == "dihedral"
    if not dihedral.any():
        return q
    lo = jnp.asarray(lower)
    return jnp.where(dihedral, lo + jnp.mod(q - lo, 2 * np.pi), q)


LINEAR_DEGREES = 1.0  # an angle closer than this to 180° makes the reference linear


def _angle_degrees(x: np.ndarray, i: int, j: int, k: int) -> float:
    u, v = x[i] - x[j], x[k] - x[j]
    cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def check_not_linear(z: ZMatrix, x: np.ndarray) -> None:
    """ValueError naming the atoms if an angle k-b-a of the Z-matrix, or a-b-... in a
    dihedral's chain t-a-b, is within ``LINEAR_DEGREES`` of 180° in geometry x (bohr)."""
    x = np.asarray(x, np.float64)
    for k in range(2, z.n_atoms):
        b, a, t = int(z.bond[k]), int(z.angle[k]), int(z.dihedral[k])
        triples = [(k, b, a)] + ([(b, a, t)] if k >= 3 else [])
        for i, j, m in triples:
            angle = _angle_degrees(x, i, j, m)
            if angle > 180.0 - LINEAR_DEGREES:
                raise ValueError(
                    f"the reference geometry is linear at atoms {i}-{j}-{m} (angle "
                    f"{angle:.2f}°): the flow's Z-matrix coordinates do not support linear "
                    "molecules (use --method md)"
                )


def _nearest(x: np.ndarray, to: int, among: list[int]) -> int:
    d = [np.linalg.norm(x[i] - x[to]) for i in among]
    return among[int(np.argmin(d))]


def zmatrix(reference: np.ndarray) -> ZMatrix:
    """The Z-matrix of a reference geometry (n_atoms ≥ 2, 3), bohr: b_k the earlier atom
    nearest to k, a_k the earlier atom nearest to b_k, t_k the earlier atom nearest to a_k
    (each different from those already chosen)."""
    x = np.asarray(reference, np.float64)
    n = len(x)
    if n < 2:
        raise ValueError("a Z-matrix needs at least two atoms")
    bond, angle, dihedral = (np.full(n, -1, np.int64) for _ in range(3))
    for k in range(1, n):
        bond[k] = _nearest(x, k, list(range(k)))
        if k >= 2:
            angle[k] = _nearest(x, bond[k], [i for i in range(k) if i != bond[k]])
        if k >= 3:
            rest = [i for i in range(k) if i not in (bond[k], angle[k])]
            dihedral[k] = _nearest(x, angle[k], rest)
    z = ZMatrix(bond, angle, dihedral, np.zeros(0))
    return ZMatrix(bond, angle, dihedral, np.asarray(internal(z, x)))


def _unit(v):
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def internal(z: ZMatrix, x: np.ndarray | jnp.ndarray) -> jnp.ndarray:
    """q of one geometry x (n_atoms, 3) (JAX or numpy)."""
    x = jnp.asarray(x)
    q = []
    for k in range(1, z.n_atoms):
        b, a, t = int(z.bond[k]), int(z.angle[k]), int(z.dihedral[k])
        q.append(jnp.linalg.norm(x[k] - x[b]))
        if k >= 2:
            cos = jnp.dot(_unit(x[k] - x[b]), _unit(x[a] - x[b]))
            q.append(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
        if k >= 3:
            b1, b2, b3 = x[a] - x[t], x[b] - x[a], x[k] - x[b]
            n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
            m1 = jnp.cross(n1, _unit(b2))
            q.append(jnp.arctan2(jnp.dot(m1, n2), jnp.dot(n1, n2)))
    return jnp.stack(q)


def cartesian(z: ZMatrix, q: jnp.ndarray) -> jnp.ndarray:
    """The geometry (n_atoms, 3) of coordinates q (d,): atom 0 at the origin, atom 1 on +z,
    atom 2 in the xz-plane (x > 0 side for θ_2 in (0, π)); differentiable (JAX)."""
    x = [jnp.zeros(3), jnp.array([0.0, 0.0, 1.0]) * q[0]]
    i = 1
    for k in range(2, z.n_atoms):
        b, a = int(z.bond[k]), int(z.angle[k])
        r, theta = q[i], q[i + 1]
        u = _unit(x[a] - x[b])
        if k == 2:  # u is ±z: the perpendicular in the xz-plane is x
            side = jnp.array([1.0, 0.0, 0.0])
            x.append(x[b] + r * (jnp.cos(theta) * u + jnp.sin(theta) * side))
            i += 2
            continue
        phi = q[i + 2]
        bc = -u  # from a to b
        n = _unit(jnp.cross(x[a] - x[int(z.dihedral[k])], bc))
        sin = jnp.sin(theta)
        local = jnp.stack([-jnp.cos(theta), sin * jnp.cos(phi), -sin * jnp.sin(phi)])
        frame = jnp.stack([bc, jnp.cross(n, bc), n], axis=1)
        x.append(x[b] + r * frame @ local)
        i += 3
    return jnp.stack(x)


def log_jacobian(z: ZMatrix, q: jnp.ndarray) -> jnp.ndarray:
    """log J(q) = Σ 2 log r_k + Σ log sin θ_k (the module docstring)."""
    kinds = z.kinds()
    bonds = np.array([k == "bond" for k in kinds])
    angles = np.array([k == "angle" for k in kinds])
    return 2.0 * jnp.sum(jnp.log(q[bonds])) + jnp.sum(jnp.log(jnp.sin(q[angles])))
