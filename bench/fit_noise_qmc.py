"""Per-point against uniform noise on real QMC data: does using each energy's own error bar
give a force field closer to the exact curve?

A scan's error bars are nearly equal when every geometry is evaluated equally long. Here
each geometry's energy is taken either from its whole evaluation (``eval.steps``) or from
only its first ``--short`` evaluation steps (with its blocking error bar over those steps),
so that half of the labels are several times noisier, as they are when a dataset joins
runs of different lengths. Both fits (``nnqmc.fit``, energies only) see the same labels;
the score is held out: each interior geometry is predicted by a fit to all the others
(leave one out; the ends stay in, or the score would be extrapolation), and the RMS and
largest distance of those predictions to the exact energies are reported. Each scan
directory (``scan.reference`` required) is one seed; ``--splits`` random choices of which
half is short are averaged.

    nnqmc scan systems/h2_scan_fine.toml --out runs/h2_fine
    nnqmc scan systems/h2_scan_fine.toml --out runs/h2_fine_s1 --set train.seed=1
    python bench/fit_noise_qmc.py runs/h2_fine runs/h2_fine_s1 --short 5

(``systems/h2_scan_dense.toml``, half as dense, works the same way; there interpolation
error dominates the score; docs/pes.md.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

from nnqmc.estimate import blocking_error
from nnqmc.fit import FitOptions, TrainingSet, fit, predict
from nnqmc.pes import read_dataset


def step_energies(scan_dir: Path, k: int) -> np.ndarray:
    """The per-step evaluation energies of geometry ``k`` (hartree)."""
    with h5py.File(scan_dir / f"geom-{k:04d}" / "eval.h5", "r") as f:
        return np.asarray(f["energy"])


def labels(series: list[np.ndarray], short: np.ndarray, steps: int) -> tuple[np.ndarray, ...]:
    """Energy and error bar per geometry: the first ``steps`` steps where ``short``, else all."""
    energy, error = [], []
    for x, cut in zip(series, short, strict=True):
        x = x[:steps] if cut else x
        energy.append(float(np.mean(x)))
        error.append(blocking_error(x)[1])
    return np.array(energy), np.array(error)


def scores(data, energy: np.ndarray, error: np.ndarray, noise: str) -> tuple[float, float]:
    """(RMS, max) over the interior geometries of |E_fit(k) - E_exact(k)| (hartree), each
    E_fit(k) from a fit that has not seen geometry k (leave one out: held-out errors; the
    ends of the scan are always kept, as leaving them out would measure extrapolation)."""
    diff = []
    low, high = data.labels.min(axis=0), data.labels.max(axis=0)
    interior = np.flatnonzero(np.all((data.labels > low) & (data.labels < high), axis=1))
    for k in interior:
        keep = np.arange(data.n) != k
        train = TrainingSet(
            data.atomic_numbers, data.positions[keep], energy=energy[keep], energy_err=error[keep]
        )
        model = fit(train, FitOptions(noise=noise, use="energy"))
        predicted = predict(model, data.positions[k : k + 1])[0][0]
        diff.append(predicted - data.columns["reference_energy"][k])
    diff = np.array(diff)
    return float(np.sqrt(np.mean(diff**2))), float(np.max(np.abs(diff)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+", help="scan directories (one seed each)")
    parser.add_argument("--short", type=int, default=15, help="steps of a short label")
    parser.add_argument("--splits", type=int, default=10, help="random short/long halves")
    args = parser.parse_args()
    for scan in args.scans:
        scan_dir = Path(scan)
        data = read_dataset(scan_dir / "scan.h5")
        series = [step_energies(scan_dir, k) for k in range(data.n)]
        rng = np.random.default_rng(0)
        results = {"per-point": [], "uniform": []}
        ratio = []
        for _ in range(args.splits):
            short = np.zeros(data.n, bool)
            short[rng.permutation(data.n)[: data.n // 2]] = True
            energy, error = labels(series, short, args.short)
            ratio.append(np.mean(error[short]) / np.mean(error[~short]))
            for noise in results:
                results[noise].append(scores(data, energy, error, noise))
        print(
            f"{scan}: {data.n} geometries, {args.splits} splits, short labels' error bars "
            f"{np.mean(ratio):.1f}x the long ones"
        )
        for noise, values in results.items():
            rms, worst = np.array(values).T * 1e3
            print(
                f"  {noise:9s}: RMS |fit - exact| {rms.mean():.3f} mHa (splits "
                f"{rms.min():.3f}-{rms.max():.3f}), max {worst.mean():.3f} mHa"
            )
        better = sum(
            a[0] < b[0] for a, b in zip(results["per-point"], results["uniform"], strict=True)
        )
        print(f"  per-point has the lower RMS in {better} of {args.splits} splits")


if __name__ == "__main__":
    main()
