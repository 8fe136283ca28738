"""``nnqmc scan``: one ordinary run directory per geometry, rows in one dataset.

Each geometry is a run directory ``geom-NNNN`` under the scan directory, trained and
evaluated by :func:`nnqmc.api.run` (so its checkpoints make it resumable). A geometry
starts from the parameters and walkers of the nearest finished geometry of the same shard
(warm start; from memory when this process ran that geometry last, else from its
checkpoint): the network parameters are copied, and each electron moves with its nearest
nucleus before the burn-in. The determinant orbitals are always the new geometry's
HF/CASSCF orbitals. A sign flip of an MO between geometries flips the sign of the
determinants in which it is singly occupied, so trained CI coefficients are not copied:
the factor by which training changed each one is applied to the new geometry's CASSCF
coefficient (see :func:`transfer_parameters`). With one determinant signs do not matter
(|psi| is unchanged), and the backflow factors multiply orbital values, so they stay
meaningful. A reordering of nearly degenerate
orbitals between geometries is not undone (training repairs it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import api, io
from ..config import Config, ScanConfig, with_molecule, with_settings
from .adaptive import FORCEFIELD, run_adaptive  # noqa: F401  (FORCEFIELD: where it is)
from .dataset import Dataset, new_dataset, read_dataset, same_scan, write_dataset
from .forces import forces_from_records, nuclear_force_observables
from .geometry import generate
from .plot import plot_scan
from .warm import nearest_done, shift_walkers, transfer_parameters

DATASET = "scan.h5"
PLOT = "pes.png"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Shard:
    """Geometries ``k`` with ``k % count == index``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with 0 <= i < n; ValueError otherwise."""
        i, sep, n = text.partition("/")
        try:
            shard = cls(int(i), int(n))
        except ValueError:
            raise ValueError(f"--shard must be i/n, got {text!r}") from None
        if not sep or shard.count < 1 or not 0 <= shard.index < shard.count:
            raise ValueError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
        return shard

    @property
    def whole(self) -> bool:
        return self.count == 1

    def owns(self, k: int) -> bool:
        return k % self.count == self.index

    def suffix(self) -> str:
        return "" if self.whole else f".shard-{self.index}-of-{self.count}"


def dataset_path(scan_dir: Path, shard: Shard) -> Path:
    return scan_dir / (Path(DATASET).stem + shard.suffix() + ".h5")


def lock_name(shard: Shard) -> str:
    return Path(DATASET).stem + shard.suffix() + ".lock"


def plot_path(scan_dir: Path, shard: Shard) -> Path:
    return scan_dir / (Path(PLOT).stem + shard.suffix() + ".png")


def geometry_dir(scan_dir: Path, k: int) -> Path:
    return scan_dir / f"geom-{k:04d}"


def scan_directory(config: Config, out_dir: str | Path | None) -> Path:
    return Path(out_dir) if out_dir is not None else Path("runs") / f"{config.name}-scan"


def geometry_config(config: Config, coords: np.ndarray, k: int, steps: int) -> Config:
    """The run of geometry ``k``: the scan's input with these nuclei (bohr), no [scan],
    the reference energy ``scan.reference[k]`` if given, ``train.steps = steps``."""
    source = f"{config.source or config.name} geometry {k}"
    reference = config.scan.reference
    energy = float(reference[k]) if reference is not None and k < len(reference) else None
    data = {n: v for n, v in config.data.items() if n not in ("scan", "reference_energy")}
    single = dataclasses.replace(
        config, scan=ScanConfig(), reference_energy=None, source=None, data=data
    )
    single = with_molecule(single, config.system.molecule.with_coords(coords), source)
    name = f"{config.name}-{k:04d}"
    single = with_settings(single, reference_energy=energy, name=name, source=source)
    return with_settings(single, "train", steps=steps, source=source)


# The geometry this process finished last, by its index: its result, from which the next
# geometry warm-starts without reading its checkpoint back (at most one entry).
Finished = dict[int, api.RunResult]


def _warm_start(
    config: Config,
    data: Dataset,
    source: int,
    source_dir: Path,
    k: int,
    neighbour: api.RunResult | None,
):
    """``initial`` of geometry ``k``: the parameters and walkers of geometry ``source``,
    from its result ``neighbour`` where this process has it, else from its checkpoint in
    ``source_dir``."""
    old, new = data.positions[source], data.positions[k]

    def initial(prepared: api.Run) -> tuple[Any, np.ndarray]:
        import jax

        if neighbour is not None:
            params, walkers = neighbour.trained.params, neighbour.trained.walkers
        else:
            params, walkers = api.trained_state(prepared, source_dir)
        key = jax.random.PRNGKey(prepared.config.train.seed)
        fresh = prepared.ansatz.init(key)
        old_fresh = None
        if isinstance(fresh, dict) and "ci" in fresh:  # the neighbour's CASSCF expansion
            if neighbour is not None:
                old_run = neighbour.run
            else:
                old_config = geometry_config(config, old, source, 1)
                old_run = api.prepare_stored(old_config, source_dir, same_ansatz=False)
            old_fresh = old_run.ansatz.init(key)
        walkers = shift_walkers(np.asarray(walkers, np.float64), old, new)
        return transfer_parameters(params, fresh, old_fresh), walkers

    return initial


def open_dataset(
    config: Config, text: str, scan_dir: Path, shard: Shard, training: str | None = None
) -> Dataset:
    """The shard's dataset: read back (same geometries required) or created pending;
    ``training``: its ``train`` attribute (default ``scan.train``)."""
    training = training or config.scan.train
    coords, labels = generate(config.system.molecule, config.scan, config.system.basis)
    reference = config.scan.reference
    if reference is not None and len(reference) != len(coords):
        raise api.RunError(
            f"{config.source or config.name}: scan.reference: {len(reference)} energies "
            f"for {len(coords)} geometries"
        )
    fresh = new_dataset(
        config.system.molecule.atomic_numbers.astype(np.int64),  # Z, also for ECP atoms
        coords,
        labels,
        {
            "name": config.name,
            "input_toml": text,
            "version": api.__version__,
            "kind": config.scan.kind,
            "train": training,
            "shard": "" if shard.whole else f"{shard.index}/{shard.count}",
            "ecp": _ecp_label(config.system.molecule),
            "selection_settings": _selection_settings(config.scan),
        },
        forces=config.scan.forces,
        ccsd_t=config.scan.ccsd_t,
        reference=None if reference is None else np.asarray(reference),
        adaptive=config.scan.kind == "adaptive",
        thermal=config.scan.kind == "thermal",
    )
    path = dataset_path(scan_dir, shard)
    if not path.exists():
        scan_dir.mkdir(parents=True, exist_ok=True)
        write_dataset(path, fresh)
        return fresh
    data = read_dataset(path)
    trained = str(data.attrs.get("train", "independent"))
    if trained != training:  # its geometries' directories hold the other mode's runs
        what = lambda t: "--from" if t == "from-shared" else f"scan.train = {t!r}"  # noqa: E731
        raise api.RunError(
            f"{path} holds a scan with {what(trained)}, this one has {what(training)}; use "
            "--out DIR"
        )
    same_ecp = str(data.attrs.get("ecp", "")) == fresh.attrs["ecp"]
    grown = same_scan(data, fresh, prefix=config.scan.kind == "thermal")  # rounds append
    if not grown or set(data.columns) != set(fresh.columns) or not same_ecp:
        raise api.RunError(
            f"{path} holds another scan (other geometries or settings); use --out DIR"
        )
    stored = json.loads(str(data.attrs.get("selection_settings", "{}")) or "{}")
    now = json.loads(fresh.attrs["selection_settings"])
    changed = [f"{k} = {v!r} (was {stored[k]!r})" for k, v in now.items() if stored.get(k, v) != v]
    if changed:  # rows chosen by other rules would mix
        raise api.RunError(
            f"{path} holds a scan whose rounds chose with other settings: {', '.join(changed)}; "
            "use --out DIR"
        )
    return data


def _selection_settings(scan: Any) -> str:
    """The keys that decide from what a thermal scan's rounds choose, as JSON (``{}`` for
    other kinds; ``budget`` and ``target`` may change, to go on or stop earlier)."""
    keys = ()
    if scan.kind == "thermal":
        keys = ("temperature", "method", "candidates", "seed", "equilibration", "stride")
        keys += ("flow_steps", "batch")
    return json.dumps({k: getattr(scan, k) for k in keys})


def _ecp_label(molecule: Any) -> str:
    """``"O:ccecp:2"``-style ECP per element and core electrons ("" all-electron): a scan
    directory's energies are valence totals of exactly these potentials."""
    cores = dict(zip(molecule.symbols, molecule.core, strict=True))
    return ",".join(f"{s}:{n}:{cores[s]}" for s, n in molecule.ecp)


def _run_geometry(
    config: Config,
    data: Dataset,
    k: int,
    scan_dir: Path,
    shard: Shard,
    cold: bool,
    progress,
    finished: Finished,
) -> dict[str, Any]:
    """Train and evaluate geometry ``k``; returns the dataset values of its row, and keeps
    its result in ``finished`` (in place of the one before).

    ``scan.steps`` trains a geometry warm-started from a finished one; the first geometry,
    ``--cold`` ones and an adaptive scan's initial spread (whose nearest finished geometry
    is far away: H2 at 4.0 bohr warm from 2.5 kept +2.1 mHa after 50 steps) train
    ``train.steps``."""
    scan = config.scan
    source = None if cold else nearest_done(data, k, shard)
    spread = (
        scan.kind == "adaptive"
        and data.columns["selection"][k] >= 0
        and bool(np.isnan(data.columns["selection_std"][k]))
    )
    warm = source is not None and not spread
    steps = (scan.steps or config.train.steps) if warm else config.train.steps
    coords = data.positions[k]
    run_dir = geometry_dir(scan_dir, k)
    cfg = geometry_config(config, coords, k, steps)
    initial = None
    if source is not None:
        source_dir = geometry_dir(scan_dir, source)
        neighbour = finished.get(source)
        initial = _warm_start(config, data, source, source_dir, k, neighbour)
    warm_from = -1 if source is None else source
    return geometry_row(config, cfg, k, run_dir, progress, finished, initial, warm_from)


def geometry_row(
    config: Config,
    cfg: Config,
    k: int,
    run_dir: Path,
    progress: api.Progress | None,
    finished: Finished,
    initial: Any = None,
    warm_from: int = -1,
) -> dict[str, Any]:
    """Run geometry ``k`` (its config ``cfg``) in ``run_dir``, from its checkpoint if it
    has one, else fresh (``initial``: a warm start): training, the evaluation with forces,
    the dataset values of its row. Keeps its result in ``finished``."""
    scan, coords = config.scan, cfg.system.molecule.coords
    observables = nuclear_force_observables if scan.forces else None
    resume = any((run_dir / n).exists() for n in (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT))
    t0 = time.perf_counter()
    result = api.run(
        cfg,
        run_dir,
        resume=resume,
        progress=progress,
        initial=initial,
        observables=observables,
        keep_compiled=True,
    )
    finished.clear()
    finished[k] = result
    evaluated = result.evaluated
    row: dict[str, Any] = {
        "energy": evaluated.energy,
        "energy_err": evaluated.energy_err,
        "variance": evaluated.variance,
        "hf_energy": result.run.scf.energy,
        "steps": result.trained.steps,
        "warm_from": warm_from,
    }
    if scan.forces:
        row["forces"], row["forces_err"] = forces_from_records(
            evaluated.records, config.system.molecule.charges, coords, scan.zero_bias
        )
    if scan.ccsd_t:
        from ..scf import ccsd_t_energy

        molecule = config.system.molecule.with_coords(coords)
        row["ccsd_t_energy"] = ccsd_t_energy(molecule, config.system.basis)
    row["wall_time"] = time.perf_counter() - t0
    return row


def run_scan(
    config: Config,
    text: str,
    out_dir: str | Path | None = None,
    shard: Shard = Shard(),
    cold: bool = False,
    progress: api.Progress | None = None,
    log: Log | None = None,
    shared_from: str | Path | None = None,
) -> Dataset:
    """Run (or resume) every geometry of this shard; returns its dataset.

    Finished rows are skipped, failed and interrupted ones run again (from their
    checkpoints); an adaptive scan (:func:`.adaptive.run_adaptive`) and a thermal one
    (:func:`.thermal_scan.run_thermal`) resume an interrupted row and leave failed ones. A
    geometry that fails is marked failed with its message and the scan goes on;
    :class:`nnqmc.api.Interrupted` leaves the row ``running`` and is raised.
    ``shared_from``: a shared scan's directory, whose trained model each geometry starts
    from and fine-tunes (:mod:`nnqmc.pes.shared_from`).
    """
    from .shared_from import check_scan_options

    if config.scan.kind is None:
        raise api.RunError(f"{config.source or config.name}: scan: missing section [scan]")
    check_scan_options(config, shard.whole, cold, shared_from)
    scan_dir = scan_directory(config, out_dir)
    name = lock_name(shard)
    try:
        scan_dir.mkdir(parents=True, exist_ok=True)
        for message in io.acquire_lock(scan_dir, name):
            (log or print)(f"warning: {message}")
    except io.LockedError as err:
        raise api.RunError(f"{err} (another nnqmc scan of this shard)") from None
    except OSError as err:
        raise api.RunError(f"cannot write {scan_dir}: {err.strerror or err}") from None
    try:
        return _run_shard(config, text, scan_dir, shard, cold, progress, log, shared_from)
    finally:
        io.release_lock(scan_dir, name)
        api.release_compiled()  # the geometries' shared programs


def _run_shard(
    config: Config,
    text: str,
    scan_dir: Path,
    shard: Shard,
    cold: bool,
    progress: api.Progress | None,
    log: Log | None,
    source: str | Path | None,
) -> Dataset:
    from .shared_from import FROM_SHARED, SharedModel, from_shared

    if source is not None:  # bad --from: one line before anything is written
        SharedModel.open(source, DATASET, config.system.molecule.atomic_numbers)
    data = open_dataset(config, text, scan_dir, shard, source and FROM_SHARED)
    log = log or (lambda message: None)
    finished: Finished = {}
    start, steps = None, config.scan.fine_tune_steps
    if source is not None:  # each geometry from the shared model in ``source``
        dirs = {k: geometry_dir(scan_dir, k) for k in range(data.n) if shard.owns(k)}
        configure = lambda k: geometry_config(config, data.positions[k], k, steps)  # noqa: E731
        path = dataset_path(scan_dir, shard)
        start = from_shared(source, DATASET, data, path, dirs, configure, log)

    def row(k: int) -> dict[str, Any]:
        if start is None:
            return _run_geometry(config, data, k, scan_dir, shard, cold, progress, finished)
        start(k, progress)
        cfg = geometry_config(config, data.positions[k], k, steps)
        return geometry_row(config, cfg, k, geometry_dir(scan_dir, k), progress, finished)

    def label(k: int, **selection: Any) -> None:  # run row k, record it and its selection
        _run_row(data, k, scan_dir, shard, log, lambda: row(k), **selection)

    if config.scan.kind == "adaptive":
        run_adaptive(config.scan, data, scan_dir, log, label)
    elif config.scan.kind == "thermal":
        from .thermal_scan import run_thermal

        save = lambda: write_dataset(dataset_path(scan_dir, shard), data)  # noqa: E731
        run_thermal(config.scan, data, config.system.molecule.coords, scan_dir, save, log, label)
    elif config.scan.train == "shared" and source is None:
        _run_shared(config, data, scan_dir, progress, log)
    else:
        mine = [k for k in range(data.n) if shard.owns(k)]
        for number, k in enumerate(mine, start=1):
            if data.status(k) != "done":
                log(f"geometry {k} ({number} of {len(mine)} in this shard)")
                _run_row(data, k, scan_dir, shard, log, lambda k=k: row(k))
    plot_scan(plot_path(scan_dir, shard), data)
    return data


def _run_shared(
    config: Config, data: Dataset, scan_dir: Path, progress: api.Progress | None, log: Log
) -> None:
    """The shared training of all geometries (:mod:`nnqmc.pes.shared`), then each
    unfinished geometry's fine-tuning and evaluation from its end."""
    from .shared import SHARED_DIR, check_steps, hand_off, prepare_shared, train_shared

    scan, steps = config.scan, config.train.steps
    per_step = scan.geometries_per_step or data.n
    check_steps(data.n, per_step, steps)
    configs = [geometry_config(config, data.positions[k], k, steps) for k in range(data.n)]
    shared_dir = scan_dir / SHARED_DIR
    resume = any((shared_dir / n).exists() for n in (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT))
    runs = prepare_shared(configs, shared_dir, resume)
    log(
        f"shared training: {steps} steps of {min(per_step, data.n)} of {data.n} geometries "
        f"({scan.shared_kernel} kernel)"
    )
    with api.stop_on_signals() as stop:
        shared = train_shared(
            runs, shared_dir, per_step, resume, progress, stop, scan.shared_kernel
        )
    handed = [hand_off(shared, k, runs[k], geometry_dir(scan_dir, k)) for k in range(data.n)]
    stale = [k for k, (_, anew) in enumerate(handed) if anew and data.status(k) == "done"]
    if stale:  # finished from an earlier end of the shared training (train.steps raised)
        log(
            f"geometries {stale}: redone from shared step {shared.steps} (their rows came "
            "from an earlier end of the shared training)"
        )
        for k in stale:
            data.set_row(k, status="pending")
        write_dataset(dataset_path(scan_dir, Shard()), data)
    finished: Finished = {}
    for k in range(data.n):
        if data.status(k) == "done":
            continue
        run_dir, own = geometry_dir(scan_dir, k), handed[k][0]
        cfg = geometry_config(config, data.positions[k], k, own + scan.fine_tune_steps)
        log(f"geometry {k} ({k + 1} of {data.n}): {scan.fine_tune_steps} fine-tune steps")
        run = lambda k=k, cfg=cfg, d=run_dir: geometry_row(  # noqa: E731
            config, cfg, k, d, progress, finished
        )
        _run_row(data, k, scan_dir, Shard(), log, run)


def _run_row(
    data: Dataset,
    k: int,
    scan_dir: Path,
    shard: Shard,
    log: Log,
    run: Callable[[], dict[str, Any]],
    **selection: Any,
) -> None:
    """Run geometry ``k`` (``run()``: its row's values) and write its row (done or failed)
    to the dataset file."""
    path = dataset_path(scan_dir, shard)
    data.set_row(k, status="running", message="", **selection)
    write_dataset(path, data)
    try:
        row = run()
    except api.RunError as err:
        data.set_row(k, status="failed", message=str(err))
        write_dataset(path, data)
        log(f"geometry {k} failed: {err}")
        return
    data.set_row(k, **row, status="done")
    write_dataset(path, data)
    plot_scan(plot_path(scan_dir, shard), data)
    log(
        f"geometry {k}: E = {row['energy']:.6f} ± {row['energy_err']:.6f} Ha "
        f"({row['steps']} steps, {row['wall_time']:.0f} s)"
    )
