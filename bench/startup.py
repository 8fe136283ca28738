"""Seconds from ``nnqmc run`` to its first training step, without and with the persistent
compilation cache (issue 20).

    python bench/startup.py systems/lih.toml [--repeat 2] [--set section.key=value ...]

Runs the input ``--repeat`` times one after another, each in a new process and run
directory, all sharing one new cache directory (the first run fills it), and times each
until its progress output shows training step 1 (imports, Hartree–Fock, compilation,
burn-in and one step). The runs stop after 1 training and 2 evaluation steps. The last line
printed is a JSON object with the times and ``speedup`` = first / median of the others.
Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds_to_first_step(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        first = None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.write(line)
            if first is None and "train" in line and " 1/" in line:
                first = time.perf_counter() - t0
        proc.wait()
    if proc.returncode != 0 or first is None:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup_"))
    env = {**os.environ, "NNQMC_COMPILATION_CACHE": str(work / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    times = []
    for k in range(args.repeat):
        cmd = [sys.executable, "-m", "nnqmc.cli", "run", args.config, "--out", str(work / f"r{k}")]
        cmd += ["--set", "train.steps=1", "eval.steps=2", *args.set]
        times.append(seconds_to_first_step(cmd, env, work / f"r{k}.log"))
    later = sorted(times[1:])
    median = later[len(later) // 2] if later else float("nan")
    result = {
        "config": args.config,
        "set": args.set,
        "seconds_to_first_step": [round(t, 1) for t in times],
        "speedup": round(times[0] / median, 2) if later else None,
        "work": str(work),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
