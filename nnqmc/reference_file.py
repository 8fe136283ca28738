"""A run directory's mean-field reference (``reference.h5``): the orbitals, determinants, CI
weights and energies its parameters were trained on, read back as an :class:`SCFResult`
without solving the SCF again (:func:`read_reference`).

The file also records, as the attribute ``scf_inputs`` (:func:`input_attrs`), every setting
the SCF was solved with (:func:`scf_inputs`): a run continued with an input edited since
(another field, active space, ECP, ...) is refused instead of going on silently with
orbitals and an HF energy of the old input. It records as well, as ``ansatz_inputs``
(:func:`ansatz_inputs`), the ansatz settings the parameters were trained with: a resume
with another cusp radius, electron-electron cusp or network is refused too, where it would
otherwise continue from parameters of another wavefunction. Files written before either
record skip its check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .config import Config
from .errors import RunError
from .parallel import broadcast_from_main, is_main_process
from .pseudopotentials import ECPError
from .rundir import cannot_write
from .scf import SCFResult, reference_arrays, stored_scf

__all__ = [
    "ANSATZ_INPUTS",
    "SCF_INPUTS",
    "ansatz_inputs",
    "input_attrs",
    "read_reference",
    "save_reference",
    "scf_inputs",
]

SCF_INPUTS = "scf_inputs"
"""The attribute of a reference file that holds :func:`scf_inputs` (JSON)."""

ANSATZ_INPUTS = "ansatz_inputs"
"""The attribute of a reference file that holds :func:`ansatz_inputs` (JSON)."""

GEOMETRY_TOLERANCE = 1e-8  # bohr: nuclear positions that differ by less are the same


def scf_inputs(config: Config) -> dict[str, str]:
    """Every setting of ``config`` that the SCF of its reference depends on (what
    :func:`nnqmc.run_setup.prepare` passes to :func:`nnqmc.scf.run_scf`), by key, each as
    JSON: the atoms and their positions, charge, spin, basis, ECPs, the active space and
    the determinants kept from it, and the ``[hamiltonian]`` terms (which enter the SCF's
    core Hamiltonian and its energy)."""
    system, ansatz, terms = config.system, config.ansatz, config.hamiltonian
    molecule = system.molecule
    atoms = [
        [s, *map(float, xyz)] for s, xyz in zip(molecule.symbols, molecule.coords, strict=True)
    ]
    inputs = {
        "system.atoms": json.dumps(atoms),
        "system.charge": json.dumps(int(molecule.charge)),
        "system.spin": json.dumps(int(molecule.spin)),
        "system.basis": json.dumps(system.basis_label),
        "system.ecp": json.dumps(sorted(molecule.ecp)),
        "ansatz.cas": json.dumps(ansatz.cas),
        "hamiltonian.field": json.dumps(terms.field),
        "hamiltonian.point_charges": json.dumps(terms.point_charges),
        "hamiltonian.harmonic": json.dumps(terms.harmonic),
    }
    if ansatz.cas is not None:  # without an active space there is one determinant
        inputs["ansatz.determinants"] = json.dumps(int(ansatz.determinants))
    if terms.harmonic is not None:
        inputs["hamiltonian.harmonic_center"] = json.dumps(terms.harmonic_center)
    return inputs


def ansatz_inputs(config: Config) -> dict[str, str]:
    """Every ``[ansatz]`` setting of ``config`` besides those in :func:`scf_inputs`, by
    key, each as JSON: what builds the wavefunction on the reference (the nuclear and
    electron-electron cusps, the network, the determinant form)."""
    return {
        f"ansatz.{name}": json.dumps(value, default=_plain)
        for name, value in dataclasses.asdict(config.ansatz).items()
        if name not in ("cas", "determinants")
    }


def _plain(value: Any) -> Any:
    """A NumPy scalar or array set through the API as the JSON value it stands for."""
    return np.asarray(value).tolist()


def input_attrs(config: Config) -> dict[str, str]:
    """The attributes of ``config``'s reference file that :func:`read_reference` checks."""
    return {
        SCF_INPUTS: json.dumps(scf_inputs(config), sort_keys=True),
        ANSATZ_INPUTS: json.dumps(ansatz_inputs(config), sort_keys=True),
    }


def save_reference(path: Path, scf: SCFResult, config: Config, **attrs: Any) -> None:
    """Process 0: ``scf``'s reference arrays in ``path`` with :func:`input_attrs` of the
    ``config`` it was solved with and ``attrs``; RunError if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.save_reference(path, reference_arrays(scf), **input_attrs(config), **attrs)
    except OSError as err:
        raise RunError(cannot_write(path, err)) from None


def _same(key: str, stored: str, ours: str) -> bool:
    if key != "system.atoms":
        return stored == ours
    a, b = json.loads(stored), json.loads(ours)
    if [row[0] for row in a] != [row[0] for row in b]:
        return False
    positions = lambda rows: np.array([row[1:] for row in rows], np.float64)  # noqa: E731
    return np.allclose(positions(a), positions(b), rtol=0.0, atol=GEOMETRY_TOLERANCE)


def changed_input(stored: dict[str, str], config: Config) -> str | None:
    """The first setting (by key) that differs between ``stored`` (:func:`scf_inputs` of
    the run that wrote a reference) and ``config``, else None."""
    ours = scf_inputs(config)
    for key in sorted(set(stored) | set(ours)):
        if key not in stored or key not in ours or not _same(key, stored[key], ours[key]):
            return key
    return None


def _record(path: Path, attrs: dict[str, Any], name: str) -> dict[str, str] | None:
    text = attrs.get(name)
    if text is None:
        return None
    try:
        return dict(json.loads(text))
    except (TypeError, ValueError):
        raise RunError(f"{path}: unreadable {name} attribute") from None


def _check_inputs(config: Config, path: Path, attrs: dict[str, Any], same_ansatz: bool) -> None:
    """RunError, one line, where ``config`` differs from the input ``path`` was solved with
    in a setting the SCF depends on, or from the ansatz its parameters were trained with;
    nothing for a file without that record."""
    stored = _record(path, attrs, SCF_INPUTS)
    key = None if stored is None else changed_input(stored, config)
    if key is not None:
        if key == "system.atoms":
            what = "atoms or nuclear positions"
        else:
            theirs, ours = stored.get(key, "unset"), scf_inputs(config).get(key, "unset")
            what = f"{key} ({theirs} there, {ours} here)"
        raise RunError(
            f"{path}: its mean-field reference was solved with another {what}; a changed "
            "input needs a new run (--force, or another --out)"
        )
    if same_ansatz:
        _check_ansatz(config, path, _record(path, attrs, ANSATZ_INPUTS))


def _check_ansatz(config: Config, path: Path, stored: dict[str, str] | None) -> None:
    """RunError, one line, for the first ansatz setting (of those both sides record) that
    differs from the one ``path``'s parameters were trained with."""
    if stored is None:
        return
    ours = ansatz_inputs(config)
    for key in sorted(stored.keys() & ours.keys()):
        if json.loads(stored[key]) != json.loads(ours[key]):
            raise RunError(
                f"{path}: its parameters were trained with another {key} ({stored[key]} "
                f"there, {ours[key]} here); a changed ansatz needs a new run (--force, or "
                "another --out)"
            )


def _template(config: Config, n_det: int, n_ao: int, n_mo: int) -> dict[str, np.ndarray]:
    """Arrays of the shapes and dtypes of :func:`reference_arrays` (a broadcast's template)."""
    molecule = config.system.molecule
    return {
        "mo_up": np.zeros((n_ao, n_mo)),
        "mo_down": np.zeros((n_ao, n_mo)),
        "occ_up": np.zeros((n_det, molecule.n_up), np.int64),
        "occ_down": np.zeros((n_det, molecule.n_down), np.int64),
        "ci": np.zeros(n_det),
        "energy": np.zeros(()),
        "cas_energy": np.zeros(()),
    }


def _scf(config: Config, arrays: dict[str, np.ndarray]) -> SCFResult:
    system = config.system
    return stored_scf(system.molecule, system.basis, arrays, config.ansatz.cas)


def read_reference(
    config: Config, path: Path, *, same_ansatz: bool = True
) -> tuple[SCFResult, bool] | None:
    """The reference in ``path`` as an SCFResult of ``config``'s system, and whether its
    occupied orbitals were aligned across geometries (``scan.train = 'shared'``); None
    where there is no such file. ``same_ansatz=False``: another ansatz may read it (a warm
    start from its run, not a resume). Process 0 reads it and sends it to all; RunError (one
    line, on every process) if it is unreadable, not a reference of this system, or was
    solved with other settings than ``config``'s (:func:`scf_inputs`)."""
    scf, error, aligned = None, "", False
    if is_main_process() and path.is_file():
        try:
            attrs = io.reference_attrs(path)
            _check_inputs(config, path, attrs, same_ansatz)
            scf = _scf(config, io.load_reference(path))
            aligned = bool(attrs.get("aligned", False))
        except io.CheckpointError as err:
            error = str(err)
        except ECPError as err:
            error = f"system.ecp: {err}"
        except (KeyError, ValueError) as err:
            error = f"{path}: not a reference of this system ({err})"
        except RunError as err:
            error = str(err)
        except Exception as err:  # anything else: the other processes wait for the answer
            error = f"{path}: cannot build its reference ({type(err).__name__}: {err})"
    shape = np.shape(scf.mo_up) if scf is not None else (0, 0)
    n_det = len(scf.ci) if scf is not None else 0
    flags = broadcast_from_main(np.array([scf is not None, bool(error), n_det, aligned, *shape]))
    if flags[1]:
        raise RunError(" ".join(error.split()) or f"process 0 could not read {path}")
    if not flags[0]:
        return None
    if scf is None:  # another process
        template = _template(config, *(int(n) for n in flags[[2, 4, 5]]))
        scf = _scf(config, broadcast_from_main(template))
    else:
        broadcast_from_main(reference_arrays(scf))
    return scf, bool(flags[3])
