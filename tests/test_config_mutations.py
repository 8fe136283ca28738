"""Seeded mutations of the shipped inputs (issue 31): every mutant of every
``systems/*.toml`` is either accepted by :func:`nnqmc.config.load_config` or refused with one
short :class:`ConfigError` line, never another exception; a few refused ones go through
``nnqmc run`` too (exit 2, one line, nothing written). Validation only: no run starts."""

from __future__ import annotations

import copy
import dataclasses
import random
import re
import typing
import warnings
import zlib
from pathlib import Path

import pytest

from nnqmc.cli import main
from nnqmc.config import ConfigError, load_config, to_toml
from nnqmc.config_checks import LONG_LINE
from nnqmc.config_schema import Config, allowed_keys, section_classes
from nnqmc.config_toml import loads

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = sorted((ROOT / "systems").glob("*.toml"))
MUTANTS_PER_FILE = 24
HUGE = 2**63 - 1
LONG = "x" * 50_000
SHORT_MESSAGE = LONG_LINE + 40  # key or message of a ConfigError, after the cut

H2 = 'name = "h2"\n[system]\natoms = "H 0 0 0\\nH 0 0 1.4"\nunit = "bohr"\n'


def _fields_of(kind: type) -> dict[str | None, list[str]]:
    """Section (None: top level) -> its keys whose type is ``kind`` or ``kind | None``."""
    out: dict[str | None, list[str]] = {}
    classes = {None: Config, **section_classes()}
    allowed = allowed_keys()
    for section, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in allowed[section] and hints[f.name] in (kind, kind | None):
                out.setdefault(section, []).append(f.name)
    return out


INT_FIELDS = _fields_of(int)
FLOAT_FIELDS = _fields_of(float)
STR_FIELDS = _fields_of(str)
CHOICES = {
    (s, f.name): list(f.metadata["choices"])
    for s, cls in {None: Config, **section_classes()}.items()
    for f in dataclasses.fields(cls)
    if f.metadata.get("choices")
}
PATHS = ["a" * 256, "a/" * 2100, "no/such.xyz", "a\x00b", "~nosuchuser/x.xyz", "/", "."]
OTHER_TYPES = ["text", True, 7, 2.5, -3, [1, 2], [], {"a": 1}, [[1.0, 2.0]]]


# --------------------------------------------------------------------------- mutations
def _section(data: dict, rng: random.Random) -> dict:
    """A random table of the document (the document itself for top-level keys)."""
    tables = [data] + [v for v in data.values() if isinstance(v, dict)]
    return rng.choice(tables)


def _table(data: dict, section: str | None) -> dict:
    """The table ``section`` of ``data`` (a new one where it is missing or not a table)."""
    if section is None:
        return data
    if not isinstance(data.get(section), dict):
        data[section] = {}
    return data[section]


def _set(data: dict, section: str | None, key: str, value) -> None:
    _table(data, section)[key] = value


def _pick(fields: dict[str | None, list[str]], rng: random.Random) -> tuple[str | None, str]:
    section = rng.choice(sorted(fields, key=str))
    return section, rng.choice(fields[section])


def delete_key(data: dict, rng: random.Random) -> str:
    table = _section(data, rng)
    if not table:
        return "nothing to delete"
    key = rng.choice(sorted(table))
    del table[key]
    return f"del {key}"


def swap_type(data: dict, rng: random.Random) -> str:
    table = _section(data, rng)
    if not table:
        return "nothing to swap"
    key, value = rng.choice(sorted(table)), rng.choice(OTHER_TYPES)
    table[key] = copy.deepcopy(value)
    return f"{key} = {value!r}"


def plausible(data: dict, rng: random.Random) -> str:
    """An ordinary value: an integer of 0..100, a number in (0, 2), one of the choices."""
    kind = rng.choice([INT_FIELDS, FLOAT_FIELDS, STR_FIELDS])
    section, key = _pick(kind, rng)
    if kind is INT_FIELDS:
        value = rng.randint(0, 100)
    elif kind is FLOAT_FIELDS:
        value = rng.uniform(0.0, 2.0)
    else:
        value = rng.choice(CHOICES.get((section, key), ["x"]))
    _set(data, section, key, value)
    return f"{section}.{key} = {value!r}"


def extreme_int(data: dict, rng: random.Random) -> str:
    section, key = _pick(INT_FIELDS, rng)
    value = rng.choice([0, -1, 1, HUGE, -HUGE - 1, 2**31, 10**12, 2**24 + 1, 10**9 + 1, 65, 4097])
    _set(data, section, key, value)
    return f"{section}.{key} = {value}"


def extreme_float(data: dict, rng: random.Random) -> str:
    section, key = _pick(FLOAT_FIELDS, rng)
    value = rng.choice([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 0.0, 5e-324])
    _set(data, section, key, value)
    return f"{section}.{key} = {value}"


def odd_string(data: dict, rng: random.Random) -> str:
    fields = {**STR_FIELDS, "system": ["atoms", "unit", "basis", "ecp"]}
    section, key = _pick(fields, rng)
    value = rng.choice([LONG, "x" * 256, "", " ", "a\nb", "\x00", "é" * 70, "H 0 0 0\n" * 2000])
    _set(data, section, key, value)
    return f"{section}.{key} = <{len(value)} characters>"


def unknown_key(data: dict, rng: random.Random) -> str:
    section = rng.choice([None, *sorted(section_classes()), "trian", LONG[:300]])
    key = rng.choice(["walker", "colour", "x" * 300, "", "layers"])
    _set(data, section, key, rng.choice(OTHER_TYPES))
    return f"{section}.{key[:20]} added"


def wrong_unit(data: dict, rng: random.Random) -> str:
    section = rng.choice(["system", "scan"])
    value = rng.choice(["furlong", "Bohr", "ANGSTROM", "", "bohr ", 1, None])
    if value is None:
        _table(data, section).pop("unit", None)
    else:
        _set(data, section, "unit", value)
    return f"{section}.unit = {value!r}"


def long_path(data: dict, rng: random.Random) -> str:
    path = rng.choice(PATHS)
    where = rng.choice(["system.xyz", "scan.xyz", "system.ecp"])
    if where == "system.xyz":
        _table(data, "system").pop("atoms", None)
    elif where == "scan.xyz":
        data["scan"] = {"kind": "xyz"}
    section, key = where.split(".")
    _set(data, section, key, path)
    return f"{where} = <{len(path)} characters>"


def garbled_atoms(data: dict, rng: random.Random) -> str:
    atoms = rng.choice(
        [
            "H 0 0 0\nH 0 0 0",
            "H 0 0 1e308",
            "Xx 0 0 0",
            "H 0 0",
            "H 0 0 nan",
            "H 0 0 " + "9" * 5000,
            "\n".join(f"H 0 0 {i}" for i in range(300)),
        ]
    )
    _set(data, "system", "atoms", atoms)
    return f"system.atoms = {atoms[:20]!r}..."


def nested(data: dict, rng: random.Random) -> str:
    depth = rng.choice([3, 9, 40])
    value: object = 1.0
    for _ in range(depth):
        value = [value] if rng.random() < 0.7 else {"a": value}
    section, key = _pick({**INT_FIELDS, "hamiltonian": ["point_charges"]}, rng)
    _set(data, section, key, value)
    return f"{section}.{key} nested {depth} deep"


MUTATIONS = [
    plausible,
    plausible,
    plausible,
    delete_key,
    swap_type,
    extreme_int,
    extreme_int,
    extreme_float,
    odd_string,
    unknown_key,
    wrong_unit,
    long_path,
    garbled_atoms,
    nested,
]


def _mutant(data: dict, rng: random.Random) -> tuple[dict, list[str]]:
    """``data`` with one to three random mutations, and what they were."""
    mutant = copy.deepcopy(data)
    steps = [rng.choice(MUTATIONS)(mutant, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    return mutant, steps


def _inline(value) -> str:
    """``value`` as TOML, tables inline (``to_toml`` writes one level of them only)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_inline(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return to_toml({"v": value}).partition(" = ")[2].rstrip("\n")


def _toml(data: dict) -> str:
    """A mutated document as TOML text: top-level keys, then one ``[table]`` per table."""
    lines = [f"{_inline(k)} = {_inline(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{_inline(name)}]")
            lines += [f"{_inline(k)} = {_inline(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _text_mutants(text: str) -> list[tuple[str, str]]:
    """Mutants written as text: nesting past Python's recursion limit, integers of thousands
    of digits."""
    deep = [("[" * n + "]" * n, f"array {n} deep") for n in (9, 300, 20_000)]
    deep.append(("{a = " * 300 + "1" + "}" * 300, "inline tables 300 deep"))
    values = [*deep, ("9" * 5000, "a 5000-digit integer"), ("1" + "0" * 400, "1e400")]
    return [(f"reference_energy = {value}\n{text}", what) for value, what in values]


# --------------------------------------------------------------------------- checks
def _outcome(path: Path, overrides: list[str] | tuple = ()) -> str:
    """ "accepted" or "refused"; anything but a short one-line ConfigError is raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_config(path, overrides)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text, text[:300]
        assert len(exc.key) <= SHORT_MESSAGE and len(exc.message) <= SHORT_MESSAGE, text[:300]
        return "refused"
    return "accepted"


@pytest.mark.parametrize("system", SYSTEMS, ids=[p.stem for p in SYSTEMS])
def test_mutants_of_a_shipped_input_are_accepted_or_refused_in_one_line(system, tmp_path):
    text = system.read_text()
    data = loads(text)
    rng = random.Random(zlib.crc32(system.name.encode()))
    cases = []
    for _ in range(MUTANTS_PER_FILE):
        mutant, steps = _mutant(data, rng)
        cases.append((_toml(mutant), (), "; ".join(steps)))
    cases += [(t, (), what) for t, what in _text_mutants(text)]
    overrides = [
        ["ansatz.layers=9223372036854775807"],
        ["train.walkers=" + "9" * 5000],
        ["ansatz.cas=" + "[" * 2000 + "]" * 2000],
        ["ansatz.cas=" + "[" * 50 + "1" + "]" * 50],
        [f"name={LONG}"],
        ["dmc.walkers=-1", "dmc.steps=1e400"],
    ]
    cases += [(text, o, f"--set {o[0][:40]}") for o in overrides]
    outcomes, escaped = [], []
    for k, (mutant_text, sets, what) in enumerate(cases):
        path = tmp_path / f"m{k}.toml"
        path.write_text(mutant_text)
        try:
            outcomes.append(_outcome(path, sets))
        except Exception as exc:  # the point: name each mutant that escaped, and how
            escaped.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not escaped, f"{system.name}: {len(escaped)} escaped: " + " | ".join(escaped[:6])
    assert "refused" in outcomes and len(outcomes) >= MUTANTS_PER_FILE + 10


def _h2(tmp_path: Path, extra: str = "", top: str = "", name: str = "h2.toml") -> Path:
    path = tmp_path / name
    path.write_text(top + H2 + extra)
    return path


@pytest.mark.parametrize(
    "section,key",
    [(s, k) for s in sorted(INT_FIELDS, key=str) for k in INT_FIELDS[s]],
)
@pytest.mark.parametrize("value", [HUGE, -HUGE - 1])
def test_every_integer_key_refuses_a_64_bit_extreme(section, key, value, tmp_path):
    """Counts and sizes have upper bounds: 2**63 - 1 never reaches the compiler."""
    if section is None:
        path = _h2(tmp_path, top=f"{key} = {value}\n")
    elif section == "system":
        path = _h2(tmp_path, f"{key} = {value}\n")
    else:
        path = _h2(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == (key if section is None else f"{section}.{key}")
    assert len(str(info.value)) < 250


NOT_ECHOED = {
    "name": H2.replace('"h2"', f'"{LONG}"'),
    "precision": f'precision = "{LONG}"\n{H2}',
    "system.atoms": H2.replace("H 0 0 0\\nH 0 0 1.4", LONG),
    "system.unit": H2.replace('"bohr"', f'"{LONG}"'),
    "system.basis": f'{H2}basis = "{LONG}"\n',
    "system.ecp": f'{H2}ecp = "{LONG}"\n',
    "ansatz.kind": f'{H2}[ansatz]\nkind = "{LONG}"\n',
    "train.optimizer": f'{H2}[train]\noptimizer = "{LONG}"\n',
    "scan.kind": f'{H2}[scan]\nkind = "{LONG}"\n',
}


@pytest.mark.parametrize("key", sorted(NOT_ECHOED))
def test_a_50000_character_value_is_not_echoed(key, tmp_path):
    path = tmp_path / "long.toml"
    path.write_text(NOT_ECHOED[key])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.key == key and len(info.value.message) < 250, message[:300]
    assert re.search(r"… \(5000\d characters\)", message), message  # the length, not the value


COUNTS_IN_LISTS = {
    "ansatz.cas": f"[ansatz]\ncas = [{HUGE}, 2]\n",
    "scan.linspace": f'[scan]\nkind = "bond"\natoms = [0, 1]\nlinspace = [1.0, 2.0, {HUGE}]\n',
    "scan.grid_values": '[scan]\nkind = "grid"\ngrid_atoms = [[0, 1], [0, 1]]\n'
    f"grid_values = [{list(range(1, 1002))}, {list(range(1, 1002))}]\n",
    "scan.ranges": '[scan]\nkind = "adaptive"\ngrid_atoms = [[0, 1], [0, 1]]\n'
    "ranges = [[1.0, 4.0, 1001], [1.0, 4.0, 1001]]\n",
}


@pytest.mark.parametrize("key", sorted(COUNTS_IN_LISTS))
def test_counts_inside_lists_have_bounds_too(key, tmp_path):
    """Active orbitals <= 4096; a scan's geometries (a grid's product) <= 10**6."""
    with pytest.raises(ConfigError) as info:
        load_config(_h2(tmp_path, COUNTS_IN_LISTS[key]))
    assert info.value.key == key and len(str(info.value)) < 250


def test_bounds_leave_the_largest_real_inputs_alone(tmp_path):
    big = "[ansatz]\nlayers = 64\nembedding_dim = 4096\ndeterminants = 4096\n"
    big += "[train]\nwalkers = 16777216\nsteps = 1000000000\nseed = 4294967295\n"
    config = load_config(_h2(tmp_path, big))
    assert config.ansatz.layers == 64 and config.train.walkers == 2**24


def _refused(tmp_path: Path, capsys, path: Path, sets: list[str] = ()) -> str:
    """``nnqmc run`` of an input that ``load_config`` refuses (checked first: an accepted
    one would start a run): its stderr, one line."""
    with pytest.raises(ConfigError):
        load_config(path, sets)
    out = tmp_path / "out"
    args = [str(path), "--set", *sets] if sets else [str(path)]
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnqmc: error: "), err[:300]
    assert not out.exists()
    return err


CLI_CASES = {
    "huge layers": ("", "[ansatz]\nlayers = 9223372036854775807\n", "ansatz.layers"),
    "huge dmc walkers": ("", "[dmc]\nwalkers = 9223372036854775807\n", "dmc.walkers"),
    "long name": (f'name = "{LONG}"\n', "", "name"),
    "long atoms": ("", "", "system.atoms"),
    "deep array": ("", "[ansatz]\ncas = " + "[" * 20_000 + "]" * 20_000 + "\n", "document"),
    "long xyz path": ("", "", "system.xyz"),
    "long scan xyz": ("", f'[scan]\nkind = "xyz"\nxyz = "{"a" * 256}"\n', "scan.xyz"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_in_one_short_line_with_exit_2(case, tmp_path, capsys):
    top, extra, key = CLI_CASES[case]
    text = top + H2.replace('name = "h2"\n', "") if top else H2
    if case == "long atoms":
        text = text.replace("H 0 0 0\\nH 0 0 1.4", LONG)
    if case == "long xyz path":
        text = text.replace('atoms = "H 0 0 0\\nH 0 0 1.4"\nunit = "bohr"', f'xyz = "{"a" * 256}"')
    path = tmp_path / "input.toml"
    path.write_text(text + extra)
    err = _refused(tmp_path, capsys, path)
    assert f"input.toml: {key}: " in err and len(err) - len(str(path)) < 230, err[:300]


def test_cli_refuses_a_huge_override_and_a_long_file_name(tmp_path, capsys):
    path = _h2(tmp_path)
    err = _refused(tmp_path, capsys, path, ["train.steps=9223372036854775807"])
    assert "--set: train.steps: must be <= 1000000000" in err
    err = _refused(tmp_path, capsys, tmp_path / ("a" * 300 + ".toml"))
    assert "file name too long" in err and len(err) < 300
