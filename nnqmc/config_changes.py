"""Changing a loaded config from Python: keys of a section (:func:`with_settings`) or the
molecule (:func:`with_molecule`), each checked as in an input file, and the checks that
involve more than one key (:func:`cross_check`), shared with loading (:mod:`nnqmc.config`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from .config_schema import (
    OVERRIDE_SOURCE,
    SCAN_SHARED_KEYS,
    THERMAL_FLOW_KEYS,
    THERMAL_MD_KEYS,
    AnsatzConfig,
    Config,
    ConfigError,
    allowed_keys,
    read_fields,
    section_classes,
    suggest,
)
from .molecule import MIN_NUCLEAR_DISTANCE, Molecule, closest_overlap

__all__ = [
    "check_scan_training",
    "check_thermal_scan",
    "cross_check",
    "with_molecule",
    "with_settings",
]


def with_molecule(config: Config, molecule: Molecule, source: str = OVERRIDE_SOURCE) -> Config:
    """``config`` with these nuclei, recorded in ``[system]`` as atoms in bohr, and the
    checks that involve the molecule done again (errors name ``source``)."""
    data = copy.deepcopy(config.data)
    data["system"].pop("xyz", None)
    data["system"].update(atoms=molecule.atoms_text(), unit="bohr")
    system = dataclasses.replace(config.system, molecule=molecule)
    values = {"system": system, "ansatz": config.ansatz, "hamiltonian": config.hamiltonian}
    cross_check(values, lambda key, message: ConfigError(source, key, message))
    return dataclasses.replace(config, system=system, data=data)


def with_settings(
    config: Config, section: str | None = None, *, source: str = OVERRIDE_SOURCE, **values: Any
) -> Config:
    """``config`` with these keys of ``[section]`` (None: the top-level keys) set, checked
    as in an input file, cross-checks included (errors name ``source``); None removes a key,
    which then takes its default. ``[system]`` changes through :func:`with_molecule`."""
    sections = section_classes()
    if section == "system" or (section is not None and section not in sections):
        raise ValueError(f"with_settings: cannot set [{section}] (for [system]: with_molecule)")
    allowed = allowed_keys()[section]
    prefix = "" if section is None else f"{section}."
    for name in values:
        if name not in allowed:
            raise ConfigError(source, f"{prefix}{name}", f"unknown key{suggest(name, allowed)}")
    data = copy.deepcopy(config.data)
    table = data if section is None else data.setdefault(section, {})
    for name, value in values.items():
        table.pop(name, None)
        if value is not None:
            table[name] = _plain(value)
    fail = lambda key, message: ConfigError(source, key, message)  # noqa: E731
    cls = Config if section is None else sections[section]
    given = {n: table[n] for n in values if n in table}
    changed = read_fields(cls, given, prefix, fail, names=list(given))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in set(values) - set(changed):
        f = fields[name]
        changed[name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if section is None:
        config = dataclasses.replace(config, **changed, data=data)
    else:
        current = getattr(config, section)
        part = cls(**changed) if current is None else dataclasses.replace(current, **changed)
        config = dataclasses.replace(config, **{section: part}, data=data)
    values_now = {"system": config.system, "ansatz": config.ansatz}
    cross_check({**values_now, "hamiltonian": config.hamiltonian}, fail)
    return config


def cross_check(values: dict[str, Any], fail) -> None:
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
    charges = values["hamiltonian"].point_charges  # rows [q, x, y, z], bohr
    close = closest_overlap([row[1:] for row in charges], molecule.coords)
    if close is not None:
        c, i, d = close
        where = ", ".join(f"{x:g}" for x in charges[c][1:])
        raise fail(
            "hamiltonian.point_charges",
            f"point charge {c + 1} at ({where}) lies {d:.3g} bohr from atom {i + 1} "
            f"({molecule.symbols[i]}); point charges must be at least "
            f"{MIN_NUCLEAR_DISTANCE:g} bohr from every nucleus",
        )


def check_scan_training(values: dict[str, Any], table: dict, fail) -> None:
    """``[scan] train``: its own keys only with "shared", which needs a fixed set of
    geometries, SPRING and a single determinant (the orbitals of every geometry are
    aligned to the others', :mod:`nnqmc.orbital_alignment`, for one determinant only)."""
    scan = values["scan"]
    if scan.train != "shared":
        for key in SCAN_SHARED_KEYS:
            if key in table and key != "fine_tune_steps":  # also for --from (pes.shared_from)
                raise fail(f"scan.{key}", 'only used with scan.train = "shared"')
        return
    if scan.kind in ("adaptive", "thermal"):
        raise fail(
            "scan.train", f'"shared" needs a fixed set of geometries, not kind = "{scan.kind}"'
        )
    if "steps" in table:
        raise fail("scan.steps", 'not used with train = "shared" (see scan.fine_tune_steps)')
    if values["train"].optimizer != "spring":
        raise fail("scan.train", '"shared" needs train.optimizer = "spring"')
    if values["ansatz"].cas is not None:
        raise fail(
            "scan.train",
            '"shared" aligns single-determinant orbitals across geometries; '
            "it does not take ansatz.cas (yet)",
        )


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as the Python numbers and lists TOML holds."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_thermal_scan(scan: Any, table: dict, fail) -> None:
    """``[scan] kind = "thermal"``: a temperature; the initial geometries from ``initial``
    displacements (2..budget) or an ``xyz`` file, not both; each sampler's own keys only
    with it; no ``reference`` (its geometries are chosen as it runs)."""
    if scan.temperature is None:
        raise fail("scan.temperature", "missing required key (kelvin)")
    if "reference" in table:
        raise fail("scan.reference", 'not used with kind = "thermal" (it chooses its geometries)')
    if "xyz" in table and "initial" in table:
        raise fail("scan.initial", "not used with xyz (its frames are the first geometries)")
    if "xyz" not in table and not 2 <= scan.initial <= scan.budget:
        raise fail("scan.initial", f"must lie in 2..{scan.budget} (budget), got {scan.initial}")
    other = THERMAL_FLOW_KEYS if scan.method == "md" else THERMAL_MD_KEYS
    for key in other:
        if key in table:
            raise fail(f"scan.{key}", f"not used with method = {scan.method!r}")
