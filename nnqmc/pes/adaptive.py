"""Adaptive scans (``[scan] kind = "adaptive"``): which candidate geometry runs next.

The candidates are the rows of the dataset, a grid over ``scan.ranges``. The first
``scan.initial`` rows are spread out by farthest-point selection in the coordinates scaled
to [0, 1] (the first is the candidate nearest the centre). After that a force field is
fitted to the finished rows (:mod:`nnqmc.fit`, each energy and force with its own error bar
as noise), and the next row is the pending candidate where the fit's predictive standard
deviation of the energy is largest. The scan stops when that largest standard deviation
is below ``scan.target`` (hartree) or ``scan.budget`` rows have run (finished or failed).

Everything here reads the dataset only, so a scan that is killed and resumed chooses the
same rows again: an interrupted row (``running``) is taken up first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dataset import Dataset

if TYPE_CHECKING:
    from ..config import ScanConfig

FORCEFIELD = "forcefield.h5"  # adaptive scans: the latest fit of the finished rows

# label(k, **selection): run row k (QMC), record it done or failed with these selection
# columns, and write the dataset (nnqmc.pes.scan)
Label = Callable[..., None]

# (dataset, candidate rows) -> predictive std of the energy (hartree) at those rows, or
# None if the finished rows cannot be fitted
PredictStd = Callable[[Dataset, np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class Choice:
    """The next row to run (None: stop), the predictive std there (NaN while spreading
    out the initial rows), and why."""

    row: int | None
    std: float
    reason: str


def scaled(labels: np.ndarray) -> np.ndarray:
    """Each column of ``labels`` mapped to [0, 1] (a constant column to 0)."""
    low, high = labels.min(axis=0), labels.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (labels - low) / span


def farthest_point(points: np.ndarray, taken: np.ndarray, free: np.ndarray) -> int:
    """The row of ``free`` farthest (Euclidean) from every row of ``taken``; with nothing
    taken, the one nearest the centre of ``points``' bounding box."""
    if len(taken) == 0:
        centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
        return int(free[np.argmin(np.linalg.norm(points[free] - centre, axis=1))])
    gaps = np.linalg.norm(points[free][:, None, :] - points[taken][None, :, :], axis=2)
    return int(free[np.argmax(gaps.min(axis=1))])


def rows_with(data: Dataset, status: str) -> np.ndarray:
    """Indices of the rows with this status."""
    return np.array([k for k in range(data.n) if data.status(k) == status], dtype=np.int64)


def next_row(
    data: Dataset, initial: int, target: float, budget: int, predict_std: PredictStd
) -> Choice:
    """The next row of an adaptive scan (see the module docstring)."""
    running = rows_with(data, "running")
    if len(running):
        k = int(running[0])
        return Choice(k, float(data.columns["selection_std"][k]), "resumed")
    done, failed = rows_with(data, "done"), rows_with(data, "failed")
    tried = np.concatenate([done, failed])
    if len(tried) >= budget:
        return Choice(None, np.nan, f"budget of {budget} geometries reached")
    free = rows_with(data, "pending")
    if len(free) == 0:
        return Choice(None, np.nan, "every candidate has run")
    if len(tried) < initial or len(done) < 2:
        return Choice(farthest_point(scaled(data.labels), tried, free), np.nan, "spread")
    std = predict_std(data, free)
    if std is None:
        return Choice(farthest_point(scaled(data.labels), tried, free), np.nan, "spread (no fit)")
    std = np.asarray(std, np.float64)
    j = int(np.argmax(std))
    if std[j] < target:
        return Choice(
            None, float(std[j]), f"largest predictive std {std[j] * 1e3:.3f} mHa < target"
        )
    return Choice(int(free[j]), float(std[j]), "largest predictive std")


def selection_count(data: Dataset) -> int:
    """How many rows an adaptive scan has chosen so far."""
    return int(np.sum(data.columns["selection"] >= 0))


def fit_and_save(data: Dataset, scan_dir: Path, log: Callable[[str], None]):
    """The force field of the finished rows (energies and forces, each with its error bar as
    noise; symmetric under permutations of identical atoms where there are at most
    ``MAX_PERMUTATIONS``), saved as :data:`FORCEFIELD`; None, with the reason logged, if
    they cannot be fitted (the adaptive scan then spreads out instead)."""
    from ..fit import FitError, FitOptions, fit, save_model, training_set
    from ..fit.descriptor import MAX_PERMUTATIONS, permutation_count

    symmetric = permutation_count(data.atomic_numbers) <= MAX_PERMUTATIONS
    try:
        model = fit(training_set(data), FitOptions(symmetric=symmetric))
    except FitError as err:
        log(f"warning: no force field from the finished geometries ({err})")
        return None
    save_model(scan_dir / FORCEFIELD, model)
    return model


def label_count(data: Dataset) -> int:
    """Rows that have run, finished or failed (what a budget counts)."""
    return len(rows_with(data, "done")) + len(rows_with(data, "failed"))


def run_adaptive(
    scan: ScanConfig, data: Dataset, scan_dir: Path, log: Callable[[str], None], label: Label
) -> None:
    """Choose and run rows (``label``) one at a time until the fit is certain enough or the
    budget is spent (the module docstring). The fit of the finished rows is saved as
    :data:`FORCEFIELD` in the scan directory at each choice and once more at the end."""
    fitted = [0]  # finished rows in the saved fit

    def predict_std(data: Dataset, rows: np.ndarray) -> np.ndarray | None:
        from ..fit import predict

        model = fit_and_save(data, scan_dir, log)
        if model is None:
            return None
        fitted[0] = len(rows_with(data, "done"))
        return predict(model, data.positions[rows])[2]

    while True:
        choice = next_row(data, scan.initial, scan.target, scan.budget, predict_std)
        if choice.row is None:
            log(f"adaptive scan stops: {choice.reason}")
            done = len(rows_with(data, "done"))
            if done >= 2 and done != fitted[0]:
                fit_and_save(data, scan_dir, log)  # the last geometry into the saved fit
            return
        k = choice.row
        order = int(data.columns["selection"][k])
        if order < 0:
            order = selection_count(data)
        std = "" if np.isnan(choice.std) else f", predictive std {choice.std * 1e3:.3f} mHa"
        log(f"geometry {k} (choice {order + 1} of at most {scan.budget}: {choice.reason}{std})")
        label(k, selection=order, selection_std=choice.std)
