"""The text ``nnqmc fit`` prints: what was fitted, the hyperparameters chosen, and the
training and held-out errors in mHa and mHa/bohr."""

from __future__ import annotations

import math

from .model import Model
from .session import FitReport

SELECTION = {
    "lml": "chosen by maximum log marginal likelihood",
    "cv": "chosen by least 5-fold cross-validation error",
    "fixed": "sigma fixed",
}
LABELS = {"both": "energies and forces", "energy": "energies", "forces": "forces (GDML)"}


def _milli(value: float) -> str:
    return f"{1000 * value:10.4f}" if math.isfinite(value) else f"{'-':>10s}"


def _hyperparameters(model: Model) -> list[str]:
    info = model.info
    level = (
        f"integration constant {model.offset:.6f} Ha"
        if info["use"] == "forces"
        else f"prior mean {model.mean:.6f} Ha"
    )
    sigmas = [row["sigma"] for row in info["grid"]]
    edge = len(sigmas) > 1 and model.sigma in (min(sigmas), max(sigmas))
    selection = SELECTION[info["select"]] + (" (at the edge of the grid)" if edge else "")
    extra = f", cross-validation error {info['cv_error']:.3g}" if "cv_error" in info else ""
    return [
        f"  sigma = {model.sigma:.4g} /bohr (on inverse distances), signal scale "
        f"{model.scale:.4g} Ha, {level}",
        f"  {selection}: log marginal likelihood {info['log_likelihood']:.2f}{extra}",
    ]


def format_report(report: FitReport, out: str | None = None) -> str:
    """Lines for the terminal (energies in mHa, forces in mHa/bohr)."""
    model, info = report.model, report.model.info
    noise = "per-point noise (error bars)" if info["noise"] == "per-point" else "uniform noise"
    lines = [
        f"{report.n_finished} finished geometries: {len(report.train_rows)} training, "
        f"{len(report.valid_rows)} held out",
        f"  fitted {LABELS[info['use']]}; {noise}; "
        f"{len(model.permutations)} permutation(s) of identical atoms",
        *_hyperparameters(model),
        f"  {'':10s}{'energy (mHa)':>22s}   {'force (mHa/bohr)':>22s}",
        f"  {'':10s}{'MAE':>10s}  {'RMSE':>10s}   {'MAE':>10s}  {'RMSE':>10s}",
    ]
    for name, e in (("training", report.train_errors), ("held out", report.valid_errors)):
        lines.append(
            f"  {name:10s}{_milli(e['energy_mae'])}  {_milli(e['energy_rmse'])}   "
            f"{_milli(e['forces_mae'])}  {_milli(e['forces_rmse'])}"
        )
    if out is not None:
        lines.append(f"model written to {out}")
    return "\n".join(lines)
