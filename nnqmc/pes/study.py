"""``nnqmc bench-scan``: how many training steps a scan needs with and without warm starts.

For each cold budget ``B_c`` the scan runs cold (every geometry trains ``B_c`` steps from
the Hartree–Fock start); for each warm budget ``B_w`` it runs warm: geometry 0 is the cold
run of budget ``S_0`` (the smallest cold budget that met the target, else the largest), and
every later geometry trains ``B_w`` steps from its nearest finished neighbour. Training
steps in all (summed from the datasets): ``n·B_c`` cold, ``S_0 + (n-1)·B_w`` warm; a warm
scan directory keeps the first geometry it was started with.

A scan meets the target when every geometry's error ``E_k - E_ref,k`` is at most
``tolerance``. ``E_ref`` is ``scan.reference`` where the input gives it, else the lowest
VMC energy of each geometry over all runs of the study (variational, so the closest known).
Each scan is an ordinary scan directory (``cold-B``, ``warm-B``), so a killed study
resumes where it stopped. Forces and CCSD(T) are switched off: only energies are compared.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import api, io
from ..config import Config, with_settings
from .dataset import read_dataset, write_dataset
from .scan import Log, Shard, dataset_path, geometry_dir, open_dataset, run_scan

STUDY = "study.json"


@dataclass(frozen=True)
class Trial:
    """One scan of the study and how close it came to the reference."""

    mode: str  # "cold" or "warm"
    budget: int  # training steps of every geometry (warm: every one after the first)
    total_steps: int
    wall_time: float  # seconds of training and evaluation, summed over geometries
    max_error: float  # max_k (E_k - E_ref,k), hartree
    mean_abs_error: float
    errors: list[float]
    error_bars: list[float]
    meets: bool


def _config_with(config: Config, **sections: dict[str, Any]) -> Config:
    for name, values in sections.items():
        config = with_settings(config, name, **values)
    return config


def _columns(path: Path) -> dict[str, np.ndarray]:
    data = read_dataset(path)
    cols = dict(data.columns)
    cols.setdefault("reference_energy", np.full(data.n, np.nan))
    cols["done"] = np.array([data.status(k) == "done" for k in range(data.n)])
    return cols


def trial(
    mode: str,
    budget: int,
    total_steps: int,
    energy: np.ndarray,
    error: np.ndarray,
    reference: np.ndarray,
    wall: np.ndarray,
    tolerance: float,
) -> Trial:
    """Errors of one scan's energies against the reference (all arrays one per geometry)."""
    deviation = np.asarray(energy) - np.asarray(reference)
    return Trial(
        mode=mode,
        budget=int(budget),
        total_steps=int(total_steps),
        wall_time=float(np.sum(wall)),
        max_error=float(np.max(deviation)),
        mean_abs_error=float(np.mean(np.abs(deviation))),
        errors=[float(v) for v in deviation],
        error_bars=[float(v) for v in error],
        meets=bool(np.all(deviation <= tolerance)),
    )


def cheapest(trials: Sequence[Trial], mode: str) -> Trial | None:
    """The trial of ``mode`` with the fewest total steps that meets the target."""
    ok = [t for t in trials if t.mode == mode and t.meets]
    return min(ok, key=lambda t: t.total_steps) if ok else None


def _seed_first_geometry(warm_dir: Path, cold_dir: Path, config: Config, text: str) -> None:
    """Start a warm scan with geometry 0 done: the cold scan's run and dataset row."""
    shard = Shard()
    if dataset_path(warm_dir, shard).exists():
        return
    cold = read_dataset(dataset_path(cold_dir, shard))
    data = open_dataset(config, text, warm_dir, shard)
    shutil.copytree(
        geometry_dir(cold_dir, 0),
        geometry_dir(warm_dir, 0),
        ignore=shutil.ignore_patterns("*.lock"),
    )
    data.set_row(0, **{name: cold.columns[name][0] for name in data.columns})
    write_dataset(dataset_path(warm_dir, shard), data)


def warm_start_study(
    config: Config,
    text: str,
    out_dir: str | Path,
    cold_budgets: Sequence[int],
    warm_budgets: Sequence[int],
    tolerance: float = 1e-3,
    progress: api.Progress | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run the cold and warm scans (resuming finished ones) and compare their step counts.

    Returns (and writes to ``out_dir/study.json``) every trial, the reference used, the
    cheapest cold and warm scans that meet ``tolerance`` (hartree) and the ratio of their
    total training steps."""
    if config.scan.kind is None:
        raise api.RunError(f"{config.source or config.name}: bench-scan: missing section [scan]")
    if config.scan.kind in ("adaptive", "thermal"):
        raise api.RunError(
            f"{config.source or config.name}: bench-scan compares fixed geometry lists; "
            f"a{'n' * (config.scan.kind == 'adaptive')} {config.scan.kind} scan chooses its "
            "own (bench/adaptive_vs_uniform.py compares adaptive ones)"
        )
    if not cold_budgets or not warm_budgets or min(*cold_budgets, *warm_budgets) <= 0:
        raise ValueError("--cold and --warm need positive step budgets")
    out = Path(out_dir)
    log = log or (lambda message: None)
    energies_only = {"forces": False, "ccsd_t": False}
    scans: list[tuple[str, int, Path]] = []
    for budget in sorted(set(cold_budgets)):
        cfg = _config_with(config, train={"steps": budget}, scan=energies_only)
        path = out / f"cold-{budget}"
        log(f"cold scan, {budget} steps per geometry")
        run_scan(cfg, text, path, cold=True, progress=progress, log=log)
        scans.append(("cold", budget, path))

    def reference_of(paths: list[Path]) -> tuple[np.ndarray, str]:
        given = _columns(dataset_path(paths[0], Shard()))["reference_energy"]
        if np.all(np.isfinite(given)):
            return given, "scan.reference"
        lowest = np.min([_columns(dataset_path(p, Shard()))["energy"] for p in paths], axis=0)
        return lowest, "lowest VMC energy of the study"

    def trials_of(reference: np.ndarray) -> list[Trial]:
        result = []
        for mode, budget, path in scans:
            c = _columns(dataset_path(path, Shard()))
            if not c["done"].all():
                raise api.RunError(f"{path}: not every geometry finished; run it again")
            total = int(np.sum(c["steps"]))  # as run (a warm scan keeps its first geometry)
            energy, err, wall = c["energy"], c["energy_err"], c["wall_time"]
            result.append(trial(mode, budget, total, energy, err, reference, wall, tolerance))
        return result

    reference, source = reference_of([s[2] for s in scans])
    cold_ok = cheapest(trials_of(reference), "cold")
    first = cold_ok.budget if cold_ok is not None else max(cold_budgets)
    for budget in sorted(set(warm_budgets)):
        cfg = _config_with(config, train={"steps": first}, scan={**energies_only, "steps": budget})
        path = out / f"warm-{budget}"
        _seed_first_geometry(path, out / f"cold-{first}", cfg, text)
        log(f"warm scan, {budget} steps per geometry after the first ({first} steps)")
        run_scan(cfg, text, path, progress=progress, log=log)
        scans.append(("warm", budget, path))
    reference, source = reference_of([s[2] for s in scans])
    trials = trials_of(reference)
    best_cold, best_warm = cheapest(trials, "cold"), cheapest(trials, "warm")
    ratio = None
    if best_cold is not None and best_warm is not None:
        ratio = best_cold.total_steps / best_warm.total_steps
    result = {
        "name": config.name,
        "geometries": len(reference),
        "tolerance": tolerance,
        "reference": [float(v) for v in reference],
        "reference_source": source,
        "first_geometry_steps": first,
        "trials": [asdict(t) for t in trials],
        "cheapest_cold": None if best_cold is None else best_cold.total_steps,
        "cheapest_warm": None if best_warm is None else best_warm.total_steps,
        "step_ratio": ratio,
    }
    io.write_json_atomic(out / STUDY, result)
    return result


def format_study(result: dict[str, Any]) -> str:
    """The study as a table (errors in mHa) and its conclusion."""
    lines = [
        f"{result['name']}: {result['geometries']} geometries, target max(E - E_ref) <= "
        f"{1e3 * result['tolerance']:.2f} mHa, E_ref = {result['reference_source']}",
        f"{'mode':<5} {'budget':>6} {'steps':>7} {'wall s':>8} {'max err':>8} "
        f"{'mean |err|':>10}  {'errors (mHa)':<s}  meets",
    ]
    for t in result["trials"]:
        errors = " ".join(
            f"{1e3 * e:+.2f}({1e3 * b:.2f})"
            for e, b in zip(t["errors"], t["error_bars"], strict=True)
        )
        lines.append(
            f"{t['mode']:<5} {t['budget']:>6} {t['total_steps']:>7} {t['wall_time']:>8.0f} "
            f"{1e3 * t['max_error']:>+8.2f} {1e3 * t['mean_abs_error']:>10.2f}  {errors}  "
            f"{'yes' if t['meets'] else 'no'}"
        )
    cold, warm = result["cheapest_cold"], result["cheapest_warm"]
    if result["step_ratio"] is None:
        missing = "cold" if cold is None else "warm"
        lines.append(f"no {missing} scan met the target: give larger {missing} budgets")
    else:
        lines.append(
            f"fewest steps that meet the target: cold {cold}, warm {warm} "
            f"(warm needs {result['step_ratio']:.2f}x fewer)"
        )
    return "\n".join(lines)
