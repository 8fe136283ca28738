"""``nnqmc run | eval | bench | scan | merge | export | bench-scan | fit | sample``:
argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .cli_sample import add_sample, run_sample
from .report import ecp_line, format_result

EXIT_USAGE = 2


class ProgressPrinter:
    """One progress line per phase, refreshed at most every ``interval`` seconds. The ETA
    is the time per step since the phase's first report (in this process: a resumed phase
    starts late, and its first step carries the compilation) times the steps left."""

    def __init__(self, stream=sys.stderr, interval: float = 2.0) -> None:
        self.stream, self.interval = stream, interval
        self.phase, self.t0, self.last, self.first, self.step = None, 0.0, 0.0, 0, 0

    def __call__(self, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        now = time.perf_counter()
        if phase != self.phase or step <= self.step:  # a new phase, or the same anew
            self.phase, self.t0, self.last, self.first = phase, now, 0.0, step
        self.step = step
        if now - self.last < self.interval and step != total:
            return
        self.last = now
        done = step - self.first
        eta = (now - self.t0) / done * (total - step) if done > 0 else 0.0
        parts = [f"{phase:>7} {step:>6}/{total}"]
        if "energy" in stats:
            parts.append(f"E = {stats['energy']:.5f}")
        if "variance" in stats:
            parts.append(f"var = {stats['variance']:.4f}")
        if "acceptance" in stats:
            parts.append(f"acc = {stats['acceptance']:.2f}")
        parts.append(f"ETA {_clock(eta)}")
        print("  ".join(parts), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line ``nnqmc: error: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"nnqmc: error: {' '.join(message.split())}\n")


def _add_distributed(parser: argparse.ArgumentParser) -> None:
    multi = parser.add_argument_group(
        "several hosts",
        "join processes with jax.distributed (also from NNQMC_COORDINATOR, "
        "NNQMC_NUM_PROCESSES, NNQMC_PROCESS_ID, or a multi-task SLURM srun step)",
    )
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    multi.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnqmc", description="Neural-network VMC")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train and evaluate the system of a TOML file")
    run.add_argument("file", help="input TOML file")
    run.add_argument("--out", help="run directory (default runs/<name>)")
    run.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. train.steps=400",
    )
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    again.add_argument(
        "--force", action="store_true", help="start over, deleting the run already in --out"
    )
    _add_distributed(run)
    evaluate = sub.add_parser(
        "eval", help="continue or extend the evaluation of a trained run directory"
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    evaluate.add_argument(
        "--steps", type=int, metavar="N", help="evaluation steps in all (default: eval.steps)"
    )
    _add_distributed(evaluate)
    diffuse = sub.add_parser(
        "dmc", help="run, continue or extend fixed-node DMC on a trained run directory"
    )
    diffuse.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    diffuse.add_argument(
        "--steps", type=int, metavar="N", help="steps per time step (default: dmc.steps)"
    )
    diffuse.add_argument(
        "--timestep",
        type=float,
        nargs="+",
        metavar="TAU",
        help="time step(s) in 1/Ha; several: extrapolate to 0 (default: dmc.timestep)",
    )
    _add_distributed(diffuse)
    bench = sub.add_parser("bench", help="time training steps and local energies")
    bench.add_argument("file", help="input TOML file")
    bench.add_argument("--walkers", type=int, help="walkers (default: train.walkers)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    bench.add_argument(
        "--devices",
        type=_int_list,
        metavar="N[,N...]",
        help="device counts to time (default 1, 2, 4, ..., all local devices)",
    )
    bench.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    bench.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    bench.add_argument(
        "--laplacians",
        action="store_true",
        help="also time the local energies with every Laplacian engine (forward, folx, exact)",
    )
    _add_pes(sub)
    _add_fit(sub)
    add_sample(sub)
    return parser


def _add_fit(sub) -> None:
    fit = sub.add_parser(
        "fit", help="fit a kernel force field (GDML form, GP noise) to a scan dataset"
    )
    fit.add_argument("dataset", metavar="DATASET.h5", help="scan dataset (finished rows)")
    fit.add_argument("--out", metavar="MODEL", help="model file (default DATASET.fit.h5)")
    fit.add_argument(
        "--noise",
        choices=("per-point", "uniform"),
        default="per-point",
        help="noise variances: each label's error bar squared, or their mean (per-point)",
    )
    fit.add_argument(
        "--use",
        choices=("auto", "both", "energy", "forces"),
        default="auto",
        help="labels to fit; forces: GDML, energy level from the energies (auto: all present)",
    )
    fit.add_argument(
        "--select",
        choices=("lml", "cv"),
        default="lml",
        help="length scale of maximum log marginal likelihood, or of least 5-fold "
        "cross-validation error (lml)",
    )
    fit.add_argument("--sigma", type=float, metavar="S", help="fixed length scale (1/bohr)")
    fit.add_argument("--valid", type=float, default=0.2, metavar="FRACTION", help="held out (0.2)")
    fit.add_argument("--seed", type=int, default=0, metavar="N", help="of the split (0)")
    fit.add_argument(
        "--no-symmetry",
        action="store_true",
        help="no averaging over permutations of identical atoms",
    )


def _fit(args) -> int:
    from .fit import FitError, FitOptions, fit_dataset, save_model
    from .fit.report import format_report
    from .pes import DatasetError, read_dataset

    if not Path(args.dataset).is_file():
        return _fail(f"{args.dataset}: no such file")
    out = args.out or str(Path(args.dataset).with_suffix(".fit.h5"))
    if not Path(out).resolve().parent.is_dir():
        return _fail(f"{out}: the directory {Path(out).parent} does not exist")
    try:
        options = FitOptions(
            noise=args.noise,
            use=args.use,
            select=args.select,
            sigma=args.sigma,
            symmetric=not args.no_symmetry,
        )
        report = fit_dataset(read_dataset(args.dataset), options, args.valid, args.seed)
        save_model(out, report.model)
    except FitError as err:
        return _fail(f"{args.dataset}: {err}")
    except DatasetError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))
    print(format_report(report, out))
    return 0


def _add_pes(sub) -> None:
    scan = sub.add_parser("scan", help="a PES dataset: run every geometry of [scan]")
    scan.add_argument("file", help="input TOML file with a [scan] section")
    scan.add_argument("--out", help="scan directory (default runs/<name>-scan)")
    scan.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    scan.add_argument("--shard", default="0/1", metavar="I/N", help="run geometries k %% N == I")
    scan.add_argument(
        "--cold", action="store_true", help="no warm start: every geometry from scratch"
    )
    scan.add_argument(
        "--from",
        dest="shared_from",
        metavar="SHARED_DIR",
        help="start every geometry from the trained model of a shared scan (its --out "
        "directory) and fine-tune it scan.fine_tune_steps steps",
    )
    merge = sub.add_parser("merge", help="join the shard datasets of one scan")
    merge.add_argument("out", metavar="OUT.h5", help="merged dataset to write")
    merge.add_argument("shards", nargs="+", metavar="SHARD.h5", help="shard datasets")
    export = sub.add_parser("export", help="export a scan dataset for force-field training")
    export.add_argument("dataset", metavar="DATASET.h5", help="scan dataset")
    export.add_argument(
        "--format",
        required=True,
        choices=("extxyz", "npz", "db"),
        help="extxyz (ASE, MACE, NequIP, GAP), npz (sGDML) or db (SchNetPack); docs/forcefields.md",
    )
    export.add_argument("--out", metavar="PATH", help="output file (default DATASET.FORMAT)")
    study = sub.add_parser(
        "bench-scan", help="training steps a scan needs to reach a target, warm against cold"
    )
    study.add_argument("file", help="input TOML file with a [scan] section")
    study.add_argument(
        "--cold", type=_int_list, required=True, metavar="B[,B...]", help="cold step budgets"
    )
    study.add_argument(
        "--warm",
        type=_int_list,
        required=True,
        metavar="B[,B...]",
        help="warm step budgets (every geometry after the first)",
    )
    study.add_argument(
        "--tolerance", type=float, default=1.0, metavar="MHA", help="target error (mHa, 1.0)"
    )
    study.add_argument("--out", help="study directory (default runs/<name>-bench-scan)")
    study.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")


def _scan(args) -> int:
    import shlex

    from .api import Interrupted
    from .config import load_config
    from .pes import Shard, run_scan
    from .pes.scan import dataset_path, scan_directory

    shard = Shard.parse(args.shard)
    config = load_config(args.file, args.set)
    text = Path(args.file).read_text()
    scan_dir = scan_directory(config, args.out)
    log = lambda message: print(f"nnqmc: {message}", file=sys.stderr, flush=True)
    try:
        data = run_scan(
            config, text, args.out, shard, args.cold, ProgressPrinter(), log, args.shared_from
        )
    except Interrupted as err:
        how = f"nnqmc scan {shlex.quote(args.file)} --out {shlex.quote(str(scan_dir))}"
        how += f" --shard {args.shard}" if not shard.whole else ""
        how += " --cold" if args.cold else ""
        how += f" --from {shlex.quote(args.shared_from)}" if args.shared_from else ""
        sets = " ".join(shlex.quote(s) for s in args.set)
        how += f" --set {sets}" if sets else ""
        return _interrupted(err, how)
    statuses = [data.status(k) for k in range(data.n) if shard.owns(k)]
    failed = statuses.count("failed")
    print(
        f"{dataset_path(scan_dir, shard)}: {statuses.count('done')} of {len(statuses)} "
        f"geometries done" + (f", {failed} failed (run again to retry)" if failed else "")
    )
    return 1 if failed else 0


def _bench_scan(args) -> int:
    from .config import load_config
    from .pes.study import format_study, warm_start_study

    if args.tolerance <= 0:
        return _fail(f"--tolerance must be positive, got {args.tolerance}")
    config = load_config(args.file, args.set)
    out = args.out or str(Path("runs") / f"{config.name}-bench-scan")
    log = lambda message: print(f"nnqmc: {message}", file=sys.stderr, flush=True)
    text = Path(args.file).read_text()
    result = warm_start_study(
        config, text, out, args.cold, args.warm, 1e-3 * args.tolerance, ProgressPrinter(), log
    )
    print(format_study(result))
    return 0


def _merge(args) -> int:
    from .pes import merge, read_dataset, write_dataset

    merged = merge([read_dataset(p) for p in args.shards])
    write_dataset(args.out, merged)
    done = sum(merged.status(k) == "done" for k in range(merged.n))
    print(f"{args.out}: {done} of {merged.n} geometries done")
    return 0


def _export(args) -> int:
    from .pes import export, read_dataset

    out = args.out or str(Path(args.dataset).with_suffix(f".{args.format}"))
    n = export(read_dataset(args.dataset), args.format, out)
    print(f"{out}: {n} geometries")
    return 0


def _pes(args) -> int:
    from .api import RunError
    from .config import ConfigError
    from .pes import DatasetError, GeometryError

    command = {"scan": _scan, "merge": _merge, "export": _export, "bench-scan": _bench_scan}[
        args.command
    ]
    try:
        return command(args)
    except (ConfigError, RunError, DatasetError, GeometryError, ValueError) as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def _bench(args) -> int:
    import json

    from .api import prepare
    from .bench import benchmark, format_table
    from .config import load_config

    config = load_config(args.file, args.set)
    walkers = args.walkers or config.train.walkers
    if walkers <= 0 or args.steps <= 0:
        return _fail("--walkers and --steps must be positive")
    result = benchmark(prepare(config), walkers, args.steps, args.devices, args.laplacians)
    print(format_table(result))
    if args.json:
        from .io import write_json_atomic

        write_json_atomic(args.json, result)
    else:
        print(json.dumps(result))
    return 0


def _fail(message: str) -> int:
    print(f"nnqmc: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _interrupted(err, how: str) -> int:
    """Where a stopped run is and how to continue it; exit code 128 + signal number."""
    from .parallel import is_main_process

    if is_main_process():
        print(f"nnqmc: {err}", file=sys.stderr)
        print(f"nnqmc: continue with: {how}", file=sys.stderr, flush=True)
    return err.exit_code


def _execute(args) -> int:
    """``run`` or ``eval`` after joining the processes of a distributed run."""
    import shlex

    from .api import Interrupted, RunError, dmc_run, evaluate_run, run, run_directory
    from .config import ConfigError, ECPBasisWarning, load_config
    from .parallel import is_main_process

    progress = ProgressPrinter() if is_main_process() else None
    try:
        if args.command == "eval":
            if args.steps is not None and args.steps < 2:
                return _fail(f"--steps must be >= 2 (an error bar needs two), got {args.steps}")
            how = f"nnqmc eval {shlex.quote(args.run_dir)}"
            if args.steps is not None:
                how += f" --steps {args.steps}"
            result = evaluate_run(args.run_dir, args.steps, progress=progress)
        elif args.command == "dmc":
            if args.steps is not None and args.steps < 2:
                return _fail(f"--steps must be >= 2 (an error bar needs two), got {args.steps}")
            if args.timestep is not None and min(args.timestep) <= 0:
                return _fail(f"--timestep must be positive, got {min(args.timestep):g}")
            how = f"nnqmc dmc {shlex.quote(args.run_dir)}"
            result = dmc_run(args.run_dir, args.steps, args.timestep, progress=progress)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ECPBasisWarning)
                config = load_config(args.file, args.set)
            for warning in caught:
                if issubclass(warning.category, ECPBasisWarning):
                    print(f"nnqmc: warning: {warning.message}", file=sys.stderr, flush=True)
            _print_ecp(config)
            out = run_directory(config, args.out)
            sets = " ".join(shlex.quote(s) for s in args.set)
            how = f"nnqmc run {shlex.quote(args.file)} --out {shlex.quote(str(out))} --resume"
            how += f" --set {sets}" if sets else ""
            result = run(config, args.out, args.resume, progress, force=args.force)
    except (ConfigError, RunError) as err:
        return _fail(str(err))
    except Interrupted as err:
        return _interrupted(err, how)
    if is_main_process():
        print(format_result(result.summary()))
    return 0


def _print_ecp(config) -> None:
    """Which atoms run with which ECP, before the run starts."""
    mol = config.system.molecule if config.system is not None else None
    if mol is None or not mol.ecp:
        return
    names = dict(mol.ecp)
    line = ecp_line(list(mol.symbols), [names.get(s) for s in mol.symbols], list(mol.core))
    print(f"nnqmc: {line} ({mol.n_elec} valence electrons)", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .api import RunError
    from .config import ConfigError

    if args.command == "bench":
        try:
            return _bench(args)
        except (ConfigError, RunError, ValueError) as err:
            return _fail(str(err))
    if args.command == "fit":
        return _fit(args)
    if args.command == "sample":
        return run_sample(args, _fail)
    if args.command in ("scan", "merge", "export", "bench-scan"):
        try:
            return _pes(args)
        except KeyboardInterrupt:
            print("nnqmc: interrupted", file=sys.stderr)
            return 128 + 2
    from .parallel import initialize_distributed

    try:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except (ValueError, RuntimeError) as err:
        return _fail(f"distributed: {err}")
    try:
        return _execute(args)
    except KeyboardInterrupt:  # a second Ctrl-C, during a step
        print("nnqmc: interrupted", file=sys.stderr)
        return 128 + 2


def entry() -> None:
    """The ``nnqmc`` command: once re-executed with huge pages for large allocations where
    that applies (:mod:`nnqmc.hugepages`), then :func:`main`."""
    from .hugepages import reexec_with_hugepages

    reexec_with_hugepages(sys.argv[1:])
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
