"""``nnqmc scan FILE --from SHARED_DIR``: new geometries from a trained shared model
(docs/pes.md, "New geometries from a shared model").

``SHARED_DIR`` is a shared scan (:mod:`nnqmc.pes.shared`) whose shared training has
finished. Each geometry of FILE's scan solves its own SCF, aligns its occupied orbitals
(:mod:`nnqmc.orbital_alignment`) onto the nearest shared geometry's reference, and starts
its run directory as a handed-off geometry does: the aligned reference (attribute
``shared``), and a checkpoint at step 0 with the shared parameters, the shared optimizer
state (so fine-tuning goes on at the decayed rate the model ended with) and the nearest
shared geometry's walkers moved with the nuclei and burnt in. ``nnqmc scan`` resumes it
like any interrupted geometry: ``scan.fine_tune_steps`` steps, the evaluation, the row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..config import Config, ConfigError, load_config
from ..errors import RunError
from ..molecule import ELEMENTS
from ..orbital_alignment import AlignmentError, align_scf
from ..parallel import gather_walkers, replicate, scatter_walkers
from ..phases.training import _burn_in, initial_parameters, train_log_attrs
from ..reference_file import read_reference
from ..run_setup import STREAM_BURN_IN, Run, check_devices, prepare
from ..rundir import Progress, main_flag, on_main
from ..scf import with_reference
from .dataset import Dataset, DatasetError, read_dataset, write_dataset
from .geometry import kabsch_rotation
from .shared import (
    SHARED_DIR,
    _reference_path,
    handed_driver,
    neutral_settings,
    new_run_directory,
    program_digest,
    started_from,
)
from .warm import shift_walkers

__all__ = ["FROM_SHARED", "SharedModel", "check_scan_options", "from_shared"]

FROM_SHARED = "from-shared"
"""The ``train`` attribute of a scan dataset whose geometries came from a shared model."""


def check_scan_options(config: Config, whole: bool, cold: bool, shared_from: Any) -> None:
    """RunError, one line, for options a scan does not take together."""
    scan = config.scan
    if scan.kind in ("adaptive", "thermal") and not whole:
        kind = "an adaptive" if scan.kind == "adaptive" else "a thermal"
        raise RunError(
            f"{kind} scan chooses each geometry from all finished ones: run it whole (no --shard)"
        )
    if scan.kind == "thermal" and shared_from is not None:
        raise RunError("--from: a thermal scan's geometries are not known before it runs")
    if shared_from is None:
        if scan.train == "shared" and not whole:
            raise RunError(
                "a shared scan trains its geometries together: run it whole (no --shard)"
            )
        if scan.train != "shared" and "fine_tune_steps" in config.data.get("scan", {}):
            raise RunError(
                'scan.fine_tune_steps: only used with scan.train = "shared" or --from SHARED_DIR'
            )
        return
    if cold:
        raise RunError("--cold and --from: a geometry from a shared model is not cold")
    if scan.fine_tune_steps < 1:
        raise RunError(
            "--from needs scan.fine_tune_steps >= 1 (a run trains at least one step; 1 is "
            "the nearest to the shared model as it is)"
        )


MAX_TURN = 15.0


def superposition_angle(reference: np.ndarray, coords: np.ndarray) -> float:
    """The rotation angle (degrees) of the best superposition of ``coords`` onto
    ``reference``, arccos((tr R − 1)/2) of :func:`~nnqmc.pes.geometry.kabsch_rotation`;
    for a linear molecule the angle between the first-to-last atom vectors."""
    x = coords - coords.mean(axis=0)
    if np.linalg.matrix_rank(x, tol=1e-6) <= 1:  # linear: only the axis is defined
        a, b = x[-1] - x[0], reference[-1] - reference[0]
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    trace = np.trace(kabsch_rotation(reference, coords))
    return float(np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))))


def _symbols(z: np.ndarray) -> str:
    return " ".join(ELEMENTS[int(n) - 1] if 0 < n <= len(ELEMENTS) else f"Z={n}" for n in z)


def _compared(cfg: Config) -> dict[str, str]:
    """What of a run's settings shapes a shared model, part by part (for the message)."""
    cfg = neutral_settings(cfg)
    train = {"steps": 0, "seed": 0, "checkpoint_every": 1}
    return {
        "basis": repr(cfg.system.basis_label),
        "ansatz": repr(cfg.ansatz),
        "training": repr(dataclasses.replace(cfg.train, **train)),
        "sampler": repr(dataclasses.replace(cfg.sampler, burn_in=0, initial_width=1.0)),
        "Hamiltonian": repr(cfg.hamiltonian),
        "precision": repr(cfg.precision),
    }


def _other_settings(source: Path, cfg: Config) -> str:
    """Which parts of the settings differ from the shared scan's (from a geometry's
    config.toml there), else all that could."""
    for path in sorted(source.glob("geom-*/" + io.CONFIG_COPY))[:1]:
        try:
            theirs = _compared(load_config(path))
        except (ConfigError, OSError):
            break
        ours = _compared(cfg)
        differ = [n for n in ours if ours[n] != theirs[n]]
        if differ:
            return ", ".join(differ)
    return "settings (ansatz, training, sampler, Hamiltonian, basis, precision)"


@dataclass
class SharedModel:
    """A finished shared training, read from ``path`` (a shared scan's directory): its
    geometries, their aligned references, its checkpoint's tag and state."""

    path: Path
    dataset: Dataset
    mark: str  # the shared state's mark (:attr:`nnqmc.pes.shared.SharedResult.mark`)
    tag: dict[str, Any]
    step: int
    state: dict[str, Any] | None = None  # params, opt_state, walkers, scale (:meth:`load`)

    @classmethod
    def open(cls, source: str | Path, dataset_name: str, atomic_numbers: np.ndarray):
        """The shared model in ``source``; RunError, one line, for a directory that holds
        none, an unfinished one, or one of other atoms."""
        path = Path(source)
        where = f"--from {path}"
        if not path.is_dir():
            raise RunError(f"{where}: no such directory")
        try:
            data = read_dataset(path / dataset_name)
        except (DatasetError, OSError, KeyError) as err:
            raise RunError(
                f"{where}: not a shared scan (no readable {dataset_name}: {err})"
            ) from None
        trained = str(data.attrs.get("train", "independent"))
        if trained != "shared":
            raise RunError(f"{where}: not a shared scan (its scan.train is {trained!r})")
        if not np.array_equal(data.atomic_numbers, atomic_numbers):
            raise RunError(
                f"{where}: a shared model of other atoms ({_symbols(data.atomic_numbers)}) "
                f"than this scan's ({_symbols(atomic_numbers)})"
            )
        shared = path / SHARED_DIR
        try:
            found, _ = io.read_newest(
                shared / io.CHECKPOINT, shared / io.PREVIOUS_CHECKPOINT, _checkpoint_head
            )
        except io.CheckpointError as err:
            raise RunError(f"{where}: unusable shared checkpoint ({err})") from None
        if found is None:
            raise RunError(f"{where}: holds no shared training ({shared} has no checkpoint)")
        step, tag = found
        mark = started_from(path / "geom-0000") or ""
        if mark.rpartition("@")[2] != str(step):
            raise RunError(
                f"{where}: its shared training has not finished (step {step}); finish it "
                "first with nnqmc scan on its input"
            )
        return cls(path, data, mark, tag, step)

    # ----------------------------------------------------------------------- checks
    def check(self, run: Run) -> None:
        """RunError, one line, unless ``run`` (a fresh one of this scan) has the shared
        model's electrons and the settings that shape its parameters."""
        where = f"--from {self.path}"
        try:
            stored = io.load_reference(_reference_path(self.path / SHARED_DIR, 0))
        except io.CheckpointError as err:
            raise RunError(f"{where}: unusable aligned reference ({err})") from None
        theirs = (np.shape(stored["occ_up"])[-1], np.shape(stored["occ_down"])[-1])
        ours = (run.molecule.n_up, run.molecule.n_down)
        if theirs != ours:
            raise RunError(
                f"{where}: a shared model of other electron counts (up, down) = {theirs} "
                f"than this scan's {ours}"
            )
        if program_digest(run) != self.tag.get("program"):
            other = _other_settings(self.path, run.config)
            raise RunError(
                f"{where}: a shared model of other {other}; use the shared scan's settings"
            )

    def nearest(self, coords: np.ndarray) -> int:
        """The shared geometry closest to ``coords`` in shape: the smallest difference of
        the interatomic distance matrices (bohr), blind to where the molecule sits."""
        shape = lambda x: np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)  # noqa: E731
        d = np.linalg.norm(
            (shape(self.dataset.positions) - shape(coords)).reshape(self.n, -1), axis=1
        )
        return int(np.argmin(d))

    def check_frame(self, coords: np.ndarray, j: int, k: int) -> None:
        """RunError when geometry ``k`` is turned by more than :data:`MAX_TURN` degrees
        against its nearest shared geometry ``j`` (best superposition): its orbitals would
        be compared, and its walkers moved, in another frame than the model's."""
        turn = superposition_angle(self.dataset.positions[j], coords)
        if turn > MAX_TURN:
            raise RunError(
                f"--from {self.path}: geometry {k} is turned by {turn:.0f} degrees against "
                f"shared geometry {j}; give the geometries in the shared scan's frame"
            )

    @property
    def n(self) -> int:
        return len(self.dataset.positions)

    def aligned(self, run: Run, k: int) -> Run:
        """``run`` (geometry ``k`` of this scan, fresh SCF) on its SCF's occupied orbitals
        aligned to those of the nearest shared geometry; RunError if they cannot be."""
        j = self.nearest(np.asarray(run.molecule.coords))
        self.check_frame(np.asarray(run.molecule.coords), j, k)
        try:
            arrays = io.load_reference(_reference_path(self.path / SHARED_DIR, j))
            reference = with_reference(run.scf, arrays)
        except (io.CheckpointError, KeyError, ValueError) as err:
            raise RunError(f"--from {self.path}: unusable aligned reference ({err})") from None
        molecule = run.molecule.with_coords(self.dataset.positions[j])
        try:
            scf = align_scf(reference, molecule, run.scf, run.molecule, run.config.system.basis)
        except AlignmentError as err:
            raise RunError(
                f"--from {self.path}: the orbitals of geometry {k} cannot be aligned with "
                f"those of its shared geometry {j}: {err}"
            ) from None
        return prepare(run.config, scf)

    # ----------------------------------------------------------------------- state
    def load(self, run: Run) -> dict[str, Any]:
        """The shared checkpoint's parameters, optimizer state, walkers (G, W, n, 3) and
        learning-rate scale, read with ``run``'s ansatz as the template."""
        if self.state is None:
            key, params, _, opt_state = initial_parameters(run)
            n_elec = run.ansatz.n_up + run.ansatz.n_down
            walkers = np.zeros((self.n, run.config.train.walkers, n_elec, 3))
            like = {"params": params, "opt_state": opt_state, "walkers": walkers, "scale": 1.0}
            like = jax.tree_util.tree_map(np.asarray, like)
            shared = self.path / SHARED_DIR
            try:
                found, _ = io.read_newest(
                    shared / io.CHECKPOINT,
                    shared / io.PREVIOUS_CHECKPOINT,
                    lambda p: io.load_checkpoint(p, like),
                )
            except io.CheckpointError as err:
                raise RunError(f"--from {self.path}: unusable shared checkpoint ({err})") from None
            if found is None or found.get("step") != self.step:
                raise RunError(f"--from {self.path}: its shared checkpoint changed; run again")
            self.state = found["state"]
        return self.state

    def start(self, run: Run, run_dir: Path, progress: Progress | None = None) -> bool:
        """Make ``run_dir`` geometry ``run``'s run (aligned, :meth:`aligned`) at step 0
        from the shared model (see the module doc), unless it already holds one started
        from this shared state; returns whether it was started now."""
        if main_flag(lambda: started_from(run_dir) == self.mark):  # every process the same answer
            return False
        state = self.load(run)
        cfg = run.config
        coords = np.asarray(run.molecule.coords, np.float64)
        j = self.nearest(coords)
        walkers = shift_walkers(np.asarray(state["walkers"][j]), self.dataset.positions[j], coords)
        drive = handed_driver(run, run_dir, float(state["scale"]))  # its clock: burn-in on
        n_devices = check_devices(cfg.train.walkers)
        key = jax.random.PRNGKey(cfg.train.seed)
        width = replicate(jnp.asarray(cfg.sampler.initial_width, run.dtype), n_devices)
        walkers, width = _burn_in(
            run,
            state["params"],
            scatter_walkers(jnp.asarray(walkers, run.dtype), n_devices),
            width,
            jax.random.fold_in(key, STREAM_BURN_IN),
            n_devices,
            progress,
        )
        content = {
            "params": state["params"],
            "opt_state": state["opt_state"],
            "walkers": gather_walkers(walkers),
            "width": float(width[0]),
            "key": np.asarray(key),
        }
        on_main(lambda: new_run_directory(run_dir, run, self.mark))
        drive.run(
            None,
            lambda s, i: (s, {}),
            lambda s: content,
            total=0,
            every=1,
            label="step",
            first_checkpoint=True,
            log_attrs=train_log_attrs,
        )
        return True

    def stale(self, run_dirs: dict[int, Path]) -> list[int]:
        """The geometries whose directories were started from an earlier state of this
        shared training (it has trained on since): to be started anew. RunError for one
        started from another shared model."""
        digest = self.mark.rpartition("@")[0]
        out = []
        for k, run_dir in run_dirs.items():
            mark = on_main(lambda d=run_dir: started_from(d))
            if mark is None or mark == self.mark:
                continue
            if mark.rpartition("@")[0] != digest:
                raise RunError(
                    f"{run_dir} was started from another shared model than the one in "
                    f"{self.path}; use another --out"
                )
            out.append(k)
        return out


def _checkpoint_head(path: Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint's step and tag (verified, without its state)."""

    def read(f) -> tuple[int, dict[str, Any]]:
        tag = {k[4:]: io.attr_value(v) for k, v in f.attrs.items() if k.startswith("tag_")}
        return int(f.attrs["step"]), tag

    return io.read_checked(path, read)


def from_shared(
    source: str | Path,
    dataset_name: str,
    data: Dataset,
    dataset_file: Path,
    run_dirs: dict[int, Path],
    configure: Callable[[int], Config],
    log: Callable[[str], None],
) -> Callable[[int, Progress | None], None]:
    """Everything of a ``--from`` scan before its rows run: the shared model in ``source``
    (:meth:`SharedModel.open`), rows started from an earlier state of it set pending
    again, and every unfinished geometry of ``run_dirs`` (its config ``configure(k)``) not
    yet started from this state checked and aligned (its own SCF), so that bad input is
    one line before any training. A geometry started from it before resumes on its stored
    reference and solves no SCF: one that landed on another solution could fail to align
    and stop it. Returns ``start(k, progress)``, which makes geometry ``k``'s run
    directory (:meth:`start`) unless it was started before."""
    model = SharedModel.open(source, dataset_name, data.atomic_numbers)
    stale = model.stale(run_dirs)
    if stale:
        log(f"geometries {stale}: redone from shared step {model.step} of {model.path}")
        for k in stale:
            data.set_row(k, status="pending")
    data.attrs.update(shared_from=str(model.path), shared_model=model.mark)
    write_dataset(dataset_file, data)
    unfinished = [k for k in run_dirs if data.status(k) != "done"]
    started = [
        k for k in unfinished if main_flag(lambda d=run_dirs[k]: started_from(d) == model.mark)
    ]
    runs = {k: prepare(configure(k)) for k in unfinished if k not in started}
    if runs:
        model.check(next(iter(runs.values())))
    elif started:  # checked on its stored reference: no SCF for a geometry that resumes
        model.check(_stored_run(configure(started[0]), run_dirs[started[0]]))
    runs = {k: model.aligned(run, k) for k, run in runs.items()}
    if unfinished:
        log(f"from the shared model in {model.path} (shared step {model.step})")

    def start(k: int, progress: Progress | None) -> None:
        if k in runs:  # the others were started from this model before: they resume
            model.start(runs[k], run_dirs[k], progress)

    return start


def _stored_run(config: Config, run_dir: Path) -> Run:
    """``config``'s run on the reference stored in ``run_dir`` (a geometry started from
    the shared model), without an SCF."""
    found = read_reference(config, run_dir / io.REFERENCE)
    if found is None:
        raise RunError(f"{run_dir}: its {io.REFERENCE} is missing")
    return prepare(config, found[0])
