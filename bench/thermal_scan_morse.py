"""A thermal scan of H2 with a Morse curve in place of QMC: which geometries it labels, when
it stops, and how well the final fit knows the curve where the Boltzmann weight is.

    python bench/thermal_scan_morse.py [--method md|flow] [--temperature 1000] [--target 2e-4]

Each geometry's "QMC run" returns the Morse energy (D = 0.17 Ha, a = 1/bohr, r0 = 1.4 bohr,
as tests/test_thermal_scan.py) with a 0.1 mHa error bar; everything else is the scan's own
code: the initial HF stencil, the fits, the samplers (MD: 100 candidates, 200 steps dropped,
a frame every 20; flow: 200 candidates, 300 training steps), the choice, the dataset.
Prints each row (bond length, σ and w·n at its choice) and the final fit's error against
the curve: Boltzmann-weighted RMS at T (r² exp(-E/kT)) and the largest on 1.15-1.8 bohr.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from nnqmc.config import load_config
from nnqmc.fit import load_model, predict
from nnqmc.pes import run_scan
from nnqmc.pes import scan as scan_module
from nnqmc.thermal.sample import BOLTZMANN

INPUT = """name = "h2-morse"
[system]
atoms = "H 0 0 0\\nH 0 0 1.4"
unit = "bohr"
basis = "sto-3g"
[scan]
kind = "thermal"
"""
SAMPLERS = {
    "md": "candidates = 100\nequilibration = 200\nstride = 20\n",
    "flow": "candidates = 200\nflow_steps = 300\n",
}


def morse(r: np.ndarray) -> np.ndarray:
    return 0.17 * (1 - np.exp(-1.0 * (r - 1.4))) ** 2 - 1.17


def labelled(config, data, k, scan_dir, shard, cold, progress, finished) -> dict:
    """The Morse energy of row k in place of its QMC run."""
    r = float(np.linalg.norm(data.positions[k, 1] - data.positions[k, 0]))
    return {"energy": float(morse(r)), "energy_err": 1e-4, "steps": 1, "wall_time": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(SAMPLERS), default="md")
    parser.add_argument("--temperature", type=float, default=1000.0)
    parser.add_argument("--target", type=float, default=2e-4)
    parser.add_argument("--budget", type=int, default=12)
    args = parser.parse_args()
    scan_module._run_geometry = labelled
    out = Path(tempfile.mkdtemp())
    text = INPUT + f'method = "{args.method}"\ntemperature = {args.temperature}\n'
    text += f"target = {args.target}\nbudget = {args.budget}\n" + SAMPLERS[args.method]
    (out / "h2.toml").write_text(text)
    config = load_config(out / "h2.toml")
    t0 = time.perf_counter()
    data = run_scan(config, text, out / "scan", log=print)
    wall = time.perf_counter() - t0
    r = np.linalg.norm(data.positions[:, 1] - data.positions[:, 0], axis=1)
    cols = data.columns
    for k in range(data.n):
        std, weight = cols["selection_std"][k] * 1e3, cols["selection_weight"][k]
        chosen = f"σ {std:.3g} mHa, w·n {weight:.3g}"
        print(f"row {k}: {cols['sampler'][k]:8s} r = {r[k]:.3f} bohr, {chosen}")
    grid = np.linspace(0.9, 2.4, 301)
    x = np.zeros((len(grid), 2, 3))
    x[:, 1, 2] = grid
    error = predict(load_model(out / "scan" / "forcefield.h5"), x)[0] - morse(grid)
    p = grid**2 * np.exp(-(morse(grid) - morse(grid).min()) / (BOLTZMANN * args.temperature))
    p /= p.sum()
    inner = (grid > 1.15) & (grid < 1.8)
    print(
        f"{data.n} geometries, {wall:.0f} s; fit error: Boltzmann-weighted RMS "
        f"{np.sqrt(p @ error**2) * 1e3:.3f} mHa, largest on 1.15-1.8 bohr "
        f"{np.abs(error[inner]).max() * 1e3:.3f} mHa"
    )


if __name__ == "__main__":
    main()
