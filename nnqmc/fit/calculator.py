"""``nnqmc.ForceField``: a fitted model as an ASE calculator (eV, Å, eV/Å; CODATA 2018 as the
exports). Imports ASE, which is not a core dependency: reach it as ``nnqmc.ForceField``,
which says in one line when ASE is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..pes.export import BOHR_ANGSTROM, HARTREE_EV
from .errors import FitError
from .model import Model, predict
from .store import load_model


class ForceField(Calculator):
    """An ASE calculator of a model file written by ``nnqmc fit`` (or a :class:`Model`).

    ``results``: ``energy`` (eV), ``forces`` (eV/Å) and ``energy_std``, the predictive
    standard deviation of the energy (eV). Molecules only (no periodic cell); the atoms must
    be the model's, in its order."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: str | Path | Model, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model if isinstance(model, Model) else load_model(model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        numbers = np.asarray(self.atoms.numbers)
        if not np.array_equal(numbers, self.model.atomic_numbers):
            raise FitError(
                f"the atoms {numbers.tolist()} are not the model's "
                f"{self.model.atomic_numbers.tolist()} (same elements in the same order)"
            )
        if np.any(self.atoms.pbc):
            raise FitError("the force field is for molecules: no periodic boundary conditions")
        positions = np.asarray(self.atoms.positions, np.float64) / BOHR_ANGSTROM
        energy, forces, std = predict(self.model, positions[None])
        self.results = {
            "energy": float(energy[0]) * HARTREE_EV,
            "forces": forces[0] * (HARTREE_EV / BOHR_ANGSTROM),
            "energy_std": float(std[0]) * HARTREE_EV,
        }
