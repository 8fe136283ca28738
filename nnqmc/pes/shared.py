"""``[scan] train = "shared"``: one parameter set trained on all geometries of a scan
(docs/pes.md, "Shared training").

The shared training lives in the scan directory's ``shared/`` run directory: its
checkpoint, its log (``train.h5``, one energy, variance, acceptance and step width per
trained geometry per step) and each geometry's aligned reference (``reference-NNNN.h5``,
occupied orbitals rotated onto the nearest geometry already aligned, from geometry 0:
:mod:`nnqmc.orbital_alignment`). The step is :mod:`nnqmc.shared_steps`; the loop,
checkpoints and resume are :class:`nnqmc.driver.Driver`'s. Then :func:`hand_off` gives
each geometry an ordinary run directory starting where the shared training ended (aligned
reference, shared parameters and optimizer state, its walkers and step width, the shared
steps it took part in as its log), which ``nnqmc scan`` resumes like any interrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    gather_walkers,
    replicate,
    scatter_walkers,
)
from ..phases.training import (
    _burn_in,
    checkpoint_contents,
    drive_training,
    initial_parameters,
    train_log_attrs,
)
from ..reference_file import read_reference, save_reference
from ..run_setup import (
    STREAM_BURN_IN,
    STREAM_TRAIN,
    STREAM_WALKERS,
    Run,
    check_devices,
    initial_walkers,
    prepare,
    program_key,
)
from ..rundir import Progress, StopCheck, cannot_write, has_checkpoint, main_flag, on_main
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
    lr_scale: float = 1.0  # the learning-rate scale after rejected steps
    mark: str = ""  # which shared training and step this is (:func:`fingerprint`)


def _reference_path(run_dir: Path, k: int) -> Path:
    return run_dir / f"reference-{k:04d}.h5"


def _check_same_system(configs: list[Config]) -> None:
    """RunError unless every geometry has the atoms and electrons of the first."""
    first = configs[0].system.molecule
    for k, config in enumerate(configs[1:], start=1):
        mol = config.system.molecule
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


def _stored_references(configs: list[Config], stored: list[Path], run_dir: Path) -> list[Any]:
    """The aligned references in ``stored``, built without an SCF (process 0 reads them)."""
    scfs = []
    for config, path in zip(configs, stored, strict=True):
        found = read_reference(config, path)
        if found is None:
            raise RunError(f"{run_dir}: unusable aligned reference ({path.name} is missing)")
        scfs.append(found[0])
    return scfs


def prepare_shared(configs: list[Config], run_dir: Path, resume: bool) -> list[Run]:
    """The prepared runs of the geometries on aligned references: read back from
    ``run_dir`` when resuming and all are there (no SCF solved), else computed and written
    there (by process 0)."""
    _check_same_system(configs)
    stored = [_reference_path(run_dir, k) for k in range(len(configs))]
    if resume and main_flag(lambda: all(p.is_file() for p in stored)):
        scfs = _stored_references(configs, stored, run_dir)
    else:
        scfs = _aligned([prepare(c) for c in configs], configs[0].system.basis)
        for path, scf, config in zip(stored, scfs, configs, strict=True):
            on_main(lambda path=path, scf=scf, c=config: save_reference(path, scf, c, aligned=True))
    runs = [prepare(c, s) for c, s in zip(configs, scfs, strict=True)]
    keys = {r.program_key for r in runs}
    if len(keys) != 1:
        raise RunError("scan.train = 'shared': the geometries do not share one program")
    return runs


# what each part of the fingerprint is, for the message that refuses another one
_FINGERPRINT = {
    "program": "settings (ansatz, training, sampler, Hamiltonian, basis, precision)",
    "geometries_per_step": "scan.geometries_per_step",
    "kernel": "scan.shared_kernel",
    "seed": "train.seed",
    "walkers": "train.walkers",
    "positions": "geometries",
}


def neutral_settings(cfg: Config) -> Config:
    """``cfg`` without the settings a shared training lets change on resume (the
    learning rate, ``max_bad_steps``, ``local_energy_chunk``, the evaluation's)."""
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, learning_rate=None, max_bad_steps=1, local_energy_chunk=None
        ),
        eval=dataclasses.replace(cfg.eval, decorrelation=1, dipole=False),
    )


def program_digest(run: Run) -> str:
    """The ``program`` part of :func:`fingerprint`: what shapes the shared model's
    parameters and optimizer state (settings, atoms, basis, occupations), not its
    geometries."""
    key = program_key(neutral_settings(run.config), run.molecule, run.scf, run.geometry)
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def fingerprint(runs: list[Run], per_step: int, kernel: str = "joint") -> dict[str, Any]:
    """What shapes the shared model besides the number of steps: the program key (settings
    without step counts and seed, atoms, basis, occupations), ``geometries_per_step``, the
    seed, the walkers and the geometries; the tag of the shared training's checkpoints.

    Left out, as a single point's training lets them change on resume: the learning rate
    (lowered after rejected steps, as the guard's message suggests), ``max_bad_steps``,
    ``local_energy_chunk`` and the evaluation's settings. The SPRING ``kernel`` enters only
    where it is not the joint one, so trainings started before it was a choice resume."""
    cfg = runs[0].config
    positions = np.stack([np.asarray(r.molecule.coords, np.float64) for r in runs])
    digest = lambda b: hashlib.sha256(b).hexdigest()[:16]  # noqa: E731
    return {
        "program": program_digest(runs[0]),
        "geometries_per_step": int(min(per_step, len(runs))),
        "seed": int(cfg.train.seed),
        "walkers": int(cfg.train.walkers),
        "positions": digest(positions.tobytes()),
    } | ({} if kernel == "joint" else {"kernel": kernel})


def _columns(per_step: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The columns of the shared log (asked for to resume on several processes)."""
    one = lambda dtype=np.float64: jax.ShapeDtypeStruct((per_step,), dtype)  # noqa: E731
    scalar = lambda dtype=np.float64: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    columns = {n: one() for n in _PER_GEOMETRY}
    columns.update(geometry=one(np.int64), step=scalar(np.int64))
    columns.update({n: scalar() for n in ("grad_norm", "finite", "lr_scale", "wall_time")})
    return columns


def _driver(run: Run, run_dir: Path, tag: dict[str, Any]) -> Driver:
    guard = NanGuard(
        run.config.train.max_bad_steps,
        "train.max_bad_steps",
        "shared training",
        "non-finite local energies, gradient or update",
        "learning rate",
        finite=lambda row: row["finite"] > 0,
        hint=" (continue with the same command after lowering train.learning_rate)",
    )
    columns = _columns(tag["geometries_per_step"])
    return Driver(run_dir, "train", tag=tag, guard=guard, columns=lambda: columns)


def _same_training(run_dir: Path, tag: dict[str, Any]):
    """The Driver's ``accept``: RunError, one line, for a checkpoint of a shared training
    with another :func:`fingerprint` (its log's rows would not fit, nor its model)."""

    def accept(saved: dict[str, Any]) -> bool:
        theirs = {"kernel": "joint"} | dict(saved["tag"])
        ours = {"kernel": "joint"} | tag
        differ = [_FINGERPRINT[n] for n in _FINGERPRINT if theirs.get(n) != ours.get(n)]
        if differ:
            raise RunError(
                f"{run_dir} holds a shared training with other {', '.join(differ)}; rerun "
                "with the settings it was started with, or start over with another --out"
            )
        return True

    return accept


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
    kernel: str = "joint",
) -> SharedResult:
    """Train one parameter set on all ``runs`` (aligned, :func:`prepare_shared`) for
    ``train.steps`` steps of ``per_step`` geometries each, checkpointed in ``run_dir``;
    ``kernel``: SPRING's, ``"joint"`` or ``"per_geometry"`` (:mod:`nnqmc.shared_steps`)."""
    first = runs[0]
    cfg = first.config
    n_devices = check_devices(cfg.train.walkers)
    key, params, _, opt_state = initial_parameters(first)
    n_geom, n_elec = len(runs), first.ansatz.n_up + first.ansatz.n_down
    tag = fingerprint(runs, per_step, kernel)
    drive = _driver(first, run_dir, tag)
    like = {
        "params": params,
        "opt_state": opt_state,
        "walkers": np.zeros((n_geom, cfg.train.walkers, n_elec, 3)),
        "width": np.zeros(n_geom),
        "key": np.asarray(key),
    }
    like = jax.tree_util.tree_map(np.asarray, like)
    saved = drive.resume(like, _same_training(run_dir, tag)) if resume else None
    if saved is not None:
        params, opt_state = saved["params"], saved["opt_state"]
        walkers = jnp.stack(
            [scatter_walkers(jnp.asarray(w, first.dtype), n_devices) for w in saved["walkers"]],
            axis=1,
        )
        width = replicate(jnp.asarray(saved["width"], first.dtype), n_devices)
    else:
        walkers, width = _start(runs, params, key, n_devices, progress)
    geometries = stack_geometries([r.geometry for r in runs])
    program = shared_train_program(first, geometries, kernel)
    train_key = jax.random.fold_in(key, STREAM_TRAIN)
    guard = drive.guard

    def step(state: SharedState, k: int) -> tuple[SharedState, dict[str, Any]]:
        index = selection(k, n_geom, per_step)
        state, stats = program(state, device_keys(train_key, k, n_devices), guard.scale, index)
        row = {n: np.asarray(v[0], np.float64) for n, v in stats.items()}
        row.update(step=k, geometry=index.astype(np.int64), lr_scale=guard.scale)
        return state, row

    def saved_state(state: SharedState) -> dict[str, Any]:
        walkers = np.stack([gather_walkers(state.walkers[:, g]) for g in range(n_geom)])
        return checkpoint_contents(state, walkers, np.asarray(state.width[0]), key)

    state = drive_training(
        drive,
        SharedState(replicate(params, n_devices), replicate(opt_state, n_devices), walkers, width),
        step,
        saved_state,
        cfg.train,
        label="shared step",
        stop=stop,
        progress=progress,
    )
    end = saved_state(state)
    steps = max(drive.start, cfg.train.steps)
    digest = hashlib.sha256(repr(sorted(tag.items())).encode()).hexdigest()[:16]
    return SharedResult(
        end["params"],
        end["opt_state"],
        end["walkers"],
        end["width"],
        drive.rows(),
        steps,
        drive.elapsed(),
        guard.scale,
        f"{digest}@{steps}",
    )


def geometry_rows(history: dict[str, np.ndarray], k: int) -> list[dict[str, Any]]:
    """The rows of the shared log in which geometry ``k`` was trained, as rows of an
    ordinary training log: that geometry's energy, variance, acceptance and width, its own
    count of steps as ``step`` (0, 1, ...; its fine-tuning goes on from there), and as
    ``wall_time`` its share of the shared training's time so far (each shared step's
    seconds split evenly among the geometries it trained)."""
    chosen = np.asarray(history.get("geometry", np.zeros((0, 1), np.int64)))
    wall = np.asarray(history.get("wall_time", np.zeros(len(chosen))), np.float64)
    spent = np.diff(wall, prepend=0.0)  # each shared step's seconds
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    for i, index in enumerate(chosen):
        where = np.flatnonzero(np.asarray(index) == k)
        if where.size == 0:
            continue
        g = int(where[0])
        seconds += float(spent[i]) / len(index)
        row = {n: float(np.asarray(history[n][i])[g]) for n in _PER_GEOMETRY}
        row.update({n: float(history[n][i]) for n in ("grad_norm", "finite", "lr_scale")})
        row.update(step=len(rows), wall_time=seconds)
        rows.append(row)
    return rows


def started_from(run_dir: Path) -> str | None:
    """Process 0: the shared state ``run_dir``'s run was started from (its reference's
    attribute ``shared``; None without a checkpoint or that attribute)."""
    if not has_checkpoint(run_dir):
        return None
    try:
        return io.reference_attrs(run_dir / io.REFERENCE).get("shared")
    except io.CheckpointError:
        return None


def new_run_directory(run_dir: Path, run: Run, mark: str) -> None:
    """Process 0: ``run_dir`` emptied of an earlier run, with ``run``'s aligned reference."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in io.RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    except OSError as err:
        raise RunError(cannot_write(run_dir, err)) from None
    save_reference(run_dir / io.REFERENCE, run.scf, run.config, aligned=True, shared=mark)


def handed_driver(run: Run, run_dir: Path, lr_scale: float) -> Driver:
    """The training Driver that writes a handed-off run's first checkpoint: the shared
    training's learning-rate scale goes on in it (a guard that takes every replayed row as
    good, so none of them halves it again)."""
    guard = NanGuard(
        run.config.train.max_bad_steps,
        "train.max_bad_steps",
        "training",
        "non-finite local energies, gradient or update",
        "learning rate",
        finite=lambda row: True,
        scale=lr_scale,
    )
    return Driver(run_dir, "train", guard=guard)


def hand_off(shared: SharedResult, k: int, run: Run, run_dir: Path) -> tuple[int, bool]:
    """Make ``run_dir`` a run of geometry ``k`` trained as far as the shared training
    (see the module doc); returns its number of training steps (those geometry ``k``
    took part in) and whether it was handed off now. A run handed off from this shared
    state (its :attr:`~SharedResult.mark`) is left as it is; one from another (an earlier
    end of the shared training, before ``train.steps`` was raised) is removed and handed
    off anew, so that every row of the dataset comes from the same shared model."""
    rows = geometry_rows(shared.history, k)
    if not rows:
        raise RunError(f"geometry {k} took part in no shared step: raise train.steps")
    if main_flag(lambda: started_from(run_dir) == shared.mark):
        return len(rows), False
    on_main(lambda: new_run_directory(run_dir, run, shared.mark))
    content = {
        "params": shared.params,
        "opt_state": shared.opt_state,
        "walkers": np.asarray(shared.walkers[k]),
        "width": float(shared.width[k]),
        "key": np.asarray(jax.random.PRNGKey(run.config.train.seed)),
    }
    drive = handed_driver(run, run_dir, shared.lr_scale)
    drive.earlier = rows[-1]["wall_time"]  # its share of the shared training's time
    drive.run(
        None,
        lambda state, i: (state, rows[i]),
        lambda state: content,
        total=len(rows),
        every=len(rows),
        label="step",
        log_attrs=train_log_attrs,
    )
    return len(rows), True


def check_steps(n_geometries: int, per_step: int, steps: int) -> None:
    """RunError if ``steps`` shared steps of ``per_step`` geometries leave one out."""
    if math.ceil(n_geometries / min(per_step, n_geometries)) > steps:
        raise RunError(
            f"train.steps = {steps} shared steps of {per_step} geometries leave some of the "
            f"{n_geometries} geometries untrained"
        )
