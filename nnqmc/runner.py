"""One ``nnqmc run`` (:func:`run`), ``nnqmc eval`` (:func:`evaluate_run`) and ``nnqmc dmc``
(:func:`dmc_run`): the phases chained in a locked run directory, their results returned as a
:class:`RunResult` and written as result.json, the logs and the plot."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import io, programs
from .config import Config, load_config, to_toml, with_settings
from .errors import RunError
from .estimate import training_slope
from .parallel import global_device_count, process_count
from .phases.dmc import DMCResult, dmc
from .phases.evaluation import EvalResult, evaluate
from .phases.training import StepHook, TrainResult, saved_training, train
from .plot import plot_training
from .reference_file import read_reference, save_reference
from .run_setup import Run, check_devices, prepare
from .rundir import (
    Progress,
    cannot_write,
    check_run_directory,
    has_checkpoint,
    lock_directory,
    main_flag,
    on_main,
    open_run_directory,
    release,
    run_directory,
    stop_on_signals,
    warn,
)
from .scf import reference_arrays
from .version import __version__

__all__ = [
    "RunResult",
    "correlation_fraction",
    "dmc_run",
    "evaluate_run",
    "prepare_stored",
    "release_compiled",
    "run",
    "stored_reference",
    "summarize",
    "wants_dmc",
]


def wants_dmc(config: Config) -> bool:
    """Whether the input asks for diffusion Monte Carlo (it has a ``[dmc]`` section)."""
    return "dmc" in config.data


CORRELATION_FLOOR = 1e-4
"""Ha: below this correlation energy (e.g. one valence electron with an ECP) the fraction
recovered means nothing and is not reported."""


def correlation_fraction(energy: float, hf_energy: float, exact: float | None) -> float | None:
    """(E_HF - E) / (E_HF - E_exact)."""
    if exact is None or abs(hf_energy - exact) < CORRELATION_FLOOR:
        return None
    return (hf_energy - energy) / (hf_energy - exact)


def summarize(
    run: Run, trained: TrainResult, evaluated: EvalResult, diffused: DMCResult | None = None
) -> dict[str, Any]:
    """The contents of result.json (with ``dmc_*`` keys after a DMC phase)."""
    cfg = run.config
    ref = cfg.reference_energy
    finite = np.asarray(trained.history.get("finite", []))
    return {
        "name": cfg.name,
        "energy": evaluated.energy,
        "energy_err": evaluated.energy_err,
        "variance": evaluated.variance,
        "autocorrelation_time": evaluated.tau,
        "hf_energy": run.scf.energy,
        "hf_method": run.scf.hf_method or run.scf.method,
        "cas_energy": run.scf.cas_energy,
        "basis": cfg.system.basis,
        **_electrons_summary(run),
        "reference_energy": ref,
        "error_vs_reference": None if ref is None else evaluated.energy - ref,
        "correlation_fraction": correlation_fraction(evaluated.energy, run.scf.energy, ref),
        "ansatz": cfg.ansatz.kind,
        "optimizer": cfg.train.optimizer,
        "steps": trained.steps,
        "rejected_steps": int(np.sum(finite == 0)),
        **_slope_summary(trained.history),
        "eval_steps": evaluated.steps,
        "walkers": cfg.train.walkers,
        "devices": global_device_count(),
        "processes": process_count(),
        "precision": cfg.precision,
        "train_seconds": trained.wall_seconds,
        "eval_seconds": evaluated.wall_seconds,
        "wall_seconds": trained.wall_seconds + evaluated.wall_seconds,
        "observables": evaluated.observables,
        "version": __version__,
        **(_dmc_summary(run, diffused) if diffused is not None else {}),
    }


def _electrons_summary(run: Run) -> dict[str, Any]:
    """The atoms, each one's ECP (None: all-electron) and core electrons removed, and the
    (valence) electron count the energies belong to."""
    mol = run.molecule
    if mol is None:
        return {}
    names = dict(mol.ecp)
    return {
        "atoms": list(mol.symbols),
        "ecp": [names.get(s) for s in mol.symbols] if names else None,
        "core_electrons": [int(c) for c in mol.core],
        "electrons": int(mol.n_elec),
    }


# The share of the last training steps whose energy slope result.json reports.
SLOPE_FRACTION = 0.2


def _slope_summary(history: dict[str, np.ndarray]) -> dict[str, Any]:
    """The training energy's slope over the last ``SLOPE_FRACTION`` of the steps (rejected
    steps left out), in Ha per 1000 steps, and whether it still falls (by over 2σ);
    ``None`` for too few steps."""
    energy = np.asarray(history.get("energy", []), dtype=np.float64)
    finite = np.asarray(history.get("finite", []))
    if finite.shape == energy.shape:
        energy = np.where(finite > 0, energy, np.nan)
    fit = training_slope(energy, SLOPE_FRACTION)
    return {
        "training_slope": None if fit is None else 1000.0 * fit.slope,
        "training_slope_err": None if fit is None else 1000.0 * fit.error,
        "training_slope_steps": None if fit is None else fit.window,
        "still_improving": None if fit is None else fit.falling(2.0),
    }


@dataclass(frozen=True)
class RunResult:
    """One run: the prepared run (on the mean-field reference it was trained on), its
    training, evaluation and DMC (None without ``[dmc]``)."""

    run: Run
    trained: TrainResult
    evaluated: EvalResult
    diffused: DMCResult | None = None

    def summary(self) -> dict[str, Any]:
        """The contents of result.json."""
        return summarize(self.run, self.trained, self.evaluated, self.diffused)


def _dmc_summary(run: Run, diffused: DMCResult) -> dict[str, Any]:
    ref = run.config.reference_energy
    return {
        "dmc_energy": diffused.energy,
        "dmc_energy_err": diffused.energy_err,
        "dmc_error_vs_reference": None if ref is None else diffused.energy - ref,
        "dmc_correlation_fraction": correlation_fraction(diffused.energy, run.scf.energy, ref),
        "dmc_timestep_slope": diffused.slope,
        "dmc_timestep_chi2_per_dof": diffused.chi2_per_dof,
        "dmc_walkers": diffused.walkers,
        "dmc_nonlocal": programs.dmc_nonlocal_report(run),
        "dmc_seconds": diffused.wall_seconds,
        "dmc": diffused.rows,
    }


def _write_results(path: Path, result: RunResult) -> None:
    """result.json, the plot, and the energies as attributes of eval.h5 and dmc.h5 (their
    rows were written step by step)."""
    evaluated, diffused, summary = result.evaluated, result.diffused, result.summary()
    try:
        io.set_attrs(
            path / io.EVAL_LOG, {"energy": evaluated.energy, "energy_err": evaluated.energy_err}
        )
        if diffused is not None:
            attrs = {"energy": diffused.energy, "energy_err": diffused.energy_err}
            io.set_attrs(path / io.DMC_LOG, attrs)
        io.write_json_atomic(path / io.RESULT, summary)
        plot_training(path / io.PLOT, result.trained.history, summary)
    except OSError as err:
        raise RunError(cannot_write(path, err)) from None


def run(
    config: Config,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    force: bool = False,
    *,
    initial: Callable[[Run], tuple[Any, np.ndarray]] | None = None,
    observables: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    keep_compiled: bool = False,
) -> RunResult:
    """Train, evaluate and write the run directory; returns the result (``.summary()``: the
    contents of result.json).

    ``initial(prepared_run) -> (params, walkers)``: a warm start for a fresh training (see
    :func:`train`; ignored when resuming from a checkpoint). ``observables``: extra ones
    for :func:`evaluate` (a dict, or a function of the Hamiltonian that builds them).
    ``keep_compiled``: leave the compiled steps for the next run of the same shape (a scan's
    next geometry, :mod:`nnqmc.programs`); the caller then calls :func:`release_compiled`.

    The directory is locked while the run lives; SIGINT/SIGTERM stop it at the next step
    with a checkpoint (:class:`Interrupted`). ``force`` starts a finished run over.
    With several processes (see ``parallel.initialize_distributed``) every process calls this
    and gets the same result; only process 0 creates the directory and writes files.
    """
    path = run_directory(config, out_dir)
    check_devices(config.train.walkers)
    on_main(lambda: check_run_directory(path, resume, force))
    continued = resume and not force and bool(main_flag(lambda: has_checkpoint(path)))
    # before the input is copied in: an input that the stored reference refuses leaves
    # the directory as it was
    prepared = prepare_stored(config, path) if continued else prepare(config)
    try:
        on_main(lambda: open_run_directory(path, config, resume, force))
        if not continued:
            on_main(lambda: save_reference(path / io.REFERENCE, prepared.scf, prepared.config))
        with stop_on_signals() as stop:
            start = None
            if initial is not None and not continued:
                start = initial(prepared)
            trained = train(prepared, path, resume, progress, on_step, stop, start)
            result = _after_training(prepared, trained, path, progress, stop, observables)
    finally:
        release(path)
        if not keep_compiled:
            release_compiled()
    return result


def prepare_stored(config: Config, run_dir: str | Path, *, same_ansatz: bool = True) -> Run:
    """The prepared run on the mean-field reference stored in ``run_dir`` (what its
    parameters were trained on), built without an SCF; for a directory written before
    references were stored, a fresh SCF with a warning. ``same_ansatz=False``: ``config``
    may have another ansatz than the run in ``run_dir`` (a warm start from it)."""
    if config.system is None:
        return prepare(config)  # its one-line error
    stored = read_reference(config, Path(run_dir) / io.REFERENCE, same_ansatz=same_ansatz)
    if stored is None:
        _warn_no_reference(run_dir)
        return prepare(config)
    return prepare(config, stored[0])


def stored_reference(run: Run, run_dir: str | Path) -> Run:
    """``run`` (prepared with a fresh SCF) on the mean-field reference stored in
    ``run_dir``, with a warning where that SCF found another solution; ``run`` itself, with
    a warning, for a directory written before references were stored, and for a run
    without a molecule (nothing to store). Without a prepared run at hand,
    :func:`prepare_stored` builds the same without solving an SCF."""
    if run.scf is None:
        return run
    path = Path(run_dir) / io.REFERENCE
    stored = read_reference(run.config, path)
    if stored is None:
        _warn_no_reference(run_dir)
        return run
    scf, aligned = stored
    if not _same_reference(reference_arrays(scf), reference_arrays(run.scf), aligned):
        what = "the aligned reference (scan.train = 'shared')" if aligned else "the reference"
        warn(
            f"a fresh SCF differs from {what} stored in {path}; the stored one, "
            "which the parameters were trained on, is used"
        )
    return prepare(run.config, scf)


def _warn_no_reference(run_dir: str | Path) -> None:
    warn(
        f"{run_dir} holds no {io.REFERENCE}: its mean-field reference is computed anew "
        "and may not be the one its parameters were trained on"
    )


def _same_reference(stored: dict[str, Any], fresh: dict[str, Any], aligned: bool) -> bool:
    """Whether two references are one solution (to 1e-6). ``aligned``: the stored one's
    occupied orbitals were rotated among themselves (:mod:`nnqmc.orbital_alignment`), so
    those of each spin are compared by the projector onto their span, which a rotation
    keeps, and the other orbitals, which the ansatz does not use, not at all."""
    stored, fresh = dict(stored), dict(fresh)
    if aligned and np.shape(stored["occ_up"]) == np.shape(fresh["occ_up"]):
        for spin in ("up", "down"):
            used = np.unique(fresh[f"occ_{spin}"])
            for arrays in (stored, fresh):
                mo = np.asarray(arrays[f"mo_{spin}"])[:, used]
                arrays[f"mo_{spin}"] = mo @ mo.T
    return all(
        np.shape(stored[n]) == np.shape(fresh[n])
        and np.allclose(stored[n], fresh[n], rtol=0.0, atol=1e-6, equal_nan=True)
        for n in fresh
    )


def release_compiled() -> None:
    """Free the compiled programs of finished runs.

    JAX keeps compiled programs cached; on the CPU each holds thousands of memory maps, so
    a process that runs many molecules or settings one after another (a Python loop) would
    reach the kernel's limit (``vm.max_map_count``, 65530) after about fifteen runs of
    their own programs and crash inside LLVM. Geometries of one scan share their programs
    (:mod:`nnqmc.programs`) and release them once, at the end of the scan."""
    jax.clear_caches()
    programs.clear()
    gc.collect()


def _after_training(
    prepared: Run,
    trained: TrainResult,
    path: Path,
    progress: Progress | None,
    stop,
    observables: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
) -> RunResult:
    """Evaluate (and run DMC if the input asks for it) a trained state, each phase going
    on from its checkpoint; write result.json, the logs and the plot."""
    tag = {"train_step": trained.steps}
    evaluated = evaluate(
        prepared,
        trained.params,
        trained.walkers,
        trained.width,
        progress=progress,
        observables=observables,
        out_dir=path,
        tag=tag,
        stop=stop,
    )
    diffused = None
    if wants_dmc(prepared.config):
        diffused = dmc(
            prepared,
            trained.params,
            trained.walkers,
            energy=evaluated.energy,
            progress=progress,
            out_dir=path,
            tag=tag,
            stop=stop,
        )
    result = RunResult(prepared, trained, evaluated, diffused)
    on_main(lambda: _write_results(path, result))
    return result


def _trained(path: Path, prepared: Run) -> TrainResult:
    """The finished training state of a run directory."""
    trained = saved_training(prepared, path)
    if trained is None:
        raise RunError(f"{path} holds no checkpoint to evaluate")
    if trained.steps < prepared.config.train.steps:
        raise RunError(
            f"{path}: training stopped at step {trained.steps} of "
            f"{prepared.config.train.steps}; finish it first with nnqmc run FILE --out DIR "
            "--resume"
        )
    return trained


def _continue(
    path: Path, progress: Progress | None, settings: Callable[[Config], Config] | None = None
) -> RunResult:
    """Evaluation (and DMC) of a trained run directory, with ``settings(config)`` of its
    config.toml where given, which are written into that file first."""
    if not (path / io.CONFIG_COPY).is_file():
        raise RunError(f"{path} holds no run ({io.CONFIG_COPY} is missing)")
    config = load_config(path / io.CONFIG_COPY)
    config = config if settings is None else settings(config)
    check_devices(config.train.walkers)
    on_main(lambda: check_run_directory(path, resume=True))
    prepared = prepare_stored(config, path)
    try:
        on_main(lambda: lock_directory(path))
        trained = _trained(path, prepared)
        if settings is not None:
            on_main(lambda: _rewrite_config(path, config))
        with stop_on_signals() as stop:
            return _after_training(prepared, trained, path, progress, stop)
    finally:
        release(path)
        release_compiled()


def _rewrite_config(path: Path, config: Config) -> None:
    try:
        io.write_text_atomic(path / io.CONFIG_COPY, to_toml(config.data))
    except OSError as err:
        raise RunError(cannot_write(path / io.CONFIG_COPY, err)) from None


def evaluate_run(
    run_dir: str | Path, steps: int | None = None, progress: Progress | None = None
) -> RunResult:
    """Continue (or extend to ``steps``) the evaluation of a trained run directory and
    rewrite its result.json; returns the result."""
    settings = None if steps is None else lambda config: with_settings(config, "eval", steps=steps)
    return _continue(Path(run_dir), progress, settings)


def dmc_run(
    run_dir: str | Path,
    steps: int | None = None,
    timesteps: list[float] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run, continue or extend fixed-node DMC on a trained run directory (``steps`` per
    time step, ``timesteps``: default its ``[dmc]`` settings, else the defaults) and rewrite
    its result.json; returns the result. The directory's config.toml records the DMC
    settings used."""
    changes: dict[str, Any] = {} if steps is None else {"steps": steps}
    if timesteps:
        changes["timestep"] = [float(t) for t in timesteps]

    def settings(config: Config) -> Config:
        return with_settings(config, "dmc", **(changes or {"steps": config.dmc.steps}))

    return _continue(Path(run_dir), progress, settings)
