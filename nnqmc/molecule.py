"""Atoms, nuclear charges, coordinates (bohr), charge and spin of a molecule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ANGSTROM = 1.0 / 0.529177210903  # bohr per angstrom

ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr"
).split()
ATOMIC_NUMBER = {symbol: z for z, symbol in enumerate(ELEMENTS, start=1)}

MIN_NUCLEAR_DISTANCE = 0.1  # bohr; closer nuclei are an input error


class MoleculeError(ValueError):
    """An impossible molecule: unknown element, bad charge/spin, overlapping atoms."""


@dataclass(frozen=True)
class Molecule:
    """Nuclei (bohr) and electron counts. The first ``n_up`` electrons are spin-up.

    With effective core potentials, ``ecp`` maps each element that has one to its name
    (or NWChem file) and ``core`` holds the electrons each atom's potential removes:
    :attr:`charges` are then the effective charges ``Z - core`` and the electron counts
    are those of the valence electrons.
    """

    symbols: tuple[str, ...]
    coords: np.ndarray = field(repr=False)
    charge: int = 0
    spin: int = 0
    ecp: tuple[tuple[str, str], ...] = ()
    core: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 3)
        object.__setattr__(self, "coords", coords)
        core = tuple(int(c) for c in self.core) or (0,) * len(self.symbols)
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "ecp", tuple((str(s), str(n)) for s, n in self.ecp))
        _validate(self.symbols, coords, self.charge, self.spin, core)

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.array([ATOMIC_NUMBER[s] for s in self.symbols], dtype=np.float64)

    @property
    def charges(self) -> np.ndarray:
        """Nuclear charges seen by the electrons: Z, less the core of an ECP atom."""
        return self.atomic_numbers - np.asarray(self.core, np.float64)

    @property
    def ecp_atoms(self) -> np.ndarray:
        """Whether each atom has an effective core potential (a bounded potential: no
        nuclear cusp)."""
        names = dict(self.ecp)
        return np.array([s in names for s in self.symbols], dtype=bool)

    @property
    def cusp_charges(self) -> np.ndarray:
        """The charges whose Coulomb singularity the orbitals must cusp: :attr:`charges`
        for all-electron atoms, 0 for atoms with an ECP (their potential is bounded)."""
        return np.where(self.ecp_atoms, 0.0, self.charges)

    @property
    def n_elec(self) -> int:
        return int(round(float(np.sum(self.charges)))) - self.charge

    @property
    def n_up(self) -> int:
        return (self.n_elec + self.spin) // 2

    @property
    def n_down(self) -> int:
        return (self.n_elec - self.spin) // 2

    def nuclear_repulsion(self) -> float:
        z, r = self.charges, self.coords
        energy = 0.0
        for i in range(len(z)):
            for j in range(i):
                energy += z[i] * z[j] / float(np.linalg.norm(r[i] - r[j]))
        return energy

    def with_coords(self, coords: np.ndarray) -> Molecule:
        return Molecule(
            self.symbols, np.asarray(coords), self.charge, self.spin, self.ecp, self.core
        )

    @classmethod
    def from_atoms_text(cls, text: str, unit: str, charge: int = 0, spin: int = 0) -> Molecule:
        """Parse lines ``SYMBOL x y z`` (blank lines and ``#`` comments allowed)."""
        symbols, coords = _parse_atom_lines(text.splitlines())
        return cls(tuple(symbols), _to_bohr(coords, unit), charge, spin)

    @classmethod
    def from_xyz(cls, path: str | Path, charge: int = 0, spin: int = 0) -> Molecule:
        """Read a standard xyz file (count line, comment line, atoms in angstrom)."""
        lines = Path(path).read_text().splitlines()
        try:
            n_atoms = int(lines[0].split()[0])
        except (IndexError, ValueError):
            raise MoleculeError(f"{path}: first line must be the number of atoms") from None
        body = lines[2 : 2 + n_atoms]
        if len(body) != n_atoms:
            raise MoleculeError(f"{path}: expected {n_atoms} atom lines, found {len(body)}")
        symbols, coords = _parse_atom_lines(body)
        return cls(tuple(symbols), _to_bohr(coords, "angstrom"), charge, spin)

    @classmethod
    def from_pyscf(cls, mol) -> Molecule:
        """Atoms, charge and spin of a built PySCF ``gto.Mole`` (ghost atoms not allowed)."""
        symbols = tuple(mol.atom_pure_symbol(i) for i in range(mol.natm))
        core = tuple(int(mol.atom_nelec_core(i)) for i in range(mol.natm))
        names = mol.ecp if isinstance(mol.ecp, dict) else dict.fromkeys(symbols, mol.ecp)
        ecp = tuple(
            (s, str(names[s]))
            for s in sorted(set(symbols))
            if any(c for t, c in zip(symbols, core, strict=True) if t == s) and s in names
        )
        coords = np.asarray(mol.atom_coords(unit="Bohr"))
        return cls(symbols, coords, mol.charge, mol.spin, ecp, core if any(core) else ())

    def atoms_text(self) -> str:
        """Lines ``SYMBOL x y z`` in bohr (exact round trip through ``from_atoms_text``)."""
        return "\n".join(
            f"{s} {x!r} {y!r} {z!r}"
            for s, (x, y, z) in zip(self.symbols, self.coords.tolist(), strict=True)
        )


def closest_overlap(points: np.ndarray, coords: np.ndarray) -> tuple[int, int, float] | None:
    """The first ``(point, nucleus, distance)`` closer than :data:`MIN_NUCLEAR_DISTANCE`
    (the limit for two atoms, here for e.g. point charges), else None."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    coords = np.asarray(coords, np.float64).reshape(-1, 3)
    if not len(points) or not len(coords):
        return None
    d = np.linalg.norm(points[:, None, :] - coords[None, :, :], axis=-1)
    close = np.argwhere(d < MIN_NUCLEAR_DISTANCE)
    if not len(close):
        return None
    c, i = (int(v) for v in close[0])
    return c, i, float(d[c, i])


def _parse_atom_lines(lines: list[str]) -> tuple[list[str], np.ndarray]:
    symbols, coords = [], []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4:
            raise MoleculeError(f"atom line {line!r} must be 'SYMBOL x y z'")
        symbol = parts[0].capitalize()
        if symbol not in ATOMIC_NUMBER:
            raise MoleculeError(f"unknown element {parts[0]!r}")
        try:
            xyz = [float(x) for x in parts[1:]]
        except ValueError:
            raise MoleculeError(f"atom line {line!r} has a non-numeric coordinate") from None
        symbols.append(symbol)
        coords.append(xyz)
    if not symbols:
        raise MoleculeError("no atoms given")
    return symbols, np.array(coords, dtype=np.float64)


def _to_bohr(coords: np.ndarray, unit: str) -> np.ndarray:
    if unit == "bohr":
        return coords
    if unit == "angstrom":
        return coords * ANGSTROM
    raise MoleculeError(f"unit must be 'bohr' or 'angstrom', not {unit!r}")


def _validate(
    symbols: tuple[str, ...], coords: np.ndarray, charge: int, spin: int, core: tuple[int, ...]
) -> None:
    for s in symbols:
        if s not in ATOMIC_NUMBER:
            raise MoleculeError(f"unknown element {s!r}")
    if len(symbols) == 0 or coords.shape != (len(symbols), 3):
        raise MoleculeError("need one (x, y, z) per atom")
    if not np.all(np.isfinite(coords)):
        raise MoleculeError("atom coordinates must be finite numbers")
    for i in range(len(symbols)):
        for j in range(i):
            d = float(np.linalg.norm(coords[i] - coords[j]))
            if d < MIN_NUCLEAR_DISTANCE:
                raise MoleculeError(
                    f"atoms {j + 1} ({symbols[j]}) and {i + 1} ({symbols[i]}) overlap "
                    f"(distance {d:.3g} bohr)"
                )
    if len(core) != len(symbols) or any(
        c < 0 or c >= ATOMIC_NUMBER[s] for s, c in zip(symbols, core, strict=False)
    ):
        raise MoleculeError("need one core-electron count per atom, below its atomic number")
    n_elec = sum(ATOMIC_NUMBER[s] for s in symbols) - sum(core) - charge
    valence = " valence" if any(core) else ""
    if n_elec <= 0:
        raise MoleculeError(f"charge {charge} leaves {n_elec}{valence} electrons")
    if abs(spin) > n_elec or (n_elec - spin) % 2 != 0:
        parity = "even" if n_elec % 2 == 0 else "odd"
        raise MoleculeError(
            f"spin {spin} is impossible for {n_elec}{valence} electrons (spin must be {parity} "
            f"and at most {n_elec} in magnitude)"
        )
    if spin < 0:
        raise MoleculeError("spin = n_up - n_down must be >= 0 (spin-up is the majority)")
    if not math.isfinite(float(charge)):
        raise MoleculeError("charge must be finite")
