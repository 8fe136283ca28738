"""``nnqmc run | eval | bench``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnqmc", description="Neural-network VMC")
    sub = parser.add_subparsers(dest="command", required=True)
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
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    return parser


def _fail(message: str) -> int:
    print(f"nnqmc: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .api import RunError, run
    from .config import ConfigError, load_config

    try:
        config = load_config(args.file, args.set)
    except ConfigError as err:
        return _fail(str(err))
    try:
        result = run(config, args.out, resume=args.resume, progress=ProgressPrinter())
    except RunError as err:
        return _fail(str(err))
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
