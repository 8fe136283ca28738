"""What a further geometry of a scan costs against a cold single-point run (issue 20).

    python bench/scan_cost.py systems/h2_scan_dense.toml [--geometries 4] [--out DIR]
        [--set section.key=value ...]

1. **Cold single point**: ``nnqmc run`` of the scan's first geometry in a new process,
   with the step budgets of a later geometry (``train.steps = scan.steps``, the same
   evaluation) and the persistent compilation cache switched off: what one more geometry
   costs without a scan, imports, Hartree–Fock, compilation and all.
2. **Scan**: ``nnqmc scan`` of the first ``--geometries`` geometries in one process, with
   the cache on in a new, empty directory (so its first geometry compiles). The cost of
   geometry k > 0 is the wall time between the ends of geometries k - 1 and k, everything
   included (Hartree–Fock, warm start, burn-in, training, evaluation, forces, CCSD(T),
   dataset and plot).
3. The same cold single point again with the cache on and filled by 2.

The last line printed is a JSON object with the times and ``ratio`` = median cost of a
later geometry / cold single point. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, list[float]]:
    """(wall seconds, seconds at which each 'geometry k: E = ...' line appeared)."""
    t0 = time.perf_counter()
    marks = []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.write(line)
            if re.search(r"geometry \d+: E = ", line):
                marks.append(time.perf_counter() - t0)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0, marks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--geometries", type=int, default=4)
    p.add_argument("--out", help="work directory (default: a temporary one)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nnqmc.config import load_config, to_toml
    from nnqmc.pes.geometry import generate
    from nnqmc.pes.scan import geometry_config

    config = load_config(args.config, args.set)
    coords, _ = generate(config.system.molecule, config.scan, config.system.basis)
    n = min(args.geometries, len(coords))
    later_steps = config.scan.steps or config.train.steps
    work = Path(args.out or tempfile.mkdtemp(prefix="scan_cost_"))
    work.mkdir(parents=True, exist_ok=True)

    single = geometry_config(config, coords[0], 0, later_steps)
    (work / "single.toml").write_text(to_toml(single.data))
    data = dict(config.data)
    scan = dict(data["scan"])
    for key in ("linspace", "values"):
        scan.pop(key, None)
    scan["values"] = [float(v) for v in _scan_values(config, n)]
    if "reference" in scan:
        scan["reference"] = list(scan["reference"])[:n]
    data["scan"] = scan
    (work / "scan.toml").write_text(to_toml(data))

    nnqmc = [sys.executable, "-m", "nnqmc.cli"]
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # would override the settings below
    off = {**os.environ, "NNQMC_COMPILATION_CACHE": "off"}
    on = {**os.environ, "NNQMC_COMPILATION_CACHE": str(work / "cache")}
    cold, _ = _timed(
        nnqmc + ["run", str(work / "single.toml"), "--out", str(work / "cold")],
        off,
        work / "cold.log",
    )
    total, marks = _timed(
        nnqmc + ["scan", str(work / "scan.toml"), "--out", str(work / "scan")],
        on,
        work / "scan.log",
    )
    warm_cache, _ = _timed(
        nnqmc + ["run", str(work / "single.toml"), "--out", str(work / "cached")],
        on,
        work / "cached.log",
    )
    later = np.diff(marks)
    result = {
        "config": args.config,
        "set": args.set,
        "geometries": n,
        "later_train_steps": later_steps,
        "eval_steps": config.eval.steps,
        "cold_single_point_s": round(cold, 1),
        "cold_single_point_cached_s": round(warm_cache, 1),
        "scan_total_s": round(total, 1),
        "first_geometry_s": round(marks[0], 1),
        "later_geometry_s": [round(float(x), 1) for x in later],
        "ratio": round(float(np.median(later)) / cold, 3),
        "ratio_to_cached": round(float(np.median(later)) / warm_cache, 3),
        "work": str(work),
    }
    print(json.dumps(result))


def _scan_values(config, n: int) -> list[float]:
    """The first ``n`` values of the scan's coordinate (``values`` or ``linspace``)."""
    scan = config.scan
    if scan.values:
        return list(scan.values)[:n]
    lo, hi, count = scan.linspace
    return list(np.linspace(lo, hi, int(count)))[:n]


if __name__ == "__main__":
    main()
