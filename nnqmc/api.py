"""Public functions that build, train and evaluate a run; the CLI and PES scans call these."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import io
from .ansatz import Ansatz, slater_jastrow
from .config import Config, load_config, to_toml
from .estimate import estimate
from .hamiltonian import Hamiltonian, MolecularHamiltonian
from .molecule import Molecule
from .optimize import Optimizer, make_optimizer
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
from .sampler import StepScale, init_walkers, nucleus_step_scale
from .scf import SCFResult, run_scf
from .threads import single_threaded_blas
from .train import (
    TrainState,
    WaveObservable,
    batch_log_psi,
    make_eval_step,
    make_sample_step,
    make_train_step,
)

__version__ = "0.1.0"

Progress = Callable[[str, int, int, dict[str, float]], None]
# Called after every training step with the number of steps done and the parameters.
StepHook = Callable[[int, Any], None]
# Called between steps: 0 to go on, or the number of the signal that asks the run to stop.
StopCheck = Callable[[], int]

# Keys for the independent random streams of one run, all derived from the seed.
_INIT, _WALKERS, _BURN_IN, _TRAIN, _EVAL = range(5)


class RunError(RuntimeError):
    """A run that cannot start or continue for a reason the user can fix."""


class Interrupted(RuntimeError):
    """A run stopped by SIGINT or SIGTERM between two steps, after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class Run:
    """Everything a run needs, built once from a config: molecule, HF, ansatz, Hamiltonian."""

    config: Config
    molecule: Molecule | None  # None: a Python-API run without a molecule (custom_run)
    scf: SCFResult | None
    hamiltonian: Hamiltonian
    ansatz: Ansatz
    # (key, n_walkers) -> initial walkers; None: around the molecule's nuclei
    walker_init: Callable[[jax.Array, int], jax.Array] | None = None
    # precision = "mixed": the same ansatz built in float32, which the optimizer differentiates
    gradient_ansatz: Ansatz | None = None

    def __post_init__(self) -> None:
        if self.config.precision == "mixed" and self.gradient_ansatz is None:
            raise RunError(
                'precision = "mixed" needs the ansatz built in float32 as well (gradient_ansatz)'
            )

    @property
    def dtype(self):
        """Parameters, walkers and local energies: float32 only for precision = "float32"."""
        return precision_dtype(self.config.precision)

    @property
    def gradient_dtype(self):
        """The optimizer's per-walker gradients: float32 for "mixed", else :attr:`dtype`."""
        return jnp.float32 if self.config.precision == "mixed" else self.dtype

    def gradient_log_psi(self) -> Callable[[Any, jax.Array], jax.Array]:
        """The batched log|psi| the optimizer differentiates, in :attr:`gradient_dtype`."""
        return batch_log_psi(self.gradient_ansatz or self.ansatz)

    def step_scale(self) -> StepScale | None:
        """The Metropolis step scale per electron of ``sampler.proposal`` (None: uniform;
        also for runs without nuclei)."""
        if self.config.sampler.proposal == "uniform" or self.molecule is None:
            return None
        return nucleus_step_scale(self.molecule.coords)

    def optimizer(self) -> Optimizer:
        """The config's optimizer; with precision = "mixed" it differentiates the float32
        copy of the ansatz (per-walker gradients and SPRING's Gram product in float32)."""
        cfg = self.config
        dtype = self.gradient_dtype if self.gradient_ansatz is not None else None
        return make_optimizer(cfg.train.optimizer, self.gradient_log_psi(), cfg.train, dtype)


def precision_dtype(precision: str) -> Any:
    """The dtype of parameters, walkers and local energies for a ``precision`` setting."""
    return jnp.float32 if precision == "float32" else jnp.float64


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
    records: dict[str, np.ndarray] = field(default_factory=dict)


def build_ansatz(config: Config, molecule: Molecule, scf: SCFResult, dtype: Any = None) -> Ansatz:
    """The config's ansatz in ``dtype`` (default: that of ``config.precision``)."""
    dtype = precision_dtype(config.precision) if dtype is None else dtype
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
    a = config.ansatz
    if kind == "generalized":
        from .ansatz.generalized import generalized_from_options
        from .ansatz.slater import slater_part

        slater = slater_part(scf, molecule.charges, cusp=a.cusp_correction, dtype=dtype)
        return generalized_from_options(slater, molecule.coords, molecule.charges, a, dtype)
    from .ansatz.paulinet import paulinet

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
    from .external import external_terms, scf_external

    if config.system is None:
        raise RunError("prepare() needs a [system]; without a molecule use nnqmc.custom_run")
    molecule = config.system.molecule
    a = config.ansatz
    external = external_terms(config.hamiltonian)  # in the SCF as well as in H
    ext = scf_external(external, molecule.charges, molecule.coords)
    try:
        scf = run_scf(molecule, config.system.basis, a.cas, a.determinants, **ext)
    except ValueError as err:
        raise RunError(f"ansatz.cas: {err}") from None
    hamiltonian = MolecularHamiltonian(
        molecule.charges, molecule.coords, molecule.n_up, molecule.n_down, external
    )
    ansatz = build_ansatz(config, molecule, scf)
    gradient_ansatz = None
    if config.precision == "mixed":
        gradient_ansatz = build_ansatz(config, molecule, scf, jnp.float32)
    return Run(config, molecule, scf, hamiltonian, ansatz, gradient_ansatz=gradient_ansatz)


def initial_walkers(run: Run, key: jax.Array, n_walkers: int) -> jax.Array:
    """Walkers placed around the nuclei, consistent with the charge and spin state."""
    if run.walker_init is not None:
        return jnp.asarray(run.walker_init(key, n_walkers), run.dtype)
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


# --------------------------------------------------------------------------- helpers
def _warn(message: str) -> None:
    """A one-line warning on stderr, from process 0 only."""
    if is_main_process():
        print(f"nnqmc: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on process 0 only; a RunError there is raised on every process (a collective
    with several processes). Returns fn's value on process 0, None elsewhere."""
    value, error = None, None
    if is_main_process():
        try:
            value = fn()
        except RunError as err:
            error = err
    failed = error is not None
    if process_count() > 1:
        failed = bool(int(broadcast_from_main(np.array(failed, dtype=np.int32))))
    if failed:
        raise error or RunError("process 0 stopped the run (see its output)")
    return value


def _cannot_write(path: Path, err: OSError) -> str:
    return f"cannot write {err.filename or path}: {err.strerror or err}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _any_process(signum: int) -> int:
    """The first nonzero signal number over all processes (a collective), else 0."""
    if process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.array([signum], np.int32)))
    nonzero = every[every > 0]
    return int(nonzero[0]) if nonzero.size else 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopCheck]:
    """While inside, SIGINT and SIGTERM only ask the run to stop at the next step boundary.

    Yields the check to call between steps; a second signal acts as usual (the handlers are
    restored after the first). Outside the main thread nothing is installed.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: _any_process(0)
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signum, previous[signum] or signal.SIG_DFL)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield lambda: _any_process(received[0] if received else 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h or signal.SIG_DFL)


def _never_stop() -> int:
    return 0


# --------------------------------------------------------------------------- checkpoints
def _load_checkpoint(
    run_dir: Path, params: Any, opt_state: Any, walker_shape: tuple[int, ...]
) -> dict[str, Any] | None:
    """Process 0 reads the newest valid checkpoint (falling back to the previous one), every
    process gets its contents; None if there is none."""
    saved, error = None, ""
    if is_main_process():
        try:
            saved, warnings = io.read_newest(
                run_dir / io.CHECKPOINT,
                run_dir / io.PREVIOUS_CHECKPOINT,
                lambda p: io.load_checkpoint(p, params, opt_state),
            )
            for message in warnings:
                _warn(message)
        except (OSError, io.CheckpointError) as err:
            error = f"no usable checkpoint: {err}"
    n_rows = len(saved["history"].get("step", [])) if saved else 0
    header = np.array(
        [
            saved is not None,
            bool(error),
            saved["step"] if saved else 0,
            n_rows,
            saved["walkers"].shape[0] if saved else 0,
            saved["bad_in_row"] if saved else 0,
        ],
        dtype=np.int64,
    )
    present, failed, step, n_rows, n_walkers, bad_in_row = (
        int(v) for v in broadcast_from_main(header)
    )
    if failed:
        raise RunError(error or f"{run_dir}: process 0 could not read the checkpoint")
    if not present:
        return None
    if n_walkers != walker_shape[0]:
        raise RunError(
            f"{run_dir / io.CHECKPOINT} holds {n_walkers} walkers; the config asks for "
            f"train.walkers = {walker_shape[0]}"
        )

    def column(name: str, values: Any) -> np.ndarray:
        values = np.asarray(values, np.int64 if name == "step" else np.float64)
        if name == "lr_scale" and values.shape != (n_rows,):
            return np.ones(n_rows)  # a checkpoint from before the column existed
        return values if values.shape == (n_rows,) else np.zeros(n_rows, values.dtype)

    if saved is None:  # another process: templates of the right shapes for the broadcast
        saved = {
            "params": params,
            "opt_state": opt_state,
            "walkers": np.zeros(walker_shape),
            "width": 0.0,
            "lr_scale": 1.0,
            "history": {},
        }
    payload = {
        "params": jax.tree_util.tree_map(np.asarray, saved["params"]),
        "opt_state": jax.tree_util.tree_map(np.asarray, saved["opt_state"]),
        "walkers": np.asarray(saved["walkers"], np.float64),
        "width": np.asarray(saved["width"], np.float64),
        "lr_scale": np.asarray(saved["lr_scale"], np.float64),
        "history": {c: column(c, saved["history"].get(c, [])) for c in io.TRAIN_COLUMNS},
    }
    payload = broadcast_from_main(payload)
    payload["step"] = step
    payload["bad_in_row"] = bad_in_row
    payload["width"] = float(payload["width"])
    payload["lr_scale"] = float(payload["lr_scale"])
    return payload


def _train_log_attrs(history: dict[str, Any]) -> dict[str, Any]:
    return {"rejected_steps": int(np.sum(np.asarray(history["finite"]) == 0))}


def _write_checkpoint(run_dir: Path, step: int, last: int | None, **state: Any) -> None:
    """checkpoint.h5 (the previous one kept) and train.h5; RunError if they cannot be written."""
    path = run_dir / io.CHECKPOINT
    columns = state["history"]
    try:
        io.save_checkpoint(path, step=step, previous=run_dir / io.PREVIOUS_CHECKPOINT, **state)
        io.write_table(run_dir / io.TRAIN_LOG, columns, _train_log_attrs(columns))
    except OSError as err:
        kept = "no earlier checkpoint" if last is None else f"{path.name} still holds step {last}"
        raise RunError(f"{_cannot_write(path, err)} at step {step}; {kept}") from None
    except ValueError as err:
        raise RunError(str(err)) from None


def _float_stats(stats: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in first_replica(stats).items()}


def _burn_in(run: Run, params, walkers, width, key, n_devices, progress):
    cfg = run.config.sampler
    n_burn = math.ceil(cfg.burn_in / cfg.decorrelation)
    if n_burn == 0:
        return walkers, width
    step = make_sample_step(
        run.ansatz,
        sweeps=cfg.decorrelation,
        target_acceptance=cfg.target_acceptance,
        step_scale=run.step_scale(),
    )
    params_r = replicate(params, n_devices)
    for k in range(n_burn):
        walkers, width, acc = step(params_r, walkers, width, device_keys(key, k, n_devices))
        if progress:
            progress("burn-in", k + 1, n_burn, {"acceptance": float(acc[0])})
    return walkers, width


def _initial_parameters(run: Run) -> tuple[jax.Array, Any, Any, Any]:
    """(seed key, parameters, optimizer, optimizer state) of a fresh run."""
    cfg = run.config
    key = jax.random.PRNGKey(cfg.train.seed)
    params = run.ansatz.init(jax.random.fold_in(key, _INIT))
    optimizer = run.optimizer()
    return key, params, optimizer, optimizer.init(params)


def _check_initial(
    run: Run, template: Any, params: Any, walkers: np.ndarray
) -> tuple[Any, jax.Array]:
    """Warm-start parameters and walkers cast to the run's dtype; RunError if their shapes
    do not fit the ansatz and ``train.walkers``."""
    shape = (run.config.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
    if np.shape(walkers) != shape:
        raise RunError(f"warm start: walkers of shape {np.shape(walkers)}, expected {shape}")
    same_tree = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template)
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(params)]
    if not same_tree or shapes != [np.shape(x) for x in jax.tree_util.tree_leaves(template)]:
        raise RunError("warm start: the parameters do not fit this ansatz")
    cast = lambda x, t: jnp.asarray(x, jnp.asarray(t).dtype)
    params = jax.tree_util.tree_map(cast, params, template)
    return params, jnp.asarray(walkers, run.dtype)


def trained_state(run: Run, run_dir: str | Path) -> tuple[Any, np.ndarray]:
    """(parameters, walkers) of the newest checkpoint in ``run_dir``, read with ``run``'s
    ansatz as the template (another geometry of the same molecule fits); RunError if none."""
    _, params, _, opt_state = _initial_parameters(run)
    path = Path(run_dir)
    shape = (run.config.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
    saved = _load_checkpoint(path, params, opt_state, shape)
    if saved is None:
        raise RunError(f"{path} holds no checkpoint")
    return saved["params"], np.asarray(saved["walkers"])


# --------------------------------------------------------------------------- training
@single_threaded_blas
def train(
    run: Run,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    stop: StopCheck | None = None,
    initial: tuple[Any, np.ndarray] | None = None,
) -> TrainResult:
    """Optimise the ansatz; with ``out_dir``, log and checkpoint there (resumable).

    ``initial = (params, walkers)`` starts a fresh run (not one resumed from a checkpoint)
    from these parameters (the same pytree shapes as ``run.ansatz.init``'s) and walkers
    (all walkers), which are then burnt in: a warm start, e.g. from a neighbouring geometry.

    Checkpoints are written before the first step, every ``train.checkpoint_every`` steps,
    at the end, and when ``stop()`` asks to stop (then :class:`Interrupted` is raised). A
    rejected (non-finite) step halves the learning-rate scale; ``train.max_bad_steps`` of them
    in a row end the run with a RunError, the last good state checkpointed.

    With several processes every process calls this; only process 0 reads or writes files,
    and a checkpoint holds the walkers of all devices of all processes.
    """
    cfg = run.config
    t_start = time.perf_counter()
    stop = stop or _never_stop
    n_devices = check_devices(cfg.train.walkers)
    key, params, optimizer, opt_state = _initial_parameters(run)
    dtype = run.dtype
    history: dict[str, list[float]] = {c: [] for c in io.TRAIN_COLUMNS}
    run_dir = Path(out_dir) if out_dir is not None else None
    checkpoint = run_dir / io.CHECKPOINT if run_dir is not None else None
    start, lr_scale, bad_in_row = 0, 1.0, 0

    saved = None
    if resume and run_dir is not None:
        shape = (cfg.train.walkers, run.ansatz.n_up + run.ansatz.n_down, 3)
        saved = _load_checkpoint(run_dir, params, opt_state, shape)
    if saved is not None:
        params, opt_state, start = saved["params"], saved["opt_state"], saved["step"]
        lr_scale, bad_in_row = saved["lr_scale"], saved["bad_in_row"]
        walkers = scatter_walkers(jnp.asarray(saved["walkers"], dtype), n_devices)
        width = replicate(jnp.asarray(saved["width"], dtype), n_devices)
        history = {c: list(saved["history"][c]) for c in io.TRAIN_COLUMNS}
    else:
        if initial is not None:
            params, start_walkers = _check_initial(run, params, *initial)
            opt_state = optimizer.init(params)
        else:  # every process draws all walkers from the same key and keeps its share
            start_walkers = initial_walkers(
                run, jax.random.fold_in(key, _WALKERS), cfg.train.walkers
            )
        walkers = scatter_walkers(start_walkers, n_devices)
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
        chunk=cfg.train.local_energy_chunk,
        step_scale=run.step_scale(),
    )
    state = TrainState(
        replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width
    )
    train_key = jax.random.fold_in(key, _TRAIN)
    wall_offset = history["wall_time"][-1] if history["wall_time"] else 0.0
    t_loop = time.perf_counter()
    last_saved = start if saved is not None else None

    def save(step: int) -> None:
        nonlocal last_saved
        if run_dir is None:
            return
        all_walkers = gather_walkers(state.walkers)  # collective: every process
        _on_main(
            lambda: _write_checkpoint(
                run_dir,
                step,
                last_saved,
                params=first_replica(state.params),
                opt_state=first_replica(state.opt_state),
                walkers=all_walkers,
                width=float(state.width[0]),
                key=np.asarray(key),
                history={c: np.asarray(v) for c, v in history.items()},
                lr_scale=lr_scale,
                bad_in_row=bad_in_row,
            )
        )
        last_saved = step

    if saved is None:
        save(0)  # so that --resume works from any moment on
    for step in range(start, cfg.train.steps):
        signum = stop()
        if signum:
            save(step)
            where = f"; checkpoint: {checkpoint}" if checkpoint else ""
            raise Interrupted(
                signum,
                f"stopped by {_signal_name(signum)} after step {step} of {cfg.train.steps}{where}",
            )
        state, stats = step_fn(state, device_keys(train_key, step, n_devices), lr_scale)
        row = _float_stats(stats)
        row["step"] = step
        row["lr_scale"] = lr_scale
        row["wall_time"] = wall_offset + time.perf_counter() - t_loop
        for c in io.TRAIN_COLUMNS:
            history[c].append(row[c])
        done = step + 1
        if row["finite"] > 0:
            bad_in_row = 0
        else:
            bad_in_row += 1
            lr_scale *= 0.5
            _warn(
                f"step {done}: non-finite local energies, gradient or update; step rejected, "
                f"learning rate scaled to {lr_scale:g}"
            )
        if bad_in_row >= cfg.train.max_bad_steps:
            save(done)
            where = (
                f"the last good state is in {checkpoint} (continue with --resume after "
                "lowering train.learning_rate)"
                if checkpoint
                else "parameters left at the last good step"
            )
            raise RunError(
                f"training stopped at step {done}: {bad_in_row} non-finite steps in a row "
                f"(train.max_bad_steps = {cfg.train.max_bad_steps}); {where}"
            )
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            save(done)
        if progress:
            progress("train", done, cfg.train.steps, row)
        if on_step:
            on_step(done, first_replica(state.params))

    return TrainResult(
        params=first_replica(state.params),
        walkers=gather_walkers(state.walkers),
        width=float(state.width[0]),
        history={c: np.asarray(v) for c, v in history.items()},
        steps=max(start, cfg.train.steps),
        wall_seconds=time.perf_counter() - t_start,
    )


# --------------------------------------------------------------------------- evaluation
def _load_eval_checkpoint(
    run_dir: Path,
    tag: dict[str, Any],
    walker_shape: tuple[int, ...],
    record_shapes: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """Process 0 reads the evaluation checkpoint that belongs to ``tag``; every process gets
    its walkers and records. None if there is none (or it belongs to another state)."""
    saved = None
    if is_main_process():
        try:
            saved, warnings = io.read_newest(
                run_dir / io.EVAL_CHECKPOINT,
                run_dir / io.PREVIOUS_EVAL_CHECKPOINT,
                io.load_eval_checkpoint,
            )
            for message in warnings:
                _warn(message)
        except (OSError, io.CheckpointError) as err:
            _warn(f"{err}; evaluating from the first step")
        if saved is not None:
            same = saved["tag"] == tag  # plain values: see io.load_eval_checkpoint
            if not same or saved["walkers"].shape != walker_shape:
                saved = None  # another trained state or other settings: start over
    step = int(broadcast_from_main(np.array(saved["step"] if saved else -1, np.int64)))
    if step < 0:
        return None
    if saved is None:
        records = {n: np.zeros((step, *s.shape), s.dtype) for n, s in record_shapes().items()}
        saved = {"walkers": np.zeros(walker_shape), "records": records}
    payload = {"walkers": np.asarray(saved["walkers"], np.float64), "records": saved["records"]}
    payload = broadcast_from_main(payload)
    payload["step"] = step
    return payload


def _write_eval_checkpoint(
    run_dir: Path, step: int, tag: dict[str, Any], walkers: np.ndarray, records: dict
) -> None:
    path = run_dir / io.EVAL_CHECKPOINT
    try:
        io.save_eval_checkpoint(
            path,
            step=step,
            tag=tag,
            walkers=walkers,
            records={n: np.asarray(v) for n, v in records.items()},
            previous=run_dir / io.PREVIOUS_EVAL_CHECKPOINT,
        )
    except OSError as err:
        raise RunError(f"{_cannot_write(path, err)} at evaluation step {step}") from None


def _open_eval_log(run_dir: Path, records: dict[str, list]) -> io.AppendLog:
    try:
        return io.AppendLog(run_dir / io.EVAL_LOG, {n: np.asarray(v) for n, v in records.items()})
    except OSError as err:
        raise RunError(_cannot_write(run_dir / io.EVAL_LOG, err)) from None


def eval_step(run: Run, observables: dict[str, Any] | None = None) -> Callable[..., Any]:
    """The run's pmapped evaluation step (:func:`nnqmc.train.make_eval_step` with the
    config's sweeps, Laplacian engine and chunk)."""
    cfg = run.config
    return make_eval_step(
        run.ansatz,
        run.hamiltonian,
        sweeps=cfg.eval.decorrelation,
        engine=cfg.train.laplacian,
        chunk=cfg.train.local_energy_chunk,
        observables=observables,
        step_scale=run.step_scale(),
    )


@single_threaded_blas
def evaluate(
    run: Run,
    params: Any,
    walkers: np.ndarray,
    width: float,
    steps: int | None = None,
    progress: Progress | None = None,
    observables: dict[str, Callable[[jax.Array], jax.Array] | WaveObservable] | None = None,
    out_dir: str | Path | None = None,
    tag: dict[str, Any] | None = None,
    stop: StopCheck | None = None,
) -> EvalResult:
    """Sample with frozen parameters; energy ± standard error from a blocking analysis.

    ``walkers`` are all walkers (of all processes); each process evaluates its share. With
    ``out_dir``, every step's averages are appended to eval.h5 (flushed) and the walkers are
    checkpointed every ``train.checkpoint_every`` steps, so an evaluation of the same state
    (``tag``: e.g. the training step) continues where an earlier one stopped.
    """
    cfg = run.config
    steps = cfg.eval.steps if steps is None else steps
    stop = stop or _never_stop
    from .custom import default_observables  # the dipole moment, unless eval.dipole = false

    observables = {**default_observables(run), **(observables or {})}
    t_start = time.perf_counter()
    n_devices = check_devices(walkers.shape[0])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), _EVAL)
    walkers_d = scatter_walkers(jnp.asarray(walkers, run.dtype), n_devices)
    width_d = replicate(jnp.asarray(width, run.dtype), n_devices)
    params_d = replicate(params, n_devices)
    step_fn = eval_step(run, observables)
    run_dir = Path(out_dir) if out_dir is not None else None
    tag = {
        **(tag or {}),
        "seed": cfg.train.seed,
        "decorrelation": cfg.eval.decorrelation,
        "precision": cfg.precision,
        "observables": ",".join(sorted(observables or {})),
    }
    records: dict[str, list] = {}
    start = 0

    def record_shapes() -> dict[str, Any]:
        keys = device_keys(key, 0, n_devices)
        _, stats = jax.eval_shape(step_fn, params_d, walkers_d, width_d, keys)
        return {n: jax.ShapeDtypeStruct(s.shape[1:], s.dtype) for n, s in stats.items()}

    if run_dir is not None:
        saved = _load_eval_checkpoint(run_dir, tag, walkers.shape, record_shapes)
        if saved is not None:
            start = saved["step"]
            walkers_d = scatter_walkers(jnp.asarray(saved["walkers"], run.dtype), n_devices)
            records = {n: list(v) for n, v in saved["records"].items()}

    def save(k: int) -> None:
        if run_dir is None:
            return
        all_walkers = gather_walkers(walkers_d)  # collective: every process
        _on_main(lambda: _write_eval_checkpoint(run_dir, k, tag, all_walkers, records))

    log = _on_main(lambda: _open_eval_log(run_dir, records)) if run_dir is not None else None
    try:
        for k in range(start, steps):
            signum = stop()
            if signum:
                save(k)
                where = f"; checkpoint: {run_dir / io.EVAL_CHECKPOINT}" if run_dir else ""
                raise Interrupted(
                    signum,
                    f"stopped by {_signal_name(signum)} after evaluation step {k} of "
                    f"{steps}{where}",
                )
            walkers_d, stats = step_fn(params_d, walkers_d, width_d, device_keys(key, k, n_devices))
            stats = first_replica(stats)
            for name, value in stats.items():
                records.setdefault(name, []).append(np.asarray(value))
            if log is not None:
                try:
                    log.append(stats)
                except OSError as err:
                    _warn(f"{_cannot_write(run_dir / io.EVAL_LOG, err)}; no longer appending")
                    log.close()
                    log = None
            done = k + 1
            if done % cfg.train.checkpoint_every == 0 or done == steps:
                save(done)
            if progress:
                progress("eval", done, steps, {n: float(np.mean(v)) for n, v in stats.items()})
    finally:
        if log is not None:
            log.close()
    records = {n: np.asarray(v[:steps]) for n, v in records.items()}
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
        records=records,
    )


def correlation_fraction(energy: float, hf_energy: float, exact: float | None) -> float | None:
    """(E_HF - E) / (E_HF - E_exact)."""
    if exact is None or hf_energy == exact:
        return None
    return (hf_energy - energy) / (hf_energy - exact)


def summarize(run: Run, trained: TrainResult, evaluated: EvalResult) -> dict[str, Any]:
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
        "reference_energy": ref,
        "error_vs_reference": None if ref is None else evaluated.energy - ref,
        "correlation_fraction": correlation_fraction(evaluated.energy, run.scf.energy, ref),
        "ansatz": cfg.ansatz.kind,
        "optimizer": cfg.train.optimizer,
        "steps": trained.steps,
        "rejected_steps": int(np.sum(finite == 0)),
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


# --------------------------------------------------------------------------- run directory
def run_directory(config: Config, out_dir: str | Path | None) -> Path:
    return Path(out_dir) if out_dir is not None else Path("runs") / config.name


def _has_checkpoint(path: Path) -> bool:
    return any((path / n).exists() for n in (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT))


def check_run_directory(path: Path, resume: bool, force: bool = False) -> None:
    """Refuse a directory in use by a live process, and a fresh start over existing results
    (unless ``force``). ``resume`` with no checkpoint yet starts from the beginning."""
    owner = io.live_lock_owner(path)
    if owner is not None and owner != (os.getpid(), socket.gethostname()):
        raise RunError(io.locked_message(path, owner))
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a directory")
    finished = (path / io.RESULT).exists()
    if (finished or _has_checkpoint(path)) and not (resume or force):
        raise RunError(
            f"{path} already holds a run; use --resume to continue it, --force to start it "
            "over, or --out DIR"
        )
    if resume and finished and not _has_checkpoint(path) and not force:
        raise RunError(f"{path} holds a result but no checkpoint; use --force to start over")


def _lock_directory(path: Path) -> None:
    """Create ``path`` if needed and take its lock; RunError if in use or unwritable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        for message in io.acquire_lock(path):
            _warn(message)
    except io.LockedError as err:
        raise RunError(str(err)) from None
    except OSError as err:
        raise RunError(_cannot_write(path, err)) from None


def _open_run_directory(path: Path, config: Config, resume: bool, force: bool) -> None:
    """Create and lock the run directory (process 0), clear it for --force, copy the input."""
    _lock_directory(path)
    check_run_directory(path, resume, force)  # again: another process may have finished
    if resume and not force and not _has_checkpoint(path):
        _warn(f"{path} holds no checkpoint yet; starting from the first step")
    try:
        if force:
            for name in io.RUN_FILES:
                (path / name).unlink(missing_ok=True)
        if config.source is not None and not (path / io.INPUT_COPY).exists():
            shutil.copyfile(config.source, path / io.INPUT_COPY)
        io.write_text_atomic(path / io.CONFIG_COPY, to_toml(config.data))
    except OSError as err:
        raise RunError(_cannot_write(path, err)) from None


def _write_results(path: Path, evaluated: EvalResult, result: dict, history: dict) -> None:
    try:
        io.write_table(path / io.TRAIN_LOG, history, _train_log_attrs(history))
        attrs = {"energy": evaluated.energy, "energy_err": evaluated.energy_err}
        io.write_table(path / io.EVAL_LOG, evaluated.records, attrs)
        io.write_json_atomic(path / io.RESULT, result)
        plot_training(path / io.PLOT, history, result)
    except OSError as err:
        raise RunError(_cannot_write(path, err)) from None


def _release(path: Path) -> None:
    if is_main_process():
        with contextlib.suppress(OSError):
            io.release_lock(path)


def run(
    config: Config,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    force: bool = False,
    *,
    initial: Callable[[Run], tuple[Any, np.ndarray]] | None = None,
    observables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the contents of result.json.

    ``initial(prepared_run) -> (params, walkers)``: a warm start for a fresh training (see
    :func:`train`; ignored when resuming from a checkpoint). ``observables``: extra ones
    for :func:`evaluate`.

    The directory is locked while the run lives; SIGINT/SIGTERM stop it at the next step
    with a checkpoint (:class:`Interrupted`). ``force`` starts a finished run over.
    With several processes (see ``parallel.initialize_distributed``) every process calls this
    and gets the same result; only process 0 creates the directory and writes files.
    """
    path = run_directory(config, out_dir)
    check_devices(config.train.walkers)
    _on_main(lambda: check_run_directory(path, resume, force))
    prepared = prepare(config)
    try:
        _on_main(lambda: _open_run_directory(path, config, resume, force))
        with stop_on_signals() as stop:
            start = None
            if initial is not None and not (resume and _has_checkpoint(path)):
                start = initial(prepared)
            trained = train(prepared, path, resume, progress, on_step, stop, start)
            evaluated = evaluate(
                prepared,
                trained.params,
                trained.walkers,
                trained.width,
                progress=progress,
                observables=observables,
                out_dir=path,
                tag={"train_step": trained.steps},
                stop=stop,
            )
            result = summarize(prepared, trained, evaluated)
            _on_main(lambda: _write_results(path, evaluated, result, trained.history))
    finally:
        _release(path)
        release_compiled()
    return result


def release_compiled() -> None:
    """Free the compiled programs of a finished run.

    Each run compiles its own programs (its molecule and orbitals are constants in them)
    and JAX keeps them cached; on the CPU each holds thousands of memory maps, so a process
    that runs many geometries or settings one after another (``nnqmc scan``, a Python loop)
    would reach the kernel's limit (``vm.max_map_count``, 65530) after about fifteen runs
    and crash inside LLVM."""
    jax.clear_caches()
    gc.collect()


def evaluate_run(
    run_dir: str | Path, steps: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Continue (or extend to ``steps``) the evaluation of a trained run directory and
    rewrite its result.json; returns its contents."""
    path = Path(run_dir)
    if not (path / io.CONFIG_COPY).is_file():
        raise RunError(f"{path} holds no run ({io.CONFIG_COPY} is missing)")
    config = load_config(path / io.CONFIG_COPY, [] if steps is None else [f"eval.steps={steps}"])
    check_devices(config.train.walkers)
    _on_main(lambda: check_run_directory(path, resume=True))
    prepared = prepare(config)
    try:
        _on_main(lambda: _lock_directory(path))
        _, params, _, opt_state = _initial_parameters(prepared)
        shape = (config.train.walkers, prepared.molecule.n_elec, 3)
        saved = _load_checkpoint(path, params, opt_state, shape)
        if saved is None:
            raise RunError(f"{path} holds no checkpoint to evaluate")
        if saved["step"] < config.train.steps:
            raise RunError(
                f"{path}: training stopped at step {saved['step']} of {config.train.steps}; "
                "finish it first with nnqmc run FILE --out DIR --resume"
            )
        history = saved["history"]
        wall = history["wall_time"]
        trained = TrainResult(
            params=saved["params"],
            walkers=saved["walkers"],
            width=saved["width"],
            history=history,
            steps=saved["step"],
            wall_seconds=float(wall[-1]) if len(wall) else 0.0,
        )
        with stop_on_signals() as stop:
            evaluated = evaluate(
                prepared,
                trained.params,
                trained.walkers,
                trained.width,
                progress=progress,
                out_dir=path,
                tag={"train_step": trained.steps},
                stop=stop,
            )
            result = summarize(prepared, trained, evaluated)
            _on_main(lambda: _write_results(path, evaluated, result, trained.history))
    finally:
        _release(path)
        release_compiled()
    return result
