"""What ``nnqmc fit`` does, as a function: the finished rows of a dataset, a random split
into training and held-out geometries, the fit, and its errors on both; and what an
adaptive scan asks of a fit: the energy's predictive standard deviation at candidate rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pes.dataset import Dataset
from .data import split, training_set
from .metrics import errors
from .model import Model, predict
from .train import FitOptions, fit


@dataclass(frozen=True)
class FitReport:
    """A fitted model, which finished geometries trained it and which were held out
    (indices among the finished rows), and its errors on each (see
    :func:`nnqmc.fit.metrics.errors`)."""

    model: Model
    n_finished: int
    train_rows: np.ndarray
    valid_rows: np.ndarray
    train_errors: dict[str, float | int]
    valid_errors: dict[str, float | int]


def fit_dataset(
    data: Dataset, options: FitOptions | None = None, valid: float = 0.2, seed: int = 0
) -> FitReport:
    """Fit the finished rows of ``data`` with a fraction ``valid`` held out (seeded)."""
    finished = training_set(data)
    train_rows, valid_rows = split(finished.n, valid, seed)
    train, held = finished.subset(train_rows), finished.subset(valid_rows)
    model = fit(train, options)
    return FitReport(
        model, finished.n, train_rows, valid_rows, errors(model, train), errors(model, held)
    )


def predict_std(data: Dataset, rows: np.ndarray, options: FitOptions | None = None) -> np.ndarray:
    """The energy's predictive standard deviation (hartree) at the geometries of ``rows`` of
    ``data``, from a fit to all of its finished rows (FitError if there are none)."""
    model = fit(training_set(data), options)
    return predict(model, data.positions[np.asarray(rows, np.int64)])[2]
