"""Tests for nnqmc.config: TOML -> validated frozen dataclasses."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from nnqmc.config import (
    AnsatzConfig,
    Config,
    ConfigError,
    SamplerConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    to_toml,
    with_settings,
)
from nnqmc.molecule import ANGSTROM

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = sorted((ROOT / "systems").glob("*.toml"))

H2_ATOMS = 'atoms = """\nH 0 0 0\nH 0 0 1.4\n"""'
H2_SYSTEM = f'{H2_ATOMS}\nunit = "bohr"\nbasis = "sto-3g"'
XYZ_WATER = """3
water, angstrom
O 0.000 0.000 0.000
H 0.000 0.757 0.586
H 0.000 -0.757 0.586
"""


def make(top: str = "", system: str = H2_SYSTEM, extra: str = "", name: str = "test") -> str:
    head = f'name = "{name}"\n' if name is not None else ""
    return f"{head}{top}\n[system]\n{system}\n{extra}\n"


def write(tmp_path: Path, text: str, filename: str = "cfg.toml") -> Path:
    path = tmp_path / filename
    path.write_text(text)
    return path


def assert_one_line_error(exc: ConfigError, source: str, key: str) -> None:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    assert source in message, message
    assert key in message, message
    assert message.startswith(f"{exc.source}: {exc.key}: "), message
    assert isinstance(exc, ValueError)


# --------------------------------------------------------------------------- bad inputs
BAD = {
    "malformed_toml": ('name = "x\n[system]\n', "line 1, column"),
    "unknown_top_key": (make(top="nme = 3"), "nme"),
    "unknown_section": (make(extra="[trian]\nsteps = 3"), "trian"),
    "unknown_section_key": (make(extra="[train]\nwalker = 3"), "train.walker"),
    "unknown_system_key": (make(system=H2_SYSTEM + "\nchrage = 1"), "system.chrage"),
    "section_not_table": (make(top="train = 5"), "train"),
    "string_for_int": (make(extra='[train]\nwalkers = "many"'), "train.walkers"),
    "bool_for_int": (make(extra="[train]\nsteps = true"), "train.steps"),
    "float_for_int": (make(extra="[train]\nwalkers = 10.5"), "train.walkers"),
    "string_for_float": (make(extra='[train]\nlearning_rate = "0.1"'), "train.learning_rate"),
    "bool_for_float": (make(extra="[sampler]\ninitial_width = true"), "sampler.initial_width"),
    "int_for_bool": (make(extra="[ansatz]\ncusp_correction = 1"), "ansatz.cusp_correction"),
    "nan_float": (make(extra="[train]\nlearning_rate = nan"), "train.learning_rate"),
    "string_reference": (make(top='reference_energy = "low"'), "reference_energy"),
    "bool_charge": (make(system=H2_SYSTEM + "\ncharge = true"), "system.charge"),
    "unknown_element": (
        make(system='atoms = "Xx 0 0 0"\nunit = "bohr"\nbasis = "sto-3g"'),
        "system.atoms",
    ),
    "impossible_spin": (make(system=H2_SYSTEM + "\nspin = 1"), "system.spin"),
    "negative_spin": (make(system=H2_SYSTEM + "\nspin = -2"), "system.spin"),
    "spin_too_large": (make(system=H2_SYSTEM + "\nspin = 4"), "system.spin"),
    "impossible_charge": (make(system=H2_SYSTEM + "\ncharge = 2"), "system.charge"),
    "overlapping_atoms": (
        make(system='atoms = "H 0 0 0\\nH 0 0 0.01"\nunit = "bohr"\nbasis = "sto-3g"'),
        "system.atoms",
    ),
    "nan_coordinate": (
        make(system='atoms = "H 0 0 nan\\nH 0 0 1.4"\nunit = "bohr"\nbasis = "sto-3g"'),
        "system.atoms",
    ),
    "inf_coordinate": (
        make(system='atoms = "H 0 0 0\\nH 0 inf 1.4"\nunit = "bohr"\nbasis = "sto-3g"'),
        "system.atoms",
    ),
    "bad_atom_line": (
        make(system='atoms = "H 0 0\\nH 0 0 1.4"\nunit = "bohr"\nbasis = "sto-3g"'),
        "system.atoms",
    ),
    "unknown_basis": (
        make(system=f'{H2_ATOMS}\nunit = "bohr"\nbasis = "no-such-basis"'),
        "system.basis",
    ),
    "unknown_unit": (make(system=f'{H2_ATOMS}\nunit = "nm"'), "system.unit"),
    "missing_unit": (make(system=H2_ATOMS), "system.unit"),
    "atoms_and_xyz": (make(system=H2_SYSTEM + '\nxyz = "water.xyz"'), "system.xyz"),
    "neither_atoms_nor_xyz": (make(system='basis = "sto-3g"'), "system.atoms"),
    "missing_xyz_file": (make(system='xyz = "nowhere.xyz"'), "system.xyz"),
    "malformed_xyz": (make(system='xyz = "bad.xyz"'), "system.xyz"),
    "truncated_xyz": (make(system='xyz = "short.xyz"'), "system.xyz"),
    "bohr_with_xyz": (make(system='xyz = "water.xyz"\nunit = "bohr"'), "system.unit"),
    "missing_system": ('name = "test"\n', "system"),
    "missing_name": (make(name=None), "name"),
    "unsafe_name": (make(name="../escape"), "name"),
    "unknown_ansatz_kind": (make(extra='[ansatz]\nkind = "ferminet"'), "ansatz.kind"),
    "unknown_optimizer": (make(extra='[train]\noptimizer = "kfac"'), "train.optimizer"),
    "unknown_precision": (make(top='precision = "float16"'), "precision"),
    "zero_steps": (make(extra="[train]\nsteps = 0"), "train.steps"),
    "negative_walkers": (make(extra="[train]\nwalkers = -5"), "train.walkers"),
    "zero_width": (make(extra="[sampler]\ninitial_width = 0.0"), "sampler.initial_width"),
    "acceptance_one": (make(extra="[sampler]\ntarget_acceptance = 1"), "sampler.target_acceptance"),
    "acceptance_zero": (
        make(extra="[sampler]\ntarget_acceptance = 0.0"),
        "sampler.target_acceptance",
    ),
    "negative_burn_in": (make(extra="[sampler]\nburn_in = -1"), "sampler.burn_in"),
    "zero_learning_rate": (make(extra="[train]\nlearning_rate = 0"), "train.learning_rate"),
    "negative_learning_rate": (
        make(extra="[train]\nlearning_rate = -1e-3"),
        "train.learning_rate",
    ),
    "zero_eval_steps": (make(extra="[eval]\nsteps = 0"), "eval.steps"),
    "one_eval_step": (make(extra="[eval]\nsteps = 1"), "eval.steps"),
    "cas_wrong_length": (make(extra="[ansatz]\ncas = [4]"), "ansatz.cas"),
    "cas_too_many_electrons": (make(extra="[ansatz]\ncas = [4, 4]"), "ansatz.cas"),
}


@pytest.mark.parametrize("text,key", list(BAD.values()), ids=list(BAD))
def test_bad_input(tmp_path, text, key):
    (tmp_path / "water.xyz").write_text(XYZ_WATER)
    (tmp_path / "bad.xyz").write_text("three\ncomment\nH 0 0 0\n")
    (tmp_path / "short.xyz").write_text("3\ncomment\nH 0 0 0\n")
    path = write(tmp_path, text, "bad_case.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_error(info.value, "bad_case.toml", key)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_error(info.value, "absent.toml", "file")


def test_malformed_toml_reports_line_and_column(tmp_path):
    path = write(tmp_path, 'name = "x"\n[train]\nsteps = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_error(info.value, "cfg.toml", "line 3, column")
    assert "malformed TOML" in str(info.value)


@pytest.mark.parametrize(
    "extra,key,suggestion",
    [
        ("[train]\nwalker = 3", "train.walker", "walkers"),
        ("[sampler]\nburnin = 3", "sampler.burnin", "burn_in"),
        ("[evel]\nsteps = 3", "evel", "eval"),
    ],
)
def test_unknown_key_suggests_closest(tmp_path, extra, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, make(extra=extra)))
    assert_one_line_error(info.value, "cfg.toml", key)
    assert f"did you mean {suggestion!r}" in str(info.value)


def test_config_from_dict_validates_the_same(tmp_path):
    data = tomllib.loads(make(extra="[train]\nwalkers = 0"))
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="api")
    assert_one_line_error(info.value, "api", "train.walkers")
    with pytest.raises(ConfigError) as info:
        config_from_dict([1, 2])  # type: ignore[arg-type]
    assert_one_line_error(info.value, "<dict>", "document")


# --------------------------------------------------------------------------- good inputs
def test_minimal_config_uses_defaults(tmp_path):
    path = write(tmp_path, make())
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.name == "test"
    assert config.reference_energy is None
    assert config.precision == "mixed"
    assert config.ansatz == AnsatzConfig()
    assert config.sampler == SamplerConfig()
    assert config.train == TrainConfig()
    assert config.train.optimizer == "spring" and config.ansatz.kind == "paulinet"
    assert config.ansatz.cas is None
    assert config.system.basis == "sto-3g"
    mol = config.system.molecule
    assert mol.symbols == ("H", "H")
    assert mol.charge == 0 and mol.spin == 0
    np.testing.assert_allclose(mol.coords, [[0, 0, 0], [0, 0, 1.4]])
    assert config.source == path
    assert config.data == tomllib.loads(make())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.steps = 3  # type: ignore[misc]


def test_default_basis_is_cc_pvdz(tmp_path):
    config = load_config(write(tmp_path, make(system=f'{H2_ATOMS}\nunit = "bohr"')))
    assert config.system.basis == "cc-pvdz"


def test_full_config(tmp_path):
    text = make(
        top='reference_energy = -1\nprecision = "float32"',
        system=H2_SYSTEM + "\ncharge = 1\nspin = 1",
        extra="""
[ansatz]
kind = "paulinet"
cusp_correction = false
embedding_dim = 32
cutoff = 8
cas = [2, 1]
determinants = 4
[sampler]
initial_width = 0.5
target_acceptance = 0.6
burn_in = 0
decorrelation = 5
[train]
steps = 50
walkers = 64
seed = 7
optimizer = "spring"
learning_rate = 1
damping = 0
momentum = 0.0
[eval]
steps = 10
decorrelation = 2
""",
    )
    config = load_config(write(tmp_path, text))
    assert config.reference_energy == -1.0 and isinstance(config.reference_energy, float)
    assert config.precision == "float32"
    assert config.system.molecule.n_elec == 1
    assert (config.system.molecule.n_up, config.system.molecule.n_down) == (1, 0)
    assert config.ansatz.kind == "paulinet" and config.ansatz.cusp_correction is False
    assert config.ansatz.cas == (2, 1) and isinstance(config.ansatz.cas, tuple)
    assert config.ansatz.cutoff == 8.0 and isinstance(config.ansatz.cutoff, float)
    assert config.ansatz.determinants == 4 and config.ansatz.layers == 3
    assert config.sampler == SamplerConfig(0.5, 0.6, 0, 5)
    assert config.train.optimizer == "spring" and config.train.seed == 7
    assert isinstance(config.train.learning_rate, float) and config.train.learning_rate == 1.0
    assert config.eval.steps == 10 and config.eval.decorrelation == 2


def test_angstrom_atoms_are_converted_to_bohr(tmp_path):
    system = 'atoms = "H 0 0 0\\nH 0 0 0.74"\nunit = "angstrom"\nbasis = "sto-3g"'
    config = load_config(write(tmp_path, make(system=system)))
    coords = config.system.molecule.coords
    assert coords[1, 2] == pytest.approx(0.74 * ANGSTROM)
    assert coords[1, 2] == pytest.approx(1.39839, abs=1e-4)


def test_xyz_file_relative_to_config_dir_in_angstrom(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "water.xyz").write_text(XYZ_WATER)
    system = 'xyz = "water.xyz"\nbasis = "sto-3g"\ncharge = 0\nspin = 0'
    config = load_config(write(sub, make(system=system)))
    mol = config.system.molecule
    assert mol.symbols == ("O", "H", "H")
    expected = np.array([[0, 0, 0], [0, 0.757, 0.586], [0, -0.757, 0.586]]) * ANGSTROM
    np.testing.assert_allclose(mol.coords, expected)
    assert np.linalg.norm(mol.coords[1]) == pytest.approx(1.8094, abs=1e-3)


def test_xyz_with_explicit_angstrom_unit_and_absolute_path(tmp_path):
    xyz = tmp_path / "water.xyz"
    xyz.write_text(XYZ_WATER)
    system = f'xyz = "{xyz.as_posix()}"\nunit = "angstrom"\nbasis = "sto-3g"'
    config = config_from_dict(tomllib.loads(make(system=system)))
    assert config.system.molecule.n_elec == 10
    assert config.source is None


def test_open_shell_and_cation(tmp_path):
    li = 'atoms = "Li 0 0 0"\nunit = "bohr"\nspin = 1\nbasis = "sto-3g"'
    mol = load_config(write(tmp_path, make(system=li))).system.molecule
    assert (mol.n_up, mol.n_down) == (2, 1)
    cation = H2_SYSTEM + "\ncharge = 1\nspin = 1"
    mol = load_config(write(tmp_path, make(system=cation))).system.molecule
    assert (mol.n_up, mol.n_down) == (1, 0)


# --------------------------------------------------------------------------- overrides
def test_overrides_parse_toml_values(tmp_path):
    path = write(tmp_path, make(extra="[train]\nsteps = 10"))
    config = load_config(
        path,
        [
            "train.steps=400",
            "train.learning_rate=1e-3",
            "ansatz.cusp_correction=false",
            'train.optimizer="spring"',
            "ansatz.kind=paulinet",  # bare string
            "ansatz.cas=[2, 1]",
            "precision=float32",
            "name = renamed",
            "system.charge=1",
            "system.spin=1",
        ],
    )
    assert config.train.steps == 400
    assert config.train.learning_rate == pytest.approx(1e-3)
    assert config.ansatz.cusp_correction is False
    assert config.train.optimizer == "spring"
    assert config.ansatz.kind == "paulinet"
    assert config.ansatz.cas == (2, 1)
    assert config.precision == "float32"
    assert config.name == "renamed"
    assert config.system.molecule.charge == 1
    assert config.data["train"]["steps"] == 400
    assert config.data["ansatz"]["cas"] == [2, 1]
    assert config.data["precision"] == "float32"
    # The file on disk is untouched and the merged document round-trips.
    assert load_config(path).train.steps == 10


def test_apply_overrides_does_not_mutate_input():
    data = {"name": "x", "train": {"steps": 1}}
    merged = apply_overrides(data, ["train.steps=5", "eval.steps=7"], "--set")
    assert data == {"name": "x", "train": {"steps": 1}}
    assert merged == {"name": "x", "train": {"steps": 5}, "eval": {"steps": 7}}


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.walkrs=4", "train.walkrs"),
        ("trian.steps=4", "trian.steps"),
        ("nonsense=4", "nonsense"),
        ("train.steps.deep=4", "train.steps.deep"),
        ("train.steps", "train.steps"),
        ("ansatz=3", "ansatz"),
        ("=3", "=3"),
    ],
)
def test_unknown_or_malformed_override(tmp_path, override, key):
    path = write(tmp_path, make())
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert_one_line_error(info.value, "--set", key)


def test_override_with_bad_value_names_set(tmp_path):
    path = write(tmp_path, make())
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.walkers=lots"])
    assert_one_line_error(info.value, "--set", "train.walkers")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.steps=1\nfoo=2"])  # no smuggled keys: a bare string
    assert_one_line_error(info.value, "--set", "train.steps")


def test_override_suggests_closest_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, make()), ["train.walkrs=4"])
    assert "did you mean 'walkers'" in str(info.value)


def test_to_toml_round_trips(tmp_path):
    path = write(tmp_path, make(top="reference_energy = -1.5", extra="[ansatz]\ncas = [2, 2]"))
    config = load_config(path, ["train.learning_rate=1e-3", 'name="copy"'])
    text = to_toml(config.data)
    assert tomllib.loads(text) == config.data
    copy = load_config(write(tmp_path, text, "copy.toml"))
    assert copy.name == "copy" and copy.train == config.train
    np.testing.assert_array_equal(copy.system.molecule.coords, config.system.molecule.coords)


# --------------------------------------------------------------------------- shipped systems
# name -> (reference energy or None, basis, charge, spin)
EXPECTED_SYSTEMS = {
    "h2": (-1.174475, "cc-pvtz", 0, 0),
    "he": (-2.90372, "cc-pvtz", 0, 0),
    "li": (None, "cc-pvtz", 0, 1),
    "lih": (-8.070548, "cc-pvtz", 0, 0),
    "be": (-14.66736, "cc-pvtz", 0, 0),
    "b": (-24.65391, "cc-pvtz", 0, 1),
    "c": (-37.8450, "cc-pvtz", 0, 2),
    "li2": (-14.9954, "cc-pvtz", 0, 0),  # Pfau et al. 2020, not tabulated in the md file
    "n2": (-109.5423, "cc-pvdz", 0, 0),
    "h2o": (-76.438, "cc-pvdz", 0, 0),
    "h2o_cpu": (-76.438, "cc-pvdz", 0, 0),
    "h4_rectangle": (-2.0155, "cc-pvtz", 0, 0),
    "h3_plus": (None, "cc-pvtz", 1, 0),
}
NOT_IN_REFERENCE_FILE = {"li2"}


def _distances(coords: np.ndarray) -> np.ndarray:
    return np.linalg.norm(coords[:, None] - coords[None], axis=-1)


def _reference_file() -> Path | None:
    for candidate in (ROOT.parent / "shared", ROOT / "shared"):
        path = candidate / "REFERENCE_ENERGIES.md"
        if path.is_file():
            return path
    return None


def test_expected_systems_are_shipped():
    assert {p.stem for p in SYSTEMS} >= set(EXPECTED_SYSTEMS)


@pytest.mark.parametrize("path", SYSTEMS, ids=[p.stem for p in SYSTEMS])
def test_shipped_system_loads(path):
    config = load_config(path)
    assert config.name == path.stem
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 10, "needs a descriptive header comment"
    # shipped inputs use the default network sizes; only the kind of ansatz, the
    # determinant space and the backflow (it moves the nodes: li2_hf_nodes fixes them to
    # the RHF determinant's) may be chosen; a scan may shrink the network (a dataset's
    # cost is per geometry: h2_scan_dense, docs/pes.md); the nuclear-cusp radius is the
    # reference orbitals', not the network's (h2o: docs/generalized.md)
    allowed = {"kind", "cas", "determinants", "backflow", "cusp_radius"}
    if "scan" in config.data:
        allowed |= {"embedding_dim", "layers", "n_rbf"}
    assert set(config.data.get("ansatz", {})) <= allowed
    assert config.system.molecule.n_elec > 0
    if path.stem not in EXPECTED_SYSTEMS:
        return
    energy, basis, charge, spin = EXPECTED_SYSTEMS[path.stem]
    assert config.reference_energy == energy
    assert config.system.basis == basis
    assert (config.system.molecule.charge, config.system.molecule.spin) == (charge, spin)
    md = _reference_file()
    if energy is not None and md is not None and path.stem not in NOT_IN_REFERENCE_FILE:
        assert f"\u2212{abs(energy)}" in md.read_text(), f"{energy} not in {md}"


@pytest.mark.parametrize(
    "name,bond",
    [("h2", 1.4011), ("lih", 3.015), ("li2", 5.051), ("n2", 2.068)],
)
def test_diatomic_geometries(name, bond):
    coords = load_config(ROOT / "systems" / f"{name}.toml").system.molecule.coords
    assert _distances(coords)[0, 1] == pytest.approx(bond, abs=1e-9)


def test_water_geometry():
    mol = load_config(ROOT / "systems" / "h2o.toml").system.molecule
    assert mol.symbols == ("O", "H", "H")
    o, h1, h2 = mol.coords
    r1, r2 = np.linalg.norm(h1 - o), np.linalg.norm(h2 - o)
    assert r1 == pytest.approx(1.8097, abs=1e-5) and r2 == pytest.approx(1.8097, abs=1e-5)
    angle = math.degrees(math.acos(np.dot(h1 - o, h2 - o) / (r1 * r2)))
    assert angle == pytest.approx(104.52, abs=1e-3)


def test_h4_and_h3_plus_geometries():
    d = _distances(load_config(ROOT / "systems" / "h4_rectangle.toml").system.molecule.coords)
    sides = sorted(d[np.triu_indices(4, 1)])
    np.testing.assert_allclose(sides[:4], 3.2843, atol=1e-9)
    np.testing.assert_allclose(sides[4:], 3.2843 * math.sqrt(2), atol=1e-5)
    d = _distances(load_config(ROOT / "systems" / "h3_plus.toml").system.molecule.coords)
    np.testing.assert_allclose(d[np.triu_indices(3, 1)], 1.65, atol=1e-5)


@pytest.mark.parametrize("text", ['a\nb"', "x\x01y\tz", "a\\b\nc", 'q"""\nr', "\nlead\r\nx"])
def test_to_toml_escapes_strings(text):
    data = {"name": text, "train": {"optimizer": text, "cas": [1, 2.5, True]}}
    assert tomllib.loads(to_toml(data)) == data


def test_with_settings_checks_like_an_input_file():
    """Keys changed from Python: NumPy numbers become TOML numbers, None restores the
    default, an unknown key and a cross-key conflict are the input's own errors."""
    config = load_config(ROOT / "systems" / "h2.toml")
    changed = with_settings(config, "train", steps=np.int64(7), learning_rate=np.float64(0.01))
    assert changed.train.steps == 7 and changed.train.learning_rate == 0.01
    assert "steps = 7" in to_toml(changed.data)
    assert with_settings(changed, "train", steps=None).train.steps == TrainConfig().steps
    assert with_settings(config, reference_energy=None).reference_energy is None
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        with_settings(config, "train", stepz=3)
    with pytest.raises(ConfigError, match="only 2"):
        with_settings(config, "ansatz", cas=[4, 3])
    with pytest.raises(ValueError, match="with_molecule"):
        with_settings(config, "system", basis="sto-3g")
