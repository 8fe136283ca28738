"""Run configuration: a TOML file validated into frozen dataclasses.

Every problem with a configuration raises :class:`ConfigError`, whose message is one line
``"<file>: <key>: <message>"`` with ``key`` dotted (``train.walkers``).

The allowed keys, their types, defaults and range constraints live in one place: the
dataclasses of :mod:`nnqmc.config_schema`; TOML writing is in :mod:`nnqmc.config_toml`.
This module loads a document, applies ``--set`` overrides, checks what involves more
than one key and gives a loaded config other nuclei (:func:`with_molecule`); everything
public of the other two is importable from here (typed changes of other keys:
:func:`with_settings`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config_changes import (
    check_scan_training,
    check_thermal_scan,
    cross_check,
    with_molecule,
    with_settings,
)
from .config_checks import MAX_GEOMETRIES, MAX_NESTING, nesting, shown
from .config_schema import (
    ANSATZ_KINDS,
    BACKFLOW_FORMS,
    DEFAULT_BASIS,
    LAPLACIANS,
    OPTIMIZERS,
    OVERRIDE_SOURCE,
    PRECISIONS,
    PROPOSALS,
    SCAN_COMMON,
    SCAN_KIND_KEYS,
    SCAN_KINDS,
    SCAN_SHARED_KEYS,
    UNITS,
    AnsatzConfig,
    Config,
    ConfigError,
    DMCConfig,
    EvalConfig,
    HamiltonianConfig,
    SamplerConfig,
    ScanConfig,
    SystemConfig,
    SystemInput,
    TrainConfig,
    allowed_keys,
    describe,
    read_fields,
    section_classes,
    suggest,
)
from .config_toml import TOMLDecodeError, loads, parse_value, to_toml, toml_location
from .molecule import Molecule, MoleculeError

__all__ = [
    "ANSATZ_KINDS",
    "BACKFLOW_FORMS",
    "DEFAULT_BASIS",
    "LAPLACIANS",
    "OPTIMIZERS",
    "OVERRIDE_SOURCE",
    "PRECISIONS",
    "PROPOSALS",
    "SCAN_KINDS",
    "UNITS",
    "AnsatzConfig",
    "Config",
    "ConfigError",
    "DMCConfig",
    "EvalConfig",
    "HamiltonianConfig",
    "SamplerConfig",
    "ScanConfig",
    "SystemConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "to_toml",
    "with_molecule",
    "with_settings",
]


# --------------------------------------------------------------------------- public API
def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override (``section.key=value`` strings) and validate a TOML config file."""
    path = Path(path)
    source = str(path)
    problem = _file_problem(path)
    if problem:
        raise ConfigError(source, "file", problem)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "file", f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(source, "file", f"cannot read: {exc.strerror}") from None
    try:
        data = loads(text)
    except TOMLDecodeError as exc:
        where, message = toml_location(str(exc))
        raise ConfigError(source, where, f"malformed TOML: {message}") from None
    except RecursionError:
        raise ConfigError(source, "document", _TOO_DEEP) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(source, "document", f"malformed TOML: {exc}") from None
    _check_nesting(data, lambda key, message: ConfigError(source, key, message))
    data = apply_overrides(data, overrides, OVERRIDE_SOURCE)
    overridden = {_override_key(o) for o in overrides}
    return _build(data, source, path.resolve().parent, path, overridden)


def config_from_dict(data: dict, source: str = "<dict>", require_system: bool = True) -> Config:
    """Validate an already-parsed TOML document (relative xyz paths: from the cwd).

    With ``require_system=False`` the ``[system]`` section may be left out (``system`` is
    then None): the settings of a Python-API run whose Hamiltonian has no molecule.
    """
    return _build(data, str(source), Path.cwd(), None, set(), require_system)


def apply_overrides(data: dict, overrides: Sequence[str], source: str = OVERRIDE_SOURCE) -> dict:
    """Return a copy of ``data`` with each ``section.key=value`` (or ``key=value``) applied.

    The value is parsed as a TOML value (``400``, ``1e-3``, ``true``, ``"adam"``,
    ``[1, 2]``); if it does not parse it is taken as a bare string. Errors name ``source``.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    merged = copy.deepcopy(data)
    allowed = allowed_keys()
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, key or item, f"expected section.key=value, got {item!r}")
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in allowed[None]:
            merged[parts[0]] = parse_value(raw)
            continue
        if len(parts) == 2 and parts[0] in allowed and parts[0] is not None:
            section, name = parts
            if name not in allowed[section]:
                raise ConfigError(
                    source, key, f"unknown key in [{section}]{suggest(name, allowed[section])}"
                )
            table = merged.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(source, section, "is not a table, cannot override a key in it")
            table[name] = parse_value(raw)
            continue
        if len(parts) == 1 and parts[0] in allowed:
            raise ConfigError(source, key, f"is a section; override its keys as {key}.KEY=value")
        options = list(allowed[None]) + [
            f"{s}.{k}" for s, keys in allowed.items() if s is not None for k in keys
        ]
        raise ConfigError(source, key, f"unknown key{suggest(key, options)}")
    return merged


# --------------------------------------------------------------------------- internals
_TOO_DEEP = f"arrays or tables nested more than {MAX_NESTING} levels deep"


def _override_key(item: str) -> str:
    return str(item).partition("=")[0].strip()


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is no regular file ("no such file", "file name too long", ...), or None;
    never raises."""
    try:
        if path.is_file():
            return None
        return "not a regular file" if path.exists() else "no such file"
    except OSError as exc:
        reason = exc.strerror or "cannot be read"
        return reason[:1].lower() + reason[1:]
    except ValueError:  # a NUL character
        return "not a valid file name"


def _check_nesting(data: dict, fail) -> None:
    """Refuse arrays and tables nested deeper than ``MAX_NESTING`` (the document counts as
    one level), before anything recurses through them."""
    for key, value in data.items():
        inner = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in inner:
            if nesting(item) + (1 if sub is None else 2) > MAX_NESTING:
                raise fail(key if sub is None else f"{key}.{sub}", _TOO_DEEP)


def _build(
    data: dict,
    source: str,
    base_dir: Path,
    path: Path | None,
    overridden: set[str],
    require_system: bool = True,
) -> Config:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(OVERRIDE_SOURCE if key in overridden else source, key, message)

    if not isinstance(data, dict):
        raise ConfigError(source, "document", f"expected a table, got {describe(data)}")
    _check_nesting(data, fail)
    sections = section_classes()
    allowed = allowed_keys()
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise fail(key, f"must be a table [{key}], got {describe(value)}")
            for sub in value:
                if sub not in allowed[key]:
                    raise fail(
                        f"{key}.{sub}", f"unknown key in [{key}]{suggest(sub, allowed[key])}"
                    )
        elif key not in allowed[None]:
            kind = "section" if isinstance(value, dict) else "key"
            raise fail(key, f"unknown {kind}{suggest(key, allowed[None] + list(sections))}")

    top = read_fields(Config, data, "", fail, names=allowed[None])
    if "system" not in data and require_system:
        raise fail("system", "missing required section [system]")
    system = _build_system(data["system"], base_dir, fail) if "system" in data else None
    values: dict[str, Any] = dict(top, system=system)
    for name, cls in sections.items():
        if name != "system":
            values[name] = cls(**read_fields(cls, data.get(name, {}), f"{name}.", fail))
    cross_check(values, fail)
    if "scan" in data:
        values["scan"] = _check_scan(values["scan"], data["scan"], values["system"], base_dir, fail)
        check_scan_training(values, data["scan"], fail)
    return Config(**values, source=path, data=copy.deepcopy(data))


def _build_system(table: dict, base_dir: Path, fail) -> SystemConfig:
    raw = SystemInput(**read_fields(SystemInput, table, "system.", fail))
    if raw.atoms is None and raw.xyz is None:
        raise fail("system.atoms", "give the geometry as either atoms or xyz")
    if raw.atoms is not None and raw.xyz is not None:
        raise fail("system.xyz", "give either atoms or xyz, not both")

    if raw.atoms is not None:
        if raw.unit is None:
            raise fail("system.unit", 'required with atoms: "bohr" or "angstrom"')
        geometry_key = "system.atoms"

        def read(charge: int, spin: int) -> Molecule:
            return Molecule.from_atoms_text(raw.atoms, raw.unit, charge, spin)

    else:
        if raw.unit not in (None, "angstrom"):
            raise fail("system.unit", "xyz files are always in angstrom; remove unit")
        geometry_key = "system.xyz"
        xyz_path = Path(raw.xyz)
        if not xyz_path.is_absolute():
            xyz_path = base_dir / xyz_path
        problem = _file_problem(xyz_path)
        if problem:
            raise fail(geometry_key, f"{problem} {str(xyz_path)!r}")

        def read(charge: int, spin: int) -> Molecule:
            try:
                return Molecule.from_xyz(xyz_path, charge, spin)
            except (OSError, UnicodeDecodeError) as exc:
                raise MoleculeError(f"cannot read {str(xyz_path)!r}: {exc}") from None

    # Geometry first (neutral, lowest spin of the right parity), so that an error there
    # is reported against atoms/xyz and one in the electron count against charge/spin.
    try:
        neutral = _neutral(read)
    except MoleculeError as exc:
        raise fail(geometry_key, str(exc)) from None
    make = read
    potentials: dict = {}
    if raw.ecp is not None:
        table["ecp"] = _located_ecp(raw.ecp, base_dir)  # config.toml: absolute file paths
        potentials = _system_ecp(table["ecp"], neutral.symbols, fail)
        geometry = neutral
        names = tuple((s, potentials[s].name) for s in sorted(potentials))
        core = tuple(potentials[s].core if s in potentials else 0 for s in geometry.symbols)

        def make(charge: int, spin: int) -> Molecule:
            return Molecule(geometry.symbols, geometry.coords, charge, spin, names, core)

        neutral = _neutral(make)  # valence electrons: one of the two spins fits
    try:
        molecule = (
            neutral if (raw.charge, raw.spin) == (0, neutral.spin) else make(raw.charge, raw.spin)
        )
    except MoleculeError as exc:
        n_elec = neutral.n_elec - raw.charge
        raise fail("system.charge" if n_elec <= 0 else "system.spin", str(exc)) from None

    from .pseudopotentials import ecp_basis_mismatch
    from .scf import BasisError, check_basis

    try:
        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange
            warnings.simplefilter("ignore")
            check_basis(raw.basis, molecule.symbols)
    except BasisError as exc:
        raise fail("system.basis", str(exc)) from None
    for line in ecp_basis_mismatch(raw.basis, potentials):
        warnings.warn(f"system.basis: {line}", ECPBasisWarning, stacklevel=2)
    return SystemConfig(molecule=molecule, basis=raw.basis, ecp_points=raw.ecp_points)


def _neutral(make) -> Molecule:
    """The neutral molecule with the lowest spin of the right parity (the last error if
    neither fits)."""
    try:
        return make(0, 0)
    except MoleculeError:
        return make(0, 1)


class ECPBasisWarning(UserWarning):
    """An ECP atom with a basis not made for its potential."""


def _located_ecp(spec, base_dir: Path):
    """``[system] ecp`` with file names made absolute (relative to the input file)."""

    def located(name: str) -> str:
        path = Path(os.path.expanduser(name))  # unchanged for an unknown ~user
        if not path.is_absolute():
            path = base_dir / path
        return str(path.resolve()) if _file_problem(path) is None else name

    return located(spec) if isinstance(spec, str) else {k: located(v) for k, v in spec.items()}


def _system_ecp(spec, symbols, fail) -> dict:
    """Element -> :class:`~nnqmc.ecp.AtomECP` of ``[system] ecp``; one ConfigError line for
    an unknown name, a missing potential or a malformed file."""
    from .pseudopotentials import ECPError, resolve_ecp

    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(symbols))
        if unknown:
            raise fail("system.ecp", f"element {unknown[0]} is not in the molecule")
    try:
        return resolve_ecp(spec, symbols)
    except ECPError as exc:
        raise fail("system.ecp", str(exc)) from None


def _check_scan(scan: ScanConfig, table: dict, system, base_dir: Path, fail) -> ScanConfig:
    """Constraints of ``[scan]``: the keys its kind needs, atom indices, ranges; a relative
    ``xyz`` is resolved against the TOML file's directory."""
    if scan.kind is None:
        raise fail("scan.kind", f"missing required key (one of {', '.join(SCAN_KINDS)})")
    used = SCAN_KIND_KEYS[scan.kind] + SCAN_COMMON + SCAN_SHARED_KEYS
    for key in table:
        if key not in used:
            raise fail(f"scan.{key}", f"not used with kind = {scan.kind!r}")
    n_atoms = len(system.molecule.symbols) if system is not None else 0

    def check_atoms(key: str, atoms: Sequence[int], sizes: tuple[int, ...]) -> None:
        if len(atoms) not in sizes:
            want = " or ".join(str(n) for n in sizes)
            raise fail(key, f"expected {want} atom indices, got {list(atoms)}")
        if len(set(atoms)) != len(atoms):
            raise fail(key, f"atom indices must differ, got {list(atoms)}")
        for i in atoms:
            if not 0 <= i < n_atoms:
                raise fail(key, f"atom index {i} out of range 0..{n_atoms - 1}")

    def check_values(key: str, values: Sequence[float], angle: bool) -> None:
        if not values:
            raise fail(key, "must not be empty")
        for v in values:
            if angle and not 0 < v <= 180:
                raise fail(key, f"angles must lie in (0, 180] degrees, got {v!r}")
            if not angle and v <= 0:
                raise fail(key, f"distances must be > 0, got {v!r}")

    def check_grid(key: str, entries: Sequence | None, what: str) -> None:
        """grid_atoms and one entry of ``key`` per coordinate."""
        if scan.grid_atoms is None or entries is None:
            missing = "scan.grid_atoms" if scan.grid_atoms is None else key
            raise fail(missing, "missing required key")
        if not scan.grid_atoms or len(scan.grid_atoms) != len(entries):
            raise fail(key, f"need one {what} per entry of grid_atoms")
        for atoms in scan.grid_atoms:
            check_atoms("scan.grid_atoms", atoms, (2, 3))

    def check_count(key: str, n: int) -> None:
        if n > MAX_GEOMETRIES:
            raise fail(key, f"{shown(n)} geometries; at most {MAX_GEOMETRIES}")

    if scan.kind in ("bond", "angle"):
        if scan.atoms is None:
            raise fail("scan.atoms", "missing required key")
        check_atoms("scan.atoms", scan.atoms, (2,) if scan.kind == "bond" else (3,))
        if (scan.values is None) == (scan.linspace is None):
            raise fail("scan.values", "give either values or linspace = [start, stop, count]")
        if scan.linspace is not None:
            start, stop, count = scan.linspace
            if count < 1:
                raise fail("scan.linspace", f"count must be >= 1, got {count}")
            check_count("scan.linspace", count)
            check_values("scan.linspace", [start, stop], scan.kind == "angle")
        else:
            check_values("scan.values", scan.values, scan.kind == "angle")
    elif scan.kind == "grid":
        check_grid("scan.grid_values", scan.grid_values, "list of values")
        for atoms, values in zip(scan.grid_atoms, scan.grid_values, strict=True):
            check_values("scan.grid_values", values, len(atoms) == 3)
        check_count("scan.grid_values", math.prod(len(v) for v in scan.grid_values))
    elif scan.kind == "adaptive":
        check_grid("scan.ranges", scan.ranges, "[start, stop, count]")
        for atoms, (start, stop, count) in zip(scan.grid_atoms, scan.ranges, strict=True):
            check_values("scan.ranges", [start, stop], len(atoms) == 3)
            if count < 2:
                raise fail("scan.ranges", f"count must be >= 2, got {count}")
        pool = math.prod(count for _, _, count in scan.ranges)
        check_count("scan.ranges", pool)
        if scan.initial < 2 or scan.initial > min(scan.budget, pool):
            raise fail(
                "scan.initial",
                f"must lie in 2..{min(scan.budget, pool)} (budget, candidates), got {scan.initial}",
            )
    elif scan.kind == "normal_modes":
        if not scan.amplitudes:
            raise fail("scan.amplitudes", "missing required key (displacements along each mode)")
        if n_atoms < 2:
            raise fail("scan.kind", "normal modes need at least two atoms")
        for m in scan.modes or ():
            if not 0 <= m < 3 * n_atoms - 5:
                raise fail("scan.modes", f"mode {m} out of range")
    elif scan.kind == "thermal":
        if n_atoms < 2:
            raise fail("scan.kind", "a thermal scan needs at least two atoms")
        check_thermal_scan(scan, table, fail)
    if scan.kind == "xyz" and scan.xyz is None:
        raise fail("scan.xyz", "missing required key")
    if scan.xyz is not None:  # kind xyz, or a thermal scan's initial geometries
        path = Path(scan.xyz)
        path = path if path.is_absolute() else base_dir / path
        problem = _file_problem(path)
        if problem:
            raise fail("scan.xyz", f"{problem} {str(path)!r}")
        scan = dataclasses.replace(scan, xyz=str(path))
    return scan
