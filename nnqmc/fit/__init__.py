"""Kernel force fields from scan datasets: ``nnqmc fit DATASET.h5`` and ``nnqmc.ForceField``.

GDML form with Gaussian-process noise: a Matérn-5/2 kernel on inverse interatomic distances
(:mod:`.descriptor`), averaged over the permutations of identical atoms, with its energy,
energy–force and Hessian (force–force) blocks by JAX autodiff (:mod:`.kernel`); a GP on
energies and/or forces with per-point noise from the labels' error bars, hyperparameters by
marginal likelihood or cross-validation (:mod:`.gp`, :mod:`.train`); predictions of energy,
forces = -∇E and the energy's predictive standard deviation (:mod:`.model`); model files
(:mod:`.store`); the ASE calculator (:mod:`.calculator`, needs ASE). Atomic units
throughout: bohr, hartree, hartree/bohr.

    train = training_set(read_dataset("scan.h5"))        # finished rows
    model = fit(train, FitOptions(noise="per-point"))
    energy, forces, energy_std = predict(model, positions)   # (b,), (b, n, 3), (b,)
"""

from .data import TrainingSet, split, training_set
from .descriptor import SymmetryError, atom_permutations, inverse_distances
from .errors import FitError
from .metrics import errors
from .model import Model, predict
from .session import FitReport, fit_dataset, predict_std
from .store import load_model, save_model
from .train import FitOptions, fit

__all__ = [
    "FitError",
    "FitOptions",
    "FitReport",
    "Model",
    "SymmetryError",
    "TrainingSet",
    "atom_permutations",
    "errors",
    "fit",
    "fit_dataset",
    "inverse_distances",
    "load_model",
    "predict",
    "predict_std",
    "save_model",
    "split",
    "training_set",
]


def __getattr__(name: str):
    if name == "ForceField":  # imports ASE, an optional dependency
        try:
            from .calculator import ForceField
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("ase"):
                raise
            raise ImportError("nnqmc.ForceField needs ASE: pip install ase") from None
        return ForceField
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
