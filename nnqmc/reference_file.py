"""A run directory's mean-field reference (``reference.h5``): the orbitals, determinants, CI
weights and energies its parameters were trained on, read back as an :class:`SCFResult`
without solving the SCF again (:func:`read_reference`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import io
from .config import Config
from .errors import RunError
from .parallel import broadcast_from_main, is_main_process
from .pseudopotentials import ECPError
from .scf import SCFResult, reference_arrays, stored_scf

__all__ = ["read_reference"]


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


def read_reference(config: Config, path: Path) -> tuple[SCFResult, bool] | None:
    """The reference in ``path`` as an SCFResult of ``config``'s system, and whether its
    occupied orbitals were aligned across geometries (``scan.train = 'shared'``); None
    where there is no such file. Process 0 reads it and sends it to all; RunError if it is
    unreadable or not a reference of this system."""
    scf, error, aligned = None, "", False
    if is_main_process() and path.is_file():
        try:
            scf = _scf(config, io.load_reference(path))
            aligned = bool(io.reference_attrs(path).get("aligned", False))
        except io.CheckpointError as err:
            error = str(err)
        except ECPError as err:
            error = f"system.ecp: {err}"
        except (KeyError, ValueError) as err:
            error = f"{path}: not a reference of this system ({err})"
    shape = np.shape(scf.mo_up) if scf is not None else (0, 0)
    n_det = len(scf.ci) if scf is not None else 0
    flags = broadcast_from_main(np.array([scf is not None, bool(error), n_det, aligned, *shape]))
    if flags[1]:
        raise RunError(error or f"process 0 could not read {path}")
    if not flags[0]:
        return None
    if scf is None:  # another process
        template = _template(config, *(int(n) for n in flags[[2, 4, 5]]))
        scf = _scf(config, broadcast_from_main(template))
    else:
        broadcast_from_main(reference_arrays(scf))
    return scf, bool(flags[3])
