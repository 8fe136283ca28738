"""``[scan] train = "shared"``: one parameter set trained on all geometries of a scan.

The shared training lives in the scan directory's ``shared/`` run directory: its
checkpoint and log (``train.h5``: a row per step with one energy, variance, acceptance and
step width per trained geometry, and the geometries' indices), and the aligned mean-field
reference of every geometry (``reference-NNNN.h5``). Each geometry's SCF is solved on its
own and its occupied orbitals are rotated onto those of the nearest geometry already
aligned, starting from geometry 0 (:mod:`nnqmc.orbital_alignment`), so
the shared network sees the same orbital in the same slot. The step itself is
:mod:`nnqmc.shared_steps`; the loop, checkpoints and resume are :class:`nnqmc.driver.Driver`'s.

Afterwards each geometry gets an ordinary run directory that starts where the shared
training ended (:func:`hand_off`): its aligned reference, the shared parameters and
optimizer state, its own walkers and step width, and as its training log the rows of the
shared steps it took part in. ``nnqmc scan`` then resumes it like any interrupted
geometry: ``scan.fine_tune_steps`` more training steps on that geometry alone, the
evaluation, the dataset row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..config import Config
from ..driver import Driver, NanGuard
from ..errors import RunError
from ..orbital_alignment import AlignmentError, align_scf
from ..parallel import (
    device_keys,
    first_replica,
    gather_walkers,
    replicate,
    scatter_walkers,
)
from ..phases.training import _burn_in, initial_parameters
from ..run_setup import (
    STREAM_BURN_IN,
    STREAM_TRAIN,
    STREAM_WALKERS,
    Run,
    check_devices,
    initial_walkers,
    prepare,
)
from ..rundir import Progress, StopCheck, cannot_write
from ..scf import reference_arrays, with_reference
from ..shared_steps import SharedState, selection, shared_train_program, stack_geometries

__all__ = ["SHARED_DIR", "SharedResult", "hand_off", "prepare_shared", "train_shared"]

SHARED_DIR = "shared"

# the columns of one row of a geometry's own training log (io.TRAIN_COLUMNS)
_PER_GEOMETRY = ("energy", "variance", "acceptance", "width")


@dataclass
class SharedResult:
    """The shared training's end: parameters and optimizer state, walkers (G, W, n, 3)
    and step widths (G,) of every geometry, the log's rows, and the steps done."""

    params: Any
    opt_state: Any
    walkers: np.ndarray
    width: np.ndarray
    history: dict[str, np.ndarray]
    steps: int
    wall_seconds: float


def _reference_path(run_dir: Path, k: int) -> Path:
    return run_dir / f"reference-{k:04d}.h5"


def _check_same_system(runs: list[Run]) -> None:
    """RunError unless every geometry has the atoms, electrons and program of the first."""
    first = runs[0].molecule
    for k, run in enumerate(runs[1:], start=1):
        mol = run.molecule
        if tuple(mol.symbols) != tuple(first.symbols) or (mol.n_up, mol.n_down) != (
            first.n_up,
            first.n_down,
        ):
            raise RunError(
                f"scan.train = 'shared': geometry {k} has other atoms or electrons than "
                "geometry 0 (one network needs the same system at every geometry)"
            )


def _aligned(runs: list[Run], basis: Any) -> list[Any]:
    """Every geometry's SCF with its occupied orbitals aligned to those of the nearest
    geometry aligned before it (geometry 0 as it is)."""
    scfs: list[Any] = [runs[0].scf] + [None] * (len(runs) - 1)
    coords = [np.asarray(r.molecule.coords) for r in runs]
    done = [0]
    while len(done) < len(runs):
        pairs = [
            (float(np.linalg.norm(coords[k] - coords[j])), k, j)
            for k in range(len(runs))
            if scfs[k] is None
            for j in done
        ]
        _, k, j = min(pairs)
        try:
            scfs[k] = align_scf(scfs[j], runs[j].molecule, runs[k].scf, runs[k].molecule, basis)
        except AlignmentError as err:
            raise RunError(
                f"scan.train = 'shared': the orbitals of geometry {k} cannot be aligned "
                f"with those of geometry {j}: {err}"
            ) from None
        done.append(k)
    return scfs


def prepare_shared(configs: list[Config], run_dir: Path, resume: bool) -> list[Run]:
    """The prepared runs of the geometries on aligned references: read back from
    ``run_dir`` when resuming and all are there, else computed and written there."""
    stored = [_reference_path(run_dir, k) for k in range(len(configs))]
    runs = [prepare(c) for c in configs]
    _check_same_system(runs)
    if resume and all(p.is_file() for p in stored):
        try:
            scfs = [
                with_reference(r.scf, io.load_reference(p))
                for r, p in zip(runs, stored, strict=True)
            ]
        except (io.CheckpointError, KeyError, ValueError) as err:
            raise RunError(f"{run_dir}: unusable aligned reference ({err})") from None
    else:
        scfs = _aligned(runs, configs[0].system.basis)
        run_dir.mkdir(parents=True, exist_ok=True)
        for path, scf in zip(stored, scfs, strict=True):
            try:
                io.save_reference(path, reference_arrays(scf))
            except OSError as err:
                raise RunError(cannot_write(path, err)) from None
    runs = [prepare(c, s) for c, s in zip(configs, scfs, strict=True)]
    keys = {r.program_key for r in runs}
    if len(keys) != 1:
        raise RunError("scan.train = 'shared': the geometries do not share one program")
    return runs


def _driver(run: Run, run_dir: Path) -> Driver:
    guard = NanGuard(
        run.config.train.max_bad_steps,
        "train.max_bad_steps",
        "shared training",
        "non-finite local energies, gradient or update",
        "learning rate",
        finite=lambda row: row["finite"] > 0,
        hint=" (continue with the same command after lowering train.learning_rate)",
    )
    return Driver(run_dir, "train", guard=guard)


def _start(runs: list[Run], params: Any, key: jax.Array, n_devices: int, progress) -> tuple:
    """Every geometry's walkers, drawn around its nuclei and burnt in with ``params``:
    (G, W, n, 3) per device and step widths (G,) per device."""
    cfg = runs[0].config
    walkers, widths = [], []
    for g, run in enumerate(runs):
        start = initial_walkers(
            run, jax.random.fold_in(jax.random.fold_in(key, STREAM_WALKERS), g), cfg.train.walkers
        )
        width = replicate(jnp.asarray(cfg.sampler.initial_width, run.dtype), n_devices)
        burn_key = jax.random.fold_in(jax.random.fold_in(key, STREAM_BURN_IN), g)
        w, width = _burn_in(
            run, params, scatter_walkers(start, n_devices), width, burn_key, n_devices, progress
        )
        walkers.append(w)
        widths.append(width)
    return jnp.stack(walkers, axis=1), jnp.stack(widths, axis=1)


def train_shared(
    runs: list[Run],
    run_dir: Path,
    per_step: int,
    resume: bool = False,
    progress: Progress | None = None,
    stop: StopCheck | None = None,
) -> SharedResult:
    """Train one parameter set on all ``runs`` (aligned, :func:`prepare_shared`) for
    ``train.steps`` steps of ``per_step`` geometries each, checkpointed in ``run_dir``."""
    first = runs[0]
    cfg = first.config
    n_devices = check_devices(cfg.train.walkers)
    key, params, _, opt_state = initial_parameters(first)
    n_geom, n_elec = len(runs), first.ansatz.n_up + first.ansatz.n_down
    drive = _driver(first, run_dir)
    like = {
        "params": params,
        "opt_state": opt_state,
        "walkers": np.zeros((n_geom, cfg.train.walkers, n_elec, 3)),
        "width": np.zeros(n_geom),
        "key": np.asarray(key),
    }
    saved = drive.resume(jax.tree_util.tree_map(np.asarray, like)) if resume else None
    if saved is not None:
        params, opt_state = saved["params"], saved["opt_state"]
        walkers = jnp.stack(
            [scatter_walkers(jnp.asarray(w, first.dtype), n_devices) for w in saved["walkers"]],
            axis=1,
        )
        width = replicate(jnp.asarray(saved["width"], first.dtype), n_devices)
    else:
        walkers, width = _start(runs, params, key, n_devices, progress)
    program = shared_train_program(first, stack_geometries([r.geometry for r in runs]))
    train_key = jax.random.fold_in(key, STREAM_TRAIN)
    guard = drive.guard

    def step(state: SharedState, k: int) -> tuple[SharedState, dict[str, Any]]:
        index = selection(k, n_geom, per_step)
        state, stats = program(state, device_keys(train_key, k, n_devices), guard.scale, index)
        row = {n: np.asarray(v[0]) for n, v in stats.items()}
        return state, {**row, "step": k, "geometry": index, "lr_scale": guard.scale}

    def saved_state(state: SharedState) -> dict[str, Any]:
        return {
            "params": first_replica(state.params),
            "opt_state": first_replica(state.opt_state),
            "walkers": np.stack([gather_walkers(state.walkers[:, g]) for g in range(n_geom)]),
            "width": np.asarray(state.width[0]),
            "key": np.asarray(key),
        }

    state = drive.run(
        SharedState(replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width),
        step,
        saved_state,
        total=cfg.train.steps,
        every=cfg.train.checkpoint_every,
        label="shared step",
        stop=stop,
        progress=progress,
        first_checkpoint=True,
        timed=True,
    )
    end = saved_state(state)
    return SharedResult(
        end["params"],
        end["opt_state"],
        end["walkers"],
        end["width"],
        drive.rows(),
        max(drive.start, cfg.train.steps),
        drive.elapsed(),
    )


def geometry_rows(history: dict[str, np.ndarray], k: int) -> list[dict[str, Any]]:
    """The rows of the shared log in which geometry ``k`` was trained, as rows of an
    ordinary training log (that geometry's energy, variance, acceptance and width)."""
    rows = []
    for i, index in enumerate(np.asarray(history.get("geometry", []))):
        where = np.flatnonzero(np.asarray(index) == k)
        if where.size == 0:
            continue
        g = int(where[0])
        row = {n: float(np.asarray(history[n][i])[g]) for n in _PER_GEOMETRY}
        for n in ("step", "grad_norm", "finite", "lr_scale", "wall_time"):
            row[n] = history[n][i]
        rows.append(row)
    return rows


def hand_off(shared: SharedResult, k: int, run: Run, run_dir: Path) -> int:
    """Make ``run_dir`` a run of geometry ``k`` trained as far as the shared training
    (see the module doc); returns its number of training steps (those geometry ``k``
    took part in). Nothing is written if it has a checkpoint already."""
    rows = geometry_rows(shared.history, k)
    if not rows:
        raise RunError(f"geometry {k} took part in no shared step: raise train.steps")
    if (run_dir / io.CHECKPOINT).exists() or (run_dir / io.PREVIOUS_CHECKPOINT).exists():
        return len(rows)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        io.save_reference(run_dir / io.REFERENCE, reference_arrays(run.scf))
    except OSError as err:
        raise RunError(cannot_write(run_dir, err)) from None
    content = {
        "params": shared.params,
        "opt_state": shared.opt_state,
        "walkers": np.asarray(shared.walkers[k]),
        "width": float(shared.width[k]),
        "key": np.asarray(jax.random.PRNGKey(run.config.train.seed)),
    }
    drive = Driver(run_dir, "train")
    drive.run(
        None,
        lambda state, i: (state, rows[i]),
        lambda state: content,
        total=len(rows),
        every=max(len(rows), 1),
        label="step",
    )
    return len(rows)


def check_steps(n_geometries: int, per_step: int, steps: int) -> None:
    """RunError if ``steps`` shared steps of ``per_step`` geometries leave one out."""
    if math.ceil(n_geometries / min(per_step, n_geometries)) > steps:
        raise RunError(
            f"train.steps = {steps} shared steps of {per_step} geometries leave some of the "
            f"{n_geometries} geometries untrained"
        )
