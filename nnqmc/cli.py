"""``nnqmc run | eval | bench``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_USAGE = 2


class ProgressPrinter:
    """One progress line per phase, refreshed at most every ``interval`` seconds."""

    def __init__(self, stream=sys.stderr, interval: float = 2.0) -> None:
        self.stream, self.interval = stream, interval
        self.phase, self.t0, self.last = None, 0.0, 0.0

    def __call__(self, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        now = time.perf_counter()
        if phase != self.phase:
            self.phase, self.t0, self.last = phase, now, 0.0
        if now - self.last < self.interval and step != total:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / step * (total - step) if step else 0.0
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


def format_result(result: dict[str, Any]) -> str:
    e, err = result["energy"], result["energy_err"]
    lines = [
        f"{result['name']}: E = {e:.6f} ± {err:.6f} Ha  (variance {result['variance']:.4f}, "
        f"{result['steps']} steps, {result['walkers']} walkers, {result['wall_seconds']:.0f} s)",
        f"  {result['hf_method']}/{result['basis']}: {result['hf_energy']:.6f} Ha",
    ]
    ref = result["reference_energy"]
    if ref is not None:
        diff = (e - ref) * 1000
        lines.append(f"  reference: {ref:.6f} Ha   E - E_ref = {diff:+.2f} ± {err * 1000:.2f} mHa")
        if result["correlation_fraction"] is not None:
            lines.append(
                f"  correlation energy recovered: {100 * result['correlation_fraction']:.1f} %"
            )
    return "\n".join(lines)


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
    return parser


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
    result = benchmark(prepare(config), walkers, args.steps, args.devices)
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

    from .api import Interrupted, RunError, evaluate_run, run, run_directory
    from .config import ConfigError, load_config
    from .parallel import is_main_process

    progress = ProgressPrinter() if is_main_process() else None
    try:
        if args.command == "eval":
            if args.steps is not None and args.steps <= 0:
                return _fail(f"--steps must be positive, got {args.steps}")
            how = f"nnqmc eval {shlex.quote(args.run_dir)}"
            if args.steps is not None:
                how += f" --steps {args.steps}"
            result = evaluate_run(args.run_dir, args.steps, progress=progress)
        else:
            config = load_config(args.file, args.set)
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
        print(format_result(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .api import RunError
    from .config import ConfigError

    if args.command == "bench":
        try:
            return _bench(args)
        except (ConfigError, RunError, ValueError) as err:
            return _fail(str(err))
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


if __name__ == "__main__":
    sys.exit(main())
