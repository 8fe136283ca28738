"""Thermal scans (``[scan] kind = "thermal"``): QMC labels where a force field's Boltzmann
distribution needs them (docs/thermal.md).

After the ``initial`` geometries, each round fits a force field to the finished rows, draws
``candidates`` from exp(-E_FF/kT) by ``method`` (MD, or a flow with importance weights w),
and appends and runs the candidate of largest w·σ² (σ the fit's predictive std; with
``batch`` > 1 up to that many, each by the variance left given the earlier ones,
:func:`pick_batch`), until ``budget`` rows have run or the largest √(w n)·σ is below
``target``. Seeds come from ``scan.seed`` and the round, the fit from the finished rows
alone, so a killed scan resumes with the same choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..api import RunError
from .adaptive import Label, fit_and_save, label_count, rows_with, selection_count
from .dataset import Dataset, append_rows
from .geometry import kabsch_rotation

if TYPE_CHECKING:
    from ..config import ScanConfig
    from ..thermal.sample import ThermalSample

Log = Callable[[str], None]


def round_seed(seed: int, number: int) -> int:
    """The sampler seed of round ``number`` of a scan with ``seed`` (below 2**31): the
    same in a resumed scan, different from round to round."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0] >> 1)


def scores(weights: np.ndarray, std: np.ndarray) -> np.ndarray:
    """p·σ² of each candidate: its normalised weight times its predictive variance."""
    return np.asarray(weights, np.float64) * np.asarray(std, np.float64) ** 2


def best_candidate(weights: np.ndarray, std: np.ndarray) -> int:
    """The candidate of largest p·σ² (the first of equal ones)."""
    return int(np.argmax(scores(weights, std)))


BOX = 3.0  # a candidate's interatomic distances: at most this many times the input's


def pair_distances(positions: np.ndarray) -> np.ndarray:
    """The distances of every pair i < j of atoms, (..., n_atoms, 3) -> (..., n_pairs)."""
    x = np.asarray(positions, np.float64)
    i, j = np.triu_indices(x.shape[-2], 1)
    return np.linalg.norm(x[..., i, :] - x[..., j, :], axis=-1)


def admissible(positions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which candidates (m, n_atoms, 3) may be chosen: every pair of nuclei at least
    ``MIN_NUCLEAR_DISTANCE`` apart (a molecule that can run; the flow's uniform share
    reaches r -> 0) and at most ``BOX`` times as far apart as in ``reference``, the flow's
    box for its bonds. Beyond its data a fit's energy returns to its prior mean, so MD on
    it drifts apart (H2 at 1000 K reached 50 bohr in one round of a Morse model)."""
    from ..molecule import MIN_NUCLEAR_DISTANCE

    d, top = pair_distances(positions), BOX * pair_distances(reference)
    return np.all((d >= MIN_NUCLEAR_DISTANCE) & (d <= top), axis=-1)


def superposed(reference: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``coords`` (n_atoms, 3) moved rigidly onto ``reference``: centroids matched, then
    :func:`~nnqmc.pes.geometry.kabsch_rotation`; MD frames drift and turn."""
    rotation = kabsch_rotation(reference, coords)
    return (coords - coords.mean(axis=0)) @ rotation + reference.mean(axis=0)


def rows_to_run(data: Dataset) -> list[int]:
    """Rows to run before the next round: chosen ones not finished (interrupted, or chosen
    by a round whose scan was killed before running them) in selection order, then the
    initial rows not yet run, in order."""
    order = data.columns["selection"]
    unfinished = [k for k in range(data.n) if data.status(k) in ("pending", "running")]
    chosen = sorted((k for k in unfinished if order[k] >= 0), key=lambda k: order[k])
    return chosen + [k for k in unfinished if order[k] < 0]


def draw(model: Any, scan: ScanConfig, number: int) -> ThermalSample:
    """Round ``number``'s candidates: ``scan.candidates`` geometries of the model's
    exp(-E/kT) by ``scan.method``; RunError, one line, if the sampler cannot run."""
    from ..thermal import PACKAGES
    from ..thermal.flow import FlowOptions
    from ..thermal.md import MDOptions
    from ..thermal.sample import sample

    seed = round_seed(scan.seed, number)
    md = MDOptions(equilibration=scan.equilibration, stride=scan.stride, seed=seed)
    flow = FlowOptions(steps=scan.flow_steps, seed=seed)
    try:
        return sample(model, scan.temperature, scan.method, scan.candidates, md=md, flow=flow)
    except ImportError as err:
        module = (err.name or "flowjax").split(".")[0]
        raise RunError(
            f"a thermal scan by {scan.method} needs {module}: pip install "
            f"{PACKAGES.get(module, module)}"
        ) from None
    except ValueError as err:
        raise RunError(f"thermal scan, round {number}: {err}") from None


@dataclass(frozen=True)
class Pick:
    """A round's choice: the candidate (None: stop, ``reason`` says why), its geometry, its
    predictive std σ (hartree; in a batch, given the round's earlier choices), its weight
    times the number of candidates, the round."""

    index: int | None
    reason: str
    positions: np.ndarray | None = None
    std: float = np.nan
    weight: float = np.nan
    number: int = 0


Covariance = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pick(candidates: ThermalSample, target: float, reference: np.ndarray, number: int = 0) -> Pick:
    """Round ``number``'s :func:`admissible` candidate of largest p·σ², or a stop when that
    is below ``target``²/n (n candidates): with MD's equal weights when every σ is below
    ``target``; a flow candidate's σ counts with the factor √(w n), so that the few of its
    uniform share far from the data (σ large, w tiny) do not keep the scan going."""
    return pick_batch(candidates, target, reference, number)[0]


def pick_batch(
    candidates: ThermalSample,
    target: float,
    reference: np.ndarray,
    number: int = 0,
    size: int = 1,
    covariance: Covariance | None = None,
) -> list[Pick]:
    """Up to ``size`` choices of round ``number``, each :func:`pick`'s rule applied to the
    variances given the energies at the earlier choices: after choosing c, with
    u = cov(E(x), E(c) | earlier) / σ(c | earlier), every σ²(x) becomes σ²(x) − u(x)²
    (``covariance(positions, c)``: the fit's posterior covariance of the candidates'
    energies with E(c)). A candidate close to a choice loses its variance with it, so a
    batch spreads out instead of taking neighbours of one peak. Ends with a stop
    (index None, its reason) when fewer than ``size`` are chosen."""
    std, weights = candidates.energy_std, candidates.weights
    valid = admissible(candidates.positions, reference) & np.isfinite(std) & (weights > 0.0)
    if not valid.any():
        reason = f"no candidate within {BOX:g} times the input's distances"
        return [Pick(None, f"{reason} (of finite σ, weight > 0)")]
    variance = np.where(valid, np.asarray(std, np.float64), 0.0) ** 2
    directions: list[np.ndarray] = []
    picks: list[Pick] = []
    while len(picks) < size:
        if not valid.any():
            return picks + [Pick(None, "every admissible candidate chosen")]
        sigma = np.sqrt(np.clip(variance, 0.0, None))
        j = best_candidate(np.where(valid, weights, 0.0), np.where(valid, sigma, 0.0))
        weight = float(weights[j] * len(std))
        weighted = np.sqrt(weight) * float(sigma[j])  # σ for MD
        if weighted < target:
            return picks + [Pick(None, f"largest √(w·n)·σ {weighted * 1e3:.3f} mHa < target")]
        position = candidates.positions[j]
        picks.append(Pick(j, "largest p·σ²", position, float(sigma[j]), weight, number))
        valid[j] = False
        if len(picks) < size and covariance is not None:
            column = covariance(candidates.positions, candidates.positions[j])
            column = column - sum(u * u[j] for u in directions)
            floor = 1e-12 * float(std[j]) ** 2  # below it, rounding: nothing to condition
            u = column / np.sqrt(column[j]) if column[j] > floor else np.zeros_like(column)
            directions.append(u)
            variance = variance - u**2
    return picks


def run_unfinished(data: Dataset, scan: ScanConfig, log: Log, label: Label) -> None:
    """Run the rows chosen and not finished, then the initial rows not yet run."""
    for k in rows_to_run(data):
        order = int(data.columns["selection"][k])
        extra = {}
        if order < 0:  # an initial row: chosen now
            order = selection_count(data)
            extra = {"selection": order, "round": 0, "sampler": "initial"}
        sampler = extra.get("sampler") or str(data.columns["sampler"][k])
        log(f"geometry {k} (choice {order + 1} of at most {scan.budget}: {sampler})")
        label(k, **extra)


def next_round(
    data: Dataset, scan: ScanConfig, reference: np.ndarray, scan_dir: Path, log: Log
) -> list[Pick]:
    """Fit the finished rows (saved, so that the scan's force field always has them all),
    then, within the budget, draw the next round's candidates and choose up to
    ``scan.batch`` of them (:func:`pick_batch`); the last Pick is a stop when fewer."""
    from ..fit.model import posterior_covariance

    done = len(rows_with(data, "done"))
    model = fit_and_save(data, scan_dir, log) if done >= 2 else None
    room = scan.budget - label_count(data)
    if room <= 0:
        return [Pick(None, f"budget of {scan.budget} geometries reached")]
    if model is None:
        return [Pick(None, f"no force field from the {done} finished geometries")]
    number = int(np.max(data.columns["round"])) + 1
    candidates = draw(model, scan, number)
    log(
        f"round {number}: {len(candidates.weights)} candidates by {scan.method} at "
        f"{scan.temperature:g} K (ESS {100 * candidates.ess:.0f} %), largest predictive std "
        f"{np.max(candidates.energy_std) * 1e3:.3f} mHa"
    )
    covariance = lambda x, c: posterior_covariance(model, x, c)
    size = min(scan.batch, room)
    return pick_batch(candidates, scan.target, reference, number, size, covariance)


def run_thermal(
    scan: ScanConfig,
    data: Dataset,
    reference: np.ndarray,
    scan_dir: Path,
    save: Callable[[], None],
    log: Log,
    label: Label,
) -> None:
    """Run a thermal scan (docs/thermal.md): rows are run by ``label``, appended rows
    written by ``save``; chosen geometries superposed on ``reference`` (bohr)."""
    while True:
        run_unfinished(data, scan, log, label)
        picks = next_round(data, scan, reference, scan_dir, log)
        chosen = [p for p in picks if p.index is not None]
        rows = []
        for choice in chosen:
            geometry = superposed(reference, choice.positions)
            [k] = append_rows(data, geometry[None], np.array([[data.n]], np.float64))
            data.set_row(
                k,
                selection=selection_count(data),
                selection_std=choice.std,
                selection_weight=choice.weight,
                round=choice.number,
                sampler=scan.method,
                temperature=scan.temperature,
            )
            rows.append(k)
        if chosen:
            save()
        for k, choice in zip(rows, chosen, strict=True):
            log(
                f"round {choice.number} chose geometry {k}: predictive std "
                f"{choice.std * 1e3:.3f} mHa, weight × n {choice.weight:.3g}"
            )
        if not chosen:
            log(f"thermal scan stops: {picks[-1].reason}")
            return
        if picks[-1].index is None:
            log(f"round {chosen[0].number}: {len(chosen)} of {scan.batch} ({picks[-1].reason})")
