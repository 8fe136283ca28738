"""Public functions that build, train and evaluate a run; the CLI and PES scans call these."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import io
from .ansatz import Ansatz, slater_jastrow
from .config import Config, to_toml
from .estimate import estimate
from .hamiltonian import MolecularHamiltonian
from .molecule import Molecule
from .optimize import make_optimizer
from .parallel import (
    device_count,
    device_keys,
    first_replica,
    join_walkers,
    replicate,
    split_walkers,
)
from .sampler import init_walkers
from .scf import SCFResult, run_hf
from .train import TrainState, batch_log_psi, make_eval_step, make_sample_step, make_train_step

__version__ = "0.1.0"

Progress = Callable[[str, int, int, dict[str, float]], None]

# Keys for the independent random streams of one run, all derived from the seed.
_INIT, _WALKERS, _BURN_IN, _TRAIN, _EVAL = range(5)


class RunError(RuntimeError):
    """A run that cannot start or continue for a reason the user can fix."""


@dataclass
class Run:
    """Everything a run needs, built once from a config: molecule, HF, ansatz, Hamiltonian."""

    config: Config
    molecule: Molecule
    scf: SCFResult
    hamiltonian: MolecularHamiltonian
    ansatz: Ansatz

    @property
    def dtype(self):
        return jnp.float64 if self.config.precision == "float64" else jnp.float32


@dataclass
class TrainResult:
    params: Any
    walkers: np.ndarray
    width: float
    history: dict[str, np.ndarray]
    steps: int
    wall_seconds: float


@dataclass
class EvalResult:
    energy: float
    energy_err: float
    variance: float
    tau: float
    steps: int
    energies: np.ndarray
    wall_seconds: float
    observables: dict[str, Any] = field(default_factory=dict)


def build_ansatz(config: Config, molecule: Molecule, scf: SCFResult) -> Ansatz:
    dtype = jnp.float64 if config.precision == "float64" else jnp.float32
    kind = config.ansatz.kind
    if kind in ("hf", "jastrow"):
        return slater_jastrow(
            scf,
            molecule.charges,
            molecule.coords,
            jastrow=kind == "jastrow",
            cusp=config.ansatz.cusp_correction,
            dtype=dtype,
        )
    raise RunError(f"ansatz.kind = {kind!r} is not available in this version")


def prepare(config: Config) -> Run:
    """Run Hartree–Fock and build the ansatz and Hamiltonian for a config."""
    molecule = config.system.molecule
    scf = run_hf(molecule, config.system.basis)
    hamiltonian = MolecularHamiltonian(
        molecule.charges, molecule.coords, molecule.n_up, molecule.n_down
    )
    return Run(config, molecule, scf, hamiltonian, build_ansatz(config, molecule, scf))


def _check_devices(walkers: int) -> int:
    n = device_count()
    if walkers % n:
        raise RunError(f"train.walkers = {walkers} is not divisible by the {n} local devices")
    return n


def _float_stats(stats: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in first_replica(stats).items()}


def _burn_in(run: Run, params, walkers, width, key, n_devices, progress):
    cfg = run.config.sampler
    n_burn = math.ceil(cfg.burn_in / cfg.decorrelation)
    if n_burn == 0:
        return walkers, width
    step = make_sample_step(
        run.ansatz, sweeps=cfg.decorrelation, target_acceptance=cfg.target_acceptance
    )
    params_r = replicate(params, n_devices)
    for k in range(n_burn):
        walkers, width, acc = step(params_r, walkers, width, device_keys(key, k, n_devices))
        if progress:
            progress("burn-in", k + 1, n_burn, {"acceptance": float(acc[0])})
    return walkers, width


def train(
    run: Run,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Optimise the ansatz; with ``out_dir``, log and checkpoint there (resumable)."""
    cfg = run.config
    t_start = time.perf_counter()
    n_devices = _check_devices(cfg.train.walkers)
    key = jax.random.PRNGKey(cfg.train.seed)
    dtype = run.dtype
    params = run.ansatz.init(jax.random.fold_in(key, _INIT))
    optimizer = make_optimizer(cfg.train.optimizer, batch_log_psi(run.ansatz), cfg.train)
    opt_state = optimizer.init(params)
    history: dict[str, list[float]] = {c: [] for c in io.TRAIN_COLUMNS}
    checkpoint = Path(out_dir) / io.CHECKPOINT if out_dir is not None else None
    start = 0

    if resume and checkpoint is not None and checkpoint.exists():
        saved = io.load_checkpoint(checkpoint, params, opt_state)
        params, opt_state, start = saved["params"], saved["opt_state"], saved["step"]
        walkers = split_walkers(jnp.asarray(saved["walkers"], dtype), n_devices)
        width = replicate(jnp.asarray(saved["width"], dtype), n_devices)
        history = {c: list(saved["history"].get(c, [])) for c in io.TRAIN_COLUMNS}
        if walkers.shape[0] * walkers.shape[1] != cfg.train.walkers:
            raise RunError("the checkpoint holds a different number of walkers than the config")
    else:
        mol = run.molecule
        walkers = init_walkers(
            jax.random.fold_in(key, _WALKERS),
            mol.coords,
            mol.charges,
            mol.charge,
            mol.n_up,
            mol.n_down,
            cfg.train.walkers,
            dtype,
        )
        walkers = split_walkers(walkers, n_devices)
        width = replicate(jnp.asarray(cfg.sampler.initial_width, dtype), n_devices)
        walkers, width = _burn_in(
            run, params, walkers, width, jax.random.fold_in(key, _BURN_IN), n_devices, progress
        )

    step_fn = make_train_step(
        run.ansatz,
        run.hamiltonian,
        optimizer,
        sweeps=cfg.sampler.decorrelation,
        clip_width=cfg.train.clip_width,
        target_acceptance=cfg.sampler.target_acceptance,
    )
    state = TrainState(
        replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width
    )
    train_key = jax.random.fold_in(key, _TRAIN)
    wall_offset = history["wall_time"][-1] if history["wall_time"] else 0.0
    t_loop = time.perf_counter()

    def save(step: int) -> None:
        if checkpoint is None:
            return
        columns = {c: np.asarray(v) for c, v in history.items()}
        io.save_checkpoint(
            checkpoint,
            step=step,
            params=first_replica(state.params),
            opt_state=first_replica(state.opt_state),
            walkers=join_walkers(state.walkers),
            width=float(state.width[0]),
            key=np.asarray(key),
            history=columns,
        )
        io.write_table(Path(out_dir) / io.TRAIN_LOG, columns)

    for step in range(start, cfg.train.steps):
        state, stats = step_fn(state, device_keys(train_key, step, n_devices))
        row = _float_stats(stats)
        row["step"] = step
        row["wall_time"] = wall_offset + time.perf_counter() - t_loop
        for c in io.TRAIN_COLUMNS:
            history[c].append(row[c])
        done = step + 1
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            save(done)
        if progress:
            progress("train", done, cfg.train.steps, row)
    if start >= cfg.train.steps:
        save(cfg.train.steps)

    return TrainResult(
        params=first_replica(state.params),
        walkers=join_walkers(state.walkers),
        width=float(state.width[0]),
        history={c: np.asarray(v) for c, v in history.items()},
        steps=cfg.train.steps,
        wall_seconds=time.perf_counter() - t_start,
    )


def evaluate(
    run: Run,
    params: Any,
    walkers: np.ndarray,
    width: float,
    steps: int | None = None,
    progress: Progress | None = None,
    observables: dict[str, Callable[[jax.Array], jax.Array]] | None = None,
) -> EvalResult:
    """Sample with frozen parameters; energy ± standard error from a blocking analysis."""
    cfg = run.config
    steps = cfg.eval.steps if steps is None else steps
    t_start = time.perf_counter()
    n_devices = _check_devices(walkers.shape[0])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), _EVAL)
    walkers_d = split_walkers(jnp.asarray(walkers, run.dtype), n_devices)
    width_d = replicate(jnp.asarray(width, run.dtype), n_devices)
    params_d = replicate(params, n_devices)
    step_fn = make_eval_step(
        run.ansatz, run.hamiltonian, sweeps=cfg.eval.decorrelation, observables=observables
    )
    records: dict[str, list] = {}
    for k in range(steps):
        walkers_d, stats = step_fn(params_d, walkers_d, width_d, device_keys(key, k, n_devices))
        stats = first_replica(stats)
        for name, value in stats.items():
            records.setdefault(name, []).append(np.asarray(value))
        if progress:
            progress("eval", k + 1, steps, {n: float(np.mean(v)) for n, v in stats.items()})
    energies = np.asarray(records["energy"], dtype=np.float64)
    est = estimate(energies)
    variance = float(np.mean(records["energy_sq"]) - np.mean(energies) ** 2)
    extra = {}
    for name in observables or {}:
        series = np.asarray(records[name], dtype=np.float64).reshape(steps, -1)
        parts = [estimate(series[:, i]) for i in range(series.shape[1])]
        extra[name] = {"value": [p.mean for p in parts], "error": [p.error for p in parts]}
    return EvalResult(
        energy=est.mean,
        energy_err=est.error,
        variance=variance,
        tau=est.tau,
        steps=steps,
        energies=energies,
        wall_seconds=time.perf_counter() - t_start,
        observables=extra,
    )


def correlation_fraction(energy: float, hf_energy: float, exact: float | None) -> float | None:
    """(E_HF - E) / (E_HF - E_exact)."""
    if exact is None or hf_energy == exact:
        return None
    return (hf_energy - energy) / (hf_energy - exact)


def summarize(run: Run, trained: TrainResult, evaluated: EvalResult) -> dict[str, Any]:
    cfg = run.config
    ref = cfg.reference_energy
    return {
        "name": cfg.name,
        "energy": evaluated.energy,
        "energy_err": evaluated.energy_err,
        "variance": evaluated.variance,
        "autocorrelation_time": evaluated.tau,
        "hf_energy": run.scf.energy,
        "hf_method": run.scf.method,
        "basis": cfg.system.basis,
        "reference_energy": ref,
        "error_vs_reference": None if ref is None else evaluated.energy - ref,
        "correlation_fraction": correlation_fraction(evaluated.energy, run.scf.energy, ref),
        "ansatz": cfg.ansatz.kind,
        "optimizer": cfg.train.optimizer,
        "steps": trained.steps,
        "eval_steps": evaluated.steps,
        "walkers": cfg.train.walkers,
        "devices": device_count(),
        "precision": cfg.precision,
        "train_seconds": trained.wall_seconds,
        "eval_seconds": evaluated.wall_seconds,
        "wall_seconds": trained.wall_seconds + evaluated.wall_seconds,
        "observables": evaluated.observables,
        "version": __version__,
    }


def run_directory(config: Config, out_dir: str | Path | None) -> Path:
    return Path(out_dir) if out_dir is not None else Path("runs") / config.name


def check_run_directory(path: Path, resume: bool) -> None:
    """Refuse to start a fresh run over existing results, or to resume with nothing there."""
    has_results = (path / io.CHECKPOINT).exists() or (path / io.RESULT).exists()
    if has_results and not resume:
        raise RunError(f"{path} already holds a run; use --resume to continue it or --out DIR")
    if resume and not (path / io.CHECKPOINT).exists():
        raise RunError(f"{path} holds no checkpoint to resume from")


def run(
    config: Config,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the contents of result.json."""
    path = run_directory(config, out_dir)
    check_run_directory(path, resume)
    prepared = prepare(config)
    path.mkdir(parents=True, exist_ok=True)
    if config.source is not None and not resume:
        shutil.copyfile(config.source, path / "input.toml")
    io.write_text_atomic(path / io.CONFIG_COPY, to_toml(config.data))
    trained = train(prepared, path, resume=resume, progress=progress)
    evaluated = evaluate(
        prepared, trained.params, trained.walkers, trained.width, progress=progress
    )
    io.write_table(path / io.EVAL_LOG, {"energy": evaluated.energies}, {"energy": evaluated.energy})
    result = summarize(prepared, trained, evaluated)
    io.write_json_atomic(path / io.RESULT, result)
    return result
