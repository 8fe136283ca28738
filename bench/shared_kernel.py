"""Seconds per shared training step with each SPRING kernel (issue 32).

    python bench/shared_kernel.py systems/h2_scan_shared.toml [--steps 30]
        [--kernels joint per_geometry] [--set section.key=value ...]

Prepares the scan's geometries for a shared training (``scan.train = "shared"``, as
``nnqmc scan`` does) and trains ``--steps`` shared steps with each kernel, one after the
other in this process, each in its own temporary directory. A step's time is the
difference of the training log's ``wall_time``; the first (with every geometry's burn-in,
tracing and compiling, which the second kernel partly finds done) is left out, the median
of the rest is reported. Run it on an idle machine. The last line printed is a JSON
object: per kernel, ``s_per_step`` and ``start_s`` (to the end of the first step);
``rows``, the rows of one step (geometries per step x walkers). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from nnqmc.config import load_config
from nnqmc.pes.geometry import generate
from nnqmc.pes.scan import geometry_config
from nnqmc.pes.shared import prepare_shared, train_shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kernels", nargs="+", default=["joint", "per_geometry"])
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = parser.parse_args()
    config = load_config(args.config, [*args.overrides, f"train.steps={args.steps}"])
    positions, _ = generate(config.system.molecule, config.scan, config.system.basis)
    per_step = min(config.scan.geometries_per_step or len(positions), len(positions))
    configs = [geometry_config(config, p, k, args.steps) for k, p in enumerate(positions)]
    out: dict = {"rows": per_step * config.train.walkers, "geometries": len(positions)}
    for kernel in args.kernels:
        with tempfile.TemporaryDirectory() as tmp:
            runs = prepare_shared(configs, Path(tmp), resume=False)
            result = train_shared(runs, Path(tmp), per_step, kernel=kernel)
        wall = np.diff(np.asarray(result.history["wall_time"], np.float64), prepend=0.0)
        out[kernel] = {
            "s_per_step": float(np.median(wall[1:])),
            "start_s": float(wall[0]),
            "last_energy": [float(e) for e in result.history["energy"][-1]],
        }
        print(kernel, json.dumps(out[kernel]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
