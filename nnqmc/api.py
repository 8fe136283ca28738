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
    broadcast_from_main,
    device_count,
    device_keys,
    first_replica,
    gather_walkers,
    global_device_count,
    is_main_process,
    process_count,
    replicate,
    scatter_walkers,
)
from .plot import plot_training
from .sampler import init_walkers
from .scf import SCFResult, run_scf
from .train import TrainState, batch_log_psi, make_eval_step, make_sample_step, make_train_step

__version__ = "0.1.0"

Progress = Callable[[str, int, int, dict[str, float]], None]
# Called after every training step with the number of steps done and the parameters.
StepHook = Callable[[int, Any], None]

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
    from .ansatz.paulinet import paulinet

    a = config.ansatz
    return paulinet(
        scf,
        molecule.charges,
        molecule.coords,
        embedding_dim=a.embedding_dim,
        layers=a.layers,
        n_rbf=a.n_rbf,
        cutoff=a.cutoff,
        jastrow_layers=a.jastrow_layers,
        backflow_layers=a.backflow_layers,
        backflow=a.backflow,
        ee_cusp=a.ee_cusp,
        cusp=a.cusp_correction,
        dtype=dtype,
    )


def prepare(config: Config) -> Run:
    """Run Hartree–Fock and build the ansatz and Hamiltonian for a config."""
    molecule = config.system.molecule
    a = config.ansatz
    try:
        scf = run_scf(molecule, config.system.basis, a.cas, a.determinants)
    except ValueError as err:
        raise RunError(f"ansatz.cas: {err}") from None
    hamiltonian = MolecularHamiltonian(
        molecule.charges, molecule.coords, molecule.n_up, molecule.n_down
    )
    return Run(config, molecule, scf, hamiltonian, build_ansatz(config, molecule, scf))


def initial_walkers(run: Run, key: jax.Array, n_walkers: int) -> jax.Array:
    """Walkers placed around the nuclei, consistent with the charge and spin state."""
    mol = run.molecule
    return init_walkers(
        key, mol.coords, mol.charges, mol.charge, mol.n_up, mol.n_down, n_walkers, run.dtype
    )


def check_devices(walkers: int) -> int:
    """The number of local devices; walkers must split evenly over all devices of all hosts."""
    n = global_device_count()
    if walkers % n:
        where = f"{n} devices" if process_count() == 1 else f"{n} devices of all processes"
        raise RunError(f"train.walkers = {walkers} is not divisible by the {where}")
    return device_count()


def _load_checkpoint(
    path: Path, params: Any, opt_state: Any, walker_shape: tuple[int, ...]
) -> dict[str, Any] | None:
    """Process 0 reads the checkpoint, every process gets its contents; None if there is none."""
    saved, error = None, ""
    if is_main_process() and path.exists():
        try:
            saved = io.load_checkpoint(path, params, opt_state)
        except (OSError, KeyError, ValueError) as err:
            error = f"{path}: {err}"
    n_rows = len(saved["history"].get("step", [])) if saved else 0
    header = np.array(
        [
            saved is not None,
            bool(error),
            saved["step"] if saved else 0,
            n_rows,
            saved["walkers"].shape[0] if saved else 0,
        ],
        dtype=np.int64,
    )
    present, failed, step, n_rows, n_walkers = (int(v) for v in broadcast_from_main(header))
    if failed:
        raise RunError(error or f"{path}: process 0 could not read the checkpoint")
    if not present:
        return None
    if n_walkers != walker_shape[0]:
        raise RunError(
            f"{path} holds {n_walkers} walkers; the config asks for "
            f"train.walkers = {walker_shape[0]}"
        )

    def column(name: str, values: Any) -> np.ndarray:
        values = np.asarray(values, np.int64 if name == "step" else np.float64)
        return values if values.shape == (n_rows,) else np.zeros(n_rows, values.dtype)

    if saved is None:  # another process: templates of the right shapes for the broadcast
        saved = {
            "params": params,
            "opt_state": opt_state,
            "walkers": np.zeros(walker_shape),
            "width": 0.0,
            "history": {},
        }
    payload = {
        "params": jax.tree_util.tree_map(np.asarray, saved["params"]),
        "opt_state": jax.tree_util.tree_map(np.asarray, saved["opt_state"]),
        "walkers": np.asarray(saved["walkers"], np.float64),
        "width": np.asarray(saved["width"], np.float64),
        "history": {c: column(c, saved["history"].get(c, [])) for c in io.TRAIN_COLUMNS},
    }
    payload = broadcast_from_main(payload)
    payload["step"] = step
    payload["width"] = float(payload["width"])
    return payload


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
    on_step: StepHook | None = None,
) -> TrainResult:
    """Optimise the ansatz; with ``out_dir``, log and checkpoint there (resumable).

    With several processes every process calls this; only process 0 reads or writes files,
    and a checkpoint holds the walkers of all devices of all processes.
    """
    cfg = run.config
    t_start = time.perf_counter()
    n_devices = check_devices(cfg.train.walkers)
    key = jax.random.PRNGKey(cfg.train.seed)
    dtype = run.dtype
    params = run.ansatz.init(jax.random.fold_in(key, _INIT))
    optimizer = make_optimizer(cfg.train.optimizer, batch_log_psi(run.ansatz), cfg.train)
    opt_state = optimizer.init(params)
    history: dict[str, list[float]] = {c: [] for c in io.TRAIN_COLUMNS}
    checkpoint = Path(out_dir) / io.CHECKPOINT if out_dir is not None else None
    start = 0

    saved = None
    if resume and checkpoint is not None:
        shape = (cfg.train.walkers, run.molecule.n_elec, 3)
        saved = _load_checkpoint(checkpoint, params, opt_state, shape)
    if saved is not None:
        params, opt_state, start = saved["params"], saved["opt_state"], saved["step"]
        walkers = scatter_walkers(jnp.asarray(saved["walkers"], dtype), n_devices)
        width = replicate(jnp.asarray(saved["width"], dtype), n_devices)
        history = {c: list(saved["history"][c]) for c in io.TRAIN_COLUMNS}
    else:
        # every process draws all walkers from the same key and keeps its share
        walkers = initial_walkers(run, jax.random.fold_in(key, _WALKERS), cfg.train.walkers)
        walkers = scatter_walkers(walkers, n_devices)
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
        engine=cfg.train.laplacian,
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
        all_walkers = gather_walkers(state.walkers)  # collective: every process
        if not is_main_process():
            return
        columns = {c: np.asarray(v) for c, v in history.items()}
        io.save_checkpoint(
            checkpoint,
            step=step,
            params=first_replica(state.params),
            opt_state=first_replica(state.opt_state),
            walkers=all_walkers,
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
        if on_step:
            on_step(done, first_replica(state.params))
    if start >= cfg.train.steps:
        save(cfg.train.steps)

    return TrainResult(
        params=first_replica(state.params),
        walkers=gather_walkers(state.walkers),
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
    """Sample with frozen parameters; energy ± standard error from a blocking analysis.

    ``walkers`` are all walkers (of all processes); each process evaluates its share.
    """
    cfg = run.config
    steps = cfg.eval.steps if steps is None else steps
    t_start = time.perf_counter()
    n_devices = check_devices(walkers.shape[0])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), _EVAL)
    walkers_d = scatter_walkers(jnp.asarray(walkers, run.dtype), n_devices)
    width_d = replicate(jnp.asarray(width, run.dtype), n_devices)
    params_d = replicate(params, n_devices)
    step_fn = make_eval_step(
        run.ansatz,
        run.hamiltonian,
        sweeps=cfg.eval.decorrelation,
        engine=cfg.train.laplacian,
        observables=observables,
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
        "devices": global_device_count(),
        "processes": process_count(),
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


def _check_run_directory_on_main(path: Path, resume: bool) -> None:
    """:func:`check_run_directory` on process 0, its verdict shared with every process."""
    error = None
    if is_main_process():
        try:
            check_run_directory(path, resume)
        except RunError as err:
            error = err
    if int(broadcast_from_main(np.array(error is not None, dtype=np.int32))):
        raise error or RunError(f"{path}: process 0 could not start the run")


def run(
    config: Config,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the contents of result.json.

    With several processes (see ``parallel.initialize_distributed``) every process calls this
    and gets the same result; only process 0 creates the directory and writes files.
    """
    path = run_directory(config, out_dir)
    check_devices(config.train.walkers)
    _check_run_directory_on_main(path, resume)
    prepared = prepare(config)
    main = is_main_process()
    if main:
        path.mkdir(parents=True, exist_ok=True)
        if config.source is not None and not resume:
            shutil.copyfile(config.source, path / "input.toml")
        io.write_text_atomic(path / io.CONFIG_COPY, to_toml(config.data))
    trained = train(prepared, path, resume=resume, progress=progress, on_step=on_step)
    evaluated = evaluate(
        prepared, trained.params, trained.walkers, trained.width, progress=progress
    )
    result = summarize(prepared, trained, evaluated)
    if main:
        energies = {"energy": evaluated.energies}
        io.write_table(path / io.EVAL_LOG, energies, {"energy": evaluated.energy})
        io.write_json_atomic(path / io.RESULT, result)
        plot_training(path / "energy.png", trained.history, result)
    return result
