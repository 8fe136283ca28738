"""Run configuration: a TOML file validated into frozen dataclasses.

Every problem with a configuration raises :class:`ConfigError`, whose message is one line
``"<file>: <key>: <message>"`` with ``key`` dotted (``train.walkers``).

The allowed keys, their types and defaults live in one place: the dataclass fields below
(``_SystemInput`` for the raw ``[system]`` keys, which are turned into a ``Molecule``).
Range and choice constraints are attached to the fields as metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .molecule import Molecule, MoleculeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ANSATZ_KINDS",
    "OPTIMIZERS",
    "PRECISIONS",
    "UNITS",
    "AnsatzConfig",
    "Config",
    "ConfigError",
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
]

ANSATZ_KINDS = ("hf", "jastrow", "paulinet", "generalized")
OPTIMIZERS = ("adam", "spring")
LAPLACIANS = ("forward", "folx", "exact")
BACKFLOW_FORMS = ("exp", "linear", "none")
PRECISIONS = ("float32", "mixed", "float64")
PROPOSALS = ("uniform", "nucleus")
UNITS = ("bohr", "angstrom")
SCAN_KINDS = ("bond", "angle", "grid", "normal_modes", "random", "xyz")
DEFAULT_BASIS = "cc-pvdz"
OVERRIDE_SOURCE = "--set"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class ConfigError(ValueError):
    """An invalid configuration; ``str()`` is ``"<file>: <key>: <message>"`` on one line."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = _one_line(str(source))
        self.key = _one_line(str(key))
        self.message = _one_line(str(message))
        super().__init__(f"{self.source}: {self.key}: {self.message}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- constraints
Check = Callable[[Any], "str | None"]


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def _open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must lie strictly between 0 and 1, got {v!r}"


def _half_open_unit(v: Any) -> str | None:
    return None if 0 <= v < 1 else f"must satisfy 0 <= value < 1, got {v!r}"


def _non_empty(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def _safe_name(v: Any) -> str | None:
    if _SAFE_NAME.fullmatch(v):
        return None
    return (
        f"{v!r} is not a safe file name (letters, digits, '.', '_', '+', '-'; "
        "starting with a letter or digit; at most 100 characters)"
    )


def _cas(v: Any) -> str | None:
    n_orb, n_elec = v
    if n_orb <= 0 or n_elec <= 0:
        return f"[n_orbitals, n_electrons] must both be > 0, got {list(v)}"
    if n_elec > 2 * n_orb:
        return f"{n_elec} electrons do not fit in {n_orb} orbitals"
    return None


def _f(default: Any = dataclasses.MISSING, *, check: Check | None = None, choices=None):
    """A dataclass field carrying its validation rule as metadata."""
    return field(default=default, metadata={"check": check, "choices": choices})


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class SystemConfig:
    molecule: Molecule
    basis: str = DEFAULT_BASIS


@dataclass(frozen=True)
class AnsatzConfig:
    kind: str = _f("paulinet", choices=ANSATZ_KINDS)  # "hf" = bare determinants
    cusp_correction: bool = True  # nuclear cusp of the HF orbitals
    ee_cusp: bool = True  # the fixed electron-electron cusp factor gamma
    embedding_dim: int = _f(32, check=_positive)
    layers: int = _f(3, check=_non_negative)
    n_rbf: int = _f(16, check=_positive)
    cutoff: float = _f(10.0, check=_positive)
    jastrow_layers: int = _f(3, check=_non_negative)
    backflow_layers: int = _f(3, check=_non_negative)
    backflow: str = _f("exp", choices=BACKFLOW_FORMS)  # f = exp(g) | 1 + g | off
    cas: tuple[int, int] | None = _f(None, check=_cas)  # [n_orbitals, n_electrons]
    determinants: int = _f(1, check=_positive)
    # kind = "generalized" only (see nnqmc.ansatz.generalized):
    # one n x n determinant over both spins; off by default: started block-diagonal (as the
    # exact HF start needs) its cross blocks get no gradient (docs/generalized.md)
    full_determinant: bool = False
    envelopes: bool = True  # learned orbital corrections with exponential envelopes
    en_vectors: bool = True  # r_i - R_I as embedding inputs
    copies: int = _f(1, check=_positive)  # learned copies of each HF/CASSCF determinant


@dataclass(frozen=True)
class SamplerConfig:
    initial_width: float = _f(0.3, check=_positive)
    target_acceptance: float = _f(0.5, check=_open_unit)
    burn_in: int = _f(200, check=_non_negative)
    decorrelation: int = _f(10, check=_positive)
    # step width per electron: the same for all, or growing with the distance to the
    # nearest nucleus (core electrons small steps, valence large; nnqmc.sampler)
    proposal: str = _f("uniform", choices=PROPOSALS)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(2000, check=_positive)
    walkers: int = _f(1024, check=_positive)
    seed: int = _f(0, check=_non_negative)
    optimizer: str = _f("spring", choices=OPTIMIZERS)
    learning_rate: float | None = _f(None, check=_positive)  # None: the optimizer's default
    lr_decay_steps: float = _f(1000.0, check=_positive)
    clip_width: float = _f(5.0, check=_positive)
    max_grad_norm: float | None = _f(None, check=_positive)  # None: the optimizer's default
    laplacian: str = _f("forward", choices=LAPLACIANS)
    # walkers per local-energy chunk; None: automatic (CPU ~1 MiB of Jacobians, GPU all)
    local_energy_chunk: int | None = _f(None, check=_positive)
    checkpoint_every: int = _f(100, check=_positive)
    max_bad_steps: int = _f(10, check=_positive)
    damping: float = _f(1e-3, check=_non_negative)
    momentum: float = _f(0.9, check=_half_open_unit)


@dataclass(frozen=True)
class EvalConfig:
    steps: int = _f(2000, check=_positive)
    decorrelation: int = _f(10, check=_positive)
    dipole: bool = True  # report the dipole moment (with error bars) in result.json


@dataclass(frozen=True)
class HamiltonianConfig:
    """External potentials added to the molecular Hamiltonian (and to its SCF), a.u./bohr.

    ``field``: uniform electric field F, V = F . (sum_i r_i - sum_I Z_I R_I);
    ``point_charges``: rows [q, x, y, z]; ``harmonic``: omega of 1/2 omega^2 sum_i |r_i - c|^2
    with c = ``harmonic_center``. See :mod:`nnqmc.external`.
    """

    field: tuple[float, float, float] | None = None
    point_charges: tuple[tuple[float, float, float, float], ...] = ()
    harmonic: float | None = _f(None, check=_positive)
    harmonic_center: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ScanConfig:
    """``[scan]`` of ``nnqmc scan``: how to generate geometries (see :mod:`nnqmc.pes`).

    Atom indices count from 0; distances and displacements are in ``unit``, angles in
    degrees. ``steps``: training steps of each warm-started geometry (the first geometry,
    and every one with ``--cold``, trains ``train.steps``).
    """

    kind: str | None = _f(None, choices=SCAN_KINDS)
    atoms: tuple[int, ...] | None = None  # bond: [i, j] (j moves); angle: [i, j, k] (k moves)
    values: tuple[float, ...] | None = None  # bond lengths or angles
    linspace: tuple[float, float, int] | None = None  # [start, stop, count] instead of values
    grid_atoms: tuple[tuple[int, ...], ...] | None = None  # grid: one bond/angle per entry
    grid_values: tuple[tuple[float, ...], ...] | None = None  # grid: the values of each
    unit: str = _f("bohr", choices=UNITS)
    modes: tuple[int, ...] | None = None  # normal_modes: which (0 = softest), default all
    amplitudes: tuple[float, ...] | None = None  # normal_modes: displacements along each mode
    count: int = _f(10, check=_positive)  # random: number of geometries
    amplitude: float = _f(0.05, check=_positive)  # random: std of each coordinate's shift
    seed: int = _f(0, check=_non_negative)  # random
    xyz: str | None = _f(None, check=_non_empty)  # xyz: multi-frame file (angstrom)
    steps: int | None = _f(None, check=_positive)
    forces: bool = False  # Hellmann-Feynman forces (zero-variance estimator)
    zero_bias: bool = True  # with the zero-bias (Pulay-like) correction
    ccsd_t: bool = False  # CCSD(T) baseline in the same basis
    reference: tuple[float, ...] | None = None  # exact energies (Ha), one per geometry


# Keys of [scan] that each kind reads (the others are always allowed).
_SCAN_KIND_KEYS = {
    "bond": ("atoms", "values", "linspace", "unit"),
    "angle": ("atoms", "values", "linspace"),
    "grid": ("grid_atoms", "grid_values", "unit"),
    "normal_modes": ("modes", "amplitudes", "unit"),
    "random": ("count", "amplitude", "seed", "unit"),
    "xyz": ("xyz",),
}
_SCAN_COMMON = ("kind", "steps", "forces", "zero_bias", "ccsd_t", "reference")


@dataclass(frozen=True, kw_only=True)
class Config:
    name: str = _f(check=_safe_name)
    reference_energy: float | None = None
    precision: str = _f("float64", choices=PRECISIONS)
    system: SystemConfig | None = None  # None only for Python-API runs without a molecule
    hamiltonian: HamiltonianConfig = field(default_factory=HamiltonianConfig)
    ansatz: AnsatzConfig = field(default_factory=AnsatzConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)  # kind None: no [scan]
    source: Path | None = None
    data: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class _SystemInput:
    """The raw keys of ``[system]``; validated, then turned into ``SystemConfig``."""

    atoms: str | None = _f(None, check=_non_empty)  # lines "SYMBOL x y z"
    xyz: str | None = _f(None, check=_non_empty)  # path relative to the TOML file
    unit: str | None = _f(None, choices=UNITS)  # required with atoms
    charge: int = 0
    spin: int = 0  # n_up - n_down
    basis: str = _f(DEFAULT_BASIS, check=_non_empty)


# Top-level bookkeeping fields that are not read from the document.
_NOT_IN_DOCUMENT = ("source", "data")
# Section name -> dataclass describing the keys allowed in the TOML table.
_SECTION_INPUT: dict[str, type] = {"system": _SystemInput}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_class(tp: Any) -> type | None:
    """The dataclass of a section field's type (``X`` or ``X | None``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _sections() -> dict[str, type]:
    """Section name -> dataclass of its TOML keys, derived from ``Config``'s fields."""
    hints = _hints(Config)
    out = {}
    for f in dataclasses.fields(Config):
        cls = _section_class(hints[f.name])
        if cls is not None:
            out[f.name] = _SECTION_INPUT.get(f.name, cls)
    return out


def _top_level_fields() -> list[dataclasses.Field]:
    hints = _hints(Config)
    return [
        f
        for f in dataclasses.fields(Config)
        if f.name not in _NOT_IN_DOCUMENT and _section_class(hints[f.name]) is None
    ]


def _allowed_keys() -> dict[str | None, list[str]]:
    """``None`` -> top-level scalar keys; section -> its keys."""
    allowed: dict[str | None, list[str]] = {None: [f.name for f in _top_level_fields()]}
    for name, cls in _sections().items():
        allowed[name] = [f.name for f in dataclasses.fields(cls)]
    return allowed


def _suggest(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if match:
        return f" (did you mean {match[0]!r}?)"
    return f" (valid: {', '.join(options)})"


# --------------------------------------------------------------------------- type checks
def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _convert(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError`` with a message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:  # pragma: no cover - no such field
            raise TypeError(f"unsupported field type {tp}")
        return _convert(value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise TypeError(f"expected a finite number, got {value!r}")
            return float(value)
        raise TypeError(f"expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {_describe(value)}")
    if origin is tuple and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {_describe(value)}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item) for v in value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"expected a list of {len(args)} items, got {_describe(value)}")
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    raise TypeError(f"unsupported field type {tp}")  # pragma: no cover


def _read_fields(
    cls: type,
    table: dict,
    prefix: str,
    fail: Callable[[str, str], ConfigError],
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Validate ``table`` against the fields of ``cls``; return field name -> value."""
    fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in fields:
        key = f"{prefix}{f.name}"
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise fail(key, "missing required key")
            continue
        try:
            value = _convert(table[f.name], hints[f.name])
        except TypeError as exc:
            raise fail(key, str(exc)) from None
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        check = f.metadata.get("check")
        if check is not None and value is not None:
            message = check(value)
            if message:
                raise fail(key, message)
        out[f.name] = value
    return out


# --------------------------------------------------------------------------- public API
def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override (``section.key=value`` strings) and validate a TOML config file."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(source, "file", "no such file")
    if not path.is_file():
        raise ConfigError(source, "file", "not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "file", f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(source, "file", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where, message = _toml_location(str(exc))
        raise ConfigError(source, where, f"malformed TOML: {message}") from None
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
    allowed = _allowed_keys()
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, key or item, f"expected section.key=value, got {item!r}")
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in allowed[None]:
            merged[parts[0]] = _parse_value(raw)
            continue
        if len(parts) == 2 and parts[0] in allowed and parts[0] is not None:
            section, name = parts
            if name not in allowed[section]:
                raise ConfigError(
                    source, key, f"unknown key in [{section}]{_suggest(name, allowed[section])}"
                )
            table = merged.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(source, section, "is not a table, cannot override a key in it")
            table[name] = _parse_value(raw)
            continue
        if len(parts) == 1 and parts[0] in allowed:
            raise ConfigError(source, key, f"is a section; override its keys as {key}.KEY=value")
        options = list(allowed[None]) + [
            f"{s}.{k}" for s, keys in allowed.items() if s is not None for k in keys
        ]
        raise ConfigError(source, key, f"unknown key{_suggest(key, options)}")
    return merged


def to_toml(data: dict) -> str:
    """Serialise a config document (scalars, lists, one level of tables) as TOML."""
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{_toml_key(name)}]")
        for key, value in table.items():
            if isinstance(value, dict):
                raise ValueError(f"nested table {name}.{key} is not supported")
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------- internals
def _toml_location(message: str) -> tuple[str, str]:
    match = re.search(r"\s*\((at line (\d+), column (\d+)|at end of document)\)\s*$", message)
    if not match:
        return "document", message
    text = message[: match.start()]
    if match.group(2):
        return f"line {match.group(2)}, column {match.group(3)}", text
    return "end of document", text


def _override_key(item: str) -> str:
    return str(item).partition("=")[0].strip()


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"value"}:  # e.g. an embedded newline smuggling in another key
        return raw
    return parsed["value"]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        multiline_safe = not re.search(r'"""|\\|[\x00-\x08\x0b-\x1f\x7f]', value)
        if "\n" in value and multiline_safe:
            return f'"""\n{value}"""'
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")


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
        raise ConfigError(source, "document", f"expected a table, got {_describe(data)}")
    sections = _sections()
    allowed = _allowed_keys()
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise fail(key, f"must be a table [{key}], got {_describe(value)}")
            for sub in value:
                if sub not in allowed[key]:
                    raise fail(
                        f"{key}.{sub}", f"unknown key in [{key}]{_suggest(sub, allowed[key])}"
                    )
        elif key not in allowed[None]:
            kind = "section" if isinstance(value, dict) else "key"
            raise fail(key, f"unknown {kind}{_suggest(key, allowed[None] + list(sections))}")

    top = _read_fields(Config, data, "", fail, names=allowed[None])
    if "system" not in data and require_system:
        raise fail("system", "missing required section [system]")
    system = _build_system(data["system"], base_dir, fail) if "system" in data else None
    values: dict[str, Any] = dict(top, system=system)
    for name, cls in sections.items():
        if name != "system":
            values[name] = cls(**_read_fields(cls, data.get(name, {}), f"{name}.", fail))
    _cross_check(values, fail)
    if "scan" in data:
        values["scan"] = _check_scan(values["scan"], data["scan"], values["system"], base_dir, fail)
    return Config(**values, source=path, data=copy.deepcopy(data))


def _build_system(table: dict, base_dir: Path, fail) -> SystemConfig:
    raw = _SystemInput(**_read_fields(_SystemInput, table, "system.", fail))
    if raw.atoms is None and raw.xyz is None:
        raise fail("system.atoms", "give the geometry as either atoms or xyz")
    if raw.atoms is not None and raw.xyz is not None:
        raise fail("system.xyz", "give either atoms or xyz, not both")

    if raw.atoms is not None:
        if raw.unit is None:
            raise fail("system.unit", 'required with atoms: "bohr" or "angstrom"')
        geometry_key = "system.atoms"

        def make(charge: int, spin: int) -> Molecule:
            return Molecule.from_atoms_text(raw.atoms, raw.unit, charge, spin)

    else:
        if raw.unit not in (None, "angstrom"):
            raise fail("system.unit", "xyz files are always in angstrom; remove unit")
        geometry_key = "system.xyz"
        xyz_path = Path(raw.xyz)
        if not xyz_path.is_absolute():
            xyz_path = base_dir / xyz_path
        if not xyz_path.is_file():
            raise fail(geometry_key, f"no such file {str(xyz_path)!r}")

        def make(charge: int, spin: int) -> Molecule:
            try:
                return Molecule.from_xyz(xyz_path, charge, spin)
            except (OSError, UnicodeDecodeError) as exc:
                raise MoleculeError(f"cannot read {str(xyz_path)!r}: {exc}") from None

    # Geometry first (neutral, lowest spin of the right parity), so that an error there
    # is reported against atoms/xyz and one in the electron count against charge/spin.
    neutral = None
    for trial_spin in (0, 1):
        try:
            neutral = make(0, trial_spin)
            break
        except MoleculeError as exc:
            error = exc
    if neutral is None:
        raise fail(geometry_key, str(error))
    try:
        molecule = (
            neutral if (raw.charge, raw.spin) == (0, neutral.spin) else make(raw.charge, raw.spin)
        )
    except MoleculeError as exc:
        n_elec = neutral.n_elec - raw.charge
        raise fail("system.charge" if n_elec <= 0 else "system.spin", str(exc)) from None

    from .scf import BasisError, check_basis

    try:
        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange
            warnings.simplefilter("ignore")
            check_basis(raw.basis, molecule.symbols)
    except BasisError as exc:
        raise fail("system.basis", str(exc)) from None
    return SystemConfig(molecule=molecule, basis=raw.basis)


def _cross_check(values: dict[str, Any], fail) -> None:
    """Constraints that involve more than one field."""
    ansatz: AnsatzConfig = values["ansatz"]
    if values["system"] is None:
        return
    molecule: Molecule = values["system"].molecule
    if ansatz.cas is not None:
        n_orb, n_elec = ansatz.cas
        if n_elec > molecule.n_elec:
            raise fail(
                "ansatz.cas",
                f"{n_elec} active electrons but the molecule has only {molecule.n_elec}",
            )
        if (n_elec - molecule.spin) % 2 or n_elec < molecule.spin:
            raise fail("ansatz.cas", f"{n_elec} active electrons cannot carry spin {molecule.spin}")


def _check_scan(scan: ScanConfig, table: dict, system, base_dir: Path, fail) -> ScanConfig:
    """Constraints of ``[scan]``: the keys its kind needs, atom indices, ranges; a relative
    ``xyz`` is resolved against the TOML file's directory."""
    if scan.kind is None:
        raise fail("scan.kind", f"missing required key (one of {', '.join(SCAN_KINDS)})")
    used = _SCAN_KIND_KEYS[scan.kind] + _SCAN_COMMON
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
            check_values("scan.linspace", [start, stop], scan.kind == "angle")
        else:
            check_values("scan.values", scan.values, scan.kind == "angle")
    elif scan.kind == "grid":
        if scan.grid_atoms is None or scan.grid_values is None:
            missing = "scan.grid_atoms" if scan.grid_atoms is None else "scan.grid_values"
            raise fail(missing, "missing required key")
        if not scan.grid_atoms or len(scan.grid_atoms) != len(scan.grid_values):
            raise fail("scan.grid_values", "need one list of values per entry of grid_atoms")
        for atoms, values in zip(scan.grid_atoms, scan.grid_values, strict=True):
            check_atoms("scan.grid_atoms", atoms, (2, 3))
            check_values("scan.grid_values", values, len(atoms) == 3)
    elif scan.kind == "normal_modes":
        if not scan.amplitudes:
            raise fail("scan.amplitudes", "missing required key (displacements along each mode)")
        if n_atoms < 2:
            raise fail("scan.kind", "normal modes need at least two atoms")
        for m in scan.modes or ():
            if not 0 <= m < 3 * n_atoms - 5:
                raise fail("scan.modes", f"mode {m} out of range")
    elif scan.kind == "xyz":
        if scan.xyz is None:
            raise fail("scan.xyz", "missing required key")
        path = Path(scan.xyz)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise fail("scan.xyz", f"no such file {str(path)!r}")
        scan = dataclasses.replace(scan, xyz=str(path))
    return scan
