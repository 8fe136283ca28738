"""Energy against wall time for run directories: the curve behind an accuracy claim.

    python bench/curve.py runs/li2_gen runs/li2_paulinet [--reference -14.9954]
        [--window 200] [--at 300,400] [--plot curve.png]

For each run: the mean training energy over windows of ``--window`` steps against the wall
time at the window's end (mHa above the reference, from the run's result.json or
``--reference``), and, with ``--at``, the mean of the last window that ended before each of
those wall times (seconds) — the comparison at equal wall time. The training energies are
correlated and include the not yet converged part, so these are trends; the evaluation's
energy (result.json) is the claim.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np


def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(run_dir / "train.h5", "r") as f:
        energy = np.asarray(f["energy"], dtype=np.float64)
        wall = np.asarray(f["wall_time"], dtype=np.float64)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return energy, wall - wall[0], result


def window_means(energy: np.ndarray, wall: np.ndarray, window: int):
    n = len(energy) // window
    e = energy[: n * window].reshape(n, window)
    means = e.mean(axis=1)
    errors = e.std(axis=1, ddof=1) / np.sqrt(window)  # ignores autocorrelation: a lower bound
    ends = wall[window - 1 : n * window : window]
    return ends, means, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=float)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--at", default="", help="wall times (s), comma-separated")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    at = [float(t) for t in args.at.split(",") if t]
    curves = {}
    for run in args.runs:
        energy, wall, result = load(run)
        ref = args.reference if args.reference is not None else result.get("reference_energy")
        if ref is None:
            raise SystemExit(f"{run}: no reference energy (give --reference)")
        ends, means, errors = window_means(energy, wall, args.window)
        curves[run.name] = (ends, (means - ref) * 1e3)
        print(f"\n{run}  ({len(energy)} steps, {wall[-1]:.0f} s of training)")
        if result:
            print(
                f"  evaluation: E = {result['energy']:.6f} ± {result['energy_err']:.6f} Ha, "
                f"{(result['energy'] - ref) * 1e3:+.2f} mHa, tau = "
                f"{result.get('autocorrelation_time', float('nan')):.2f}, "
                f"wall {result.get('wall_seconds', float('nan')):.0f} s"
            )
        print("  wall (s)   steps    E - E_ref (mHa, window mean)")
        for k, (t, m, s) in enumerate(zip(ends, means, errors, strict=True)):
            print(
                f"  {t:8.0f}  {(k + 1) * args.window:6d}    {(m - ref) * 1e3:+8.2f} ± {s * 1e3:.2f}"
            )
        for t in at:
            done = np.flatnonzero(ends <= t)
            if done.size:
                k = done[-1]
                delta = (means[k] - ref) * 1e3
                print(f"  at {t:.0f} s: {delta:+.2f} mHa (window ending {ends[k]:.0f} s)")
            else:
                print(f"  at {t:.0f} s: no complete window yet")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, (t, d) in curves.items():
            ax.plot(t, d, marker="o", ms=3, label=name)
        ax.axhline(1.6, color="grey", ls="--", lw=0.8, label="chemical accuracy")
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("E − E_ref (mHa), window mean")
        ax.set_yscale("symlog", linthresh=2.0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
