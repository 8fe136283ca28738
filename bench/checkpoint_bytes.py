"""Bytes the run loop writes (checkpoints and the per-step log) against the number of steps
(issue 31: a checkpoint holds the state, not the history, so they grow linearly).

    python bench/checkpoint_bytes.py [--steps 2000 20000] [--every 100] [--walkers 16]

Runs :class:`nnqmc.driver.Driver` with a cheap fake step (a few floats per row; the state:
the walkers of an H2 run of ``--walkers`` walkers) for each number of steps in a new
directory, checkpointing every ``--every`` steps, and counts the bytes the process writes
(Linux's ``/proc/self/io``, ``wchar``). The last line printed is a JSON object with the bytes
and ``ratio`` = bytes of the last / bytes of the first; the issue asks for at most 12 for
2 000 against 20 000 steps. Not run by CI (tests/test_driver.py checks 200 against 2 000).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nnqmc.driver import Driver


def bytes_written() -> int:
    """Bytes this process has written so far."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def fake_step(state: dict, k: int) -> tuple[dict, dict]:
    """The walkers moved a little; a row of energy and acceptance."""
    walkers = state["walkers"] + 0.01 * np.sin(k + np.arange(state["walkers"].size)).reshape(
        state["walkers"].shape
    )
    return {"walkers": walkers}, {"energy": float(np.mean(walkers)), "acceptance": 0.5}


def run(run_dir: Path, steps: int, every: int, walkers: int) -> int:
    """Bytes written by a fresh fake phase of ``steps`` steps in ``run_dir``."""
    run_dir.mkdir(parents=True)
    before = bytes_written()
    drive = Driver(run_dir, "eval")
    drive.resume({"walkers": np.zeros((walkers, 2, 3))})
    start = {"walkers": np.zeros((walkers, 2, 3))}
    drive.run(start, fake_step, dict, total=steps, every=every, label="step")
    return bytes_written() - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--walkers", type=int, default=16)
    args = p.parse_args()
    written, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="checkpoint_bytes_") as work:
        for steps in args.steps:
            t0 = time.perf_counter()
            written.append(run(Path(work) / str(steps), steps, args.every, args.walkers))
            seconds.append(time.perf_counter() - t0)
            print(f"{steps:>7} steps: {written[-1]:>12,} bytes  ({seconds[-1]:.1f} s)")
    ratio = written[-1] / written[0]
    print(f"ratio {args.steps[-1]} / {args.steps[0]} steps: {ratio:.2f}")
    result = {"steps": args.steps, "every": args.every, "bytes": written, "ratio": ratio}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
