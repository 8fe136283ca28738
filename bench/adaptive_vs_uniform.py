"""How many QMC geometries a fitted surface needs: an adaptive scan against uniform grids.

The two scans share the candidate grid (to 1e-3 bohr). The truth is the adaptive scan's
``scan.reference`` (exact energies at every candidate), e.g. for H2:

    nnqmc scan systems/h2_scan_dense.toml --out runs/h2_dense
    nnqmc scan systems/h2_scan_adaptive.toml --out runs/h2_adaptive
    python bench/adaptive_vs_uniform.py runs/h2_dense/scan.h5 runs/h2_adaptive/scan.h5

or, with ``--truth uniform`` where no exact surface is known (H3+, two coordinates), the
QMC energies of the whole uniform grid: then the question is how few geometries reproduce
the full grid's surface:

    nnqmc scan systems/h3p_scan_grid.toml --out runs/h3p_grid
    nnqmc scan systems/h3p_scan_adaptive.toml --out runs/h3p_adaptive
    python bench/adaptive_vs_uniform.py runs/h3p_grid/scan.h5 runs/h3p_adaptive/scan.h5 \
        --truth uniform

Uniform: the evenly spaced sub-grids of the uniform scan that keep both ends of every
coordinate (every k-th value, k dividing n - 1). Adaptive: the first m rows in the order
the scan chose them. Each set is fitted (``nnqmc.fit``, per-point noise) and compared with
the truth at every candidate; the table gives the largest |E_fit - E_true| and the number
of geometries where it first falls below ``--tolerance`` (mHa).
"""

from __future__ import annotations

import argparse

import numpy as np

from nnqmc.fit import FitOptions, fit, predict, training_set
from nnqmc.pes import read_dataset


def max_error(data, rows: np.ndarray, truth: np.ndarray, options: FitOptions) -> float:
    """Largest |fit - truth| (hartree) over all candidates, fitted on dataset ``rows``."""
    train = training_set(data)
    done = np.flatnonzero([data.status(k) == "done" for k in range(data.n)])
    position = {int(k): i for i, k in enumerate(done)}
    model = fit(train.subset(np.array([position[int(k)] for k in rows])), options)
    energy, _, _ = predict(model, data.positions)
    return float(np.max(np.abs(energy - truth)))


def uniform_rows(labels: np.ndarray) -> list[np.ndarray]:
    """Row sets of the evenly spaced sub-grids that keep both ends of every coordinate (the
    same number of divisions of each, dividing its count - 1), fewest rows first."""
    axes = [np.unique(column) for column in labels.T]
    counts = [len(a) for a in axes]
    index = np.stack([np.searchsorted(a, c) for a, c in zip(axes, labels.T, strict=True)], 1)
    sets = []
    for divisions in range(1, min(counts)):
        if any((n - 1) % divisions for n in counts):
            continue
        strides = np.array([(n - 1) // divisions for n in counts])
        sets.append(np.flatnonzero(np.all(index % strides == 0, axis=1)))
    return sets


def matched(source, target) -> np.ndarray:
    """For each row of ``target``, the row of ``source`` at the same geometry (1e-3 bohr)."""
    flat = source.positions.reshape(source.n, -1)
    rows = []
    for x in target.positions.reshape(target.n, -1):
        d = np.max(np.abs(flat - x), axis=1)
        if d.min() > 1e-3:
            raise SystemExit("the two scans do not share their candidate geometries")
        rows.append(int(np.argmin(d)))
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uniform", help="scan.h5 of the dense uniform scan")
    parser.add_argument("adaptive", help="scan.h5 of the adaptive scan")
    parser.add_argument("--tolerance", type=float, default=1.0, help="mHa (default 1)")
    parser.add_argument(
        "--truth",
        choices=("reference", "uniform"),
        default="reference",
        help="exact energies (scan.reference) or the whole uniform grid's QMC energies",
    )
    args = parser.parse_args()
    options = FitOptions(noise="per-point")
    tol = args.tolerance * 1e-3
    dense = read_dataset(args.uniform)
    adaptive = read_dataset(args.adaptive)
    if args.truth == "reference":
        if "reference_energy" not in adaptive.columns:
            raise SystemExit("the adaptive scan has no scan.reference: use --truth uniform")
        truth = adaptive.columns["reference_energy"]
    else:
        if any(dense.status(k) != "done" for k in range(dense.n)):
            raise SystemExit("--truth uniform needs every geometry of the uniform scan done")
        truth = dense.columns["energy"][matched(dense, adaptive)]
    dense_truth = truth[matched(adaptive, dense)]

    print("uniform sub-grids (rows of the uniform scan)")
    first_uniform = None
    finished = {k for k in range(dense.n) if dense.status(k) == "done"}
    for rows in uniform_rows(dense.labels):
        if not finished.issuperset(int(k) for k in rows):
            print(f"  {len(rows):2d} geometries: not every one finished, skipped")
            continue
        err = max_error(dense, rows, dense_truth, options)
        print(f"  {len(rows):2d} geometries: max |E_fit - E_true| = {err * 1e3:.3f} mHa")
        if first_uniform is None and err < tol:
            first_uniform = len(rows)

    order = adaptive.columns["selection"]
    chosen = np.array(
        [k for k in np.argsort(order) if order[k] >= 0 and adaptive.status(k) == "done"]
    )
    print("adaptive (rows in the order chosen)")
    first_adaptive = None
    for m in range(2, len(chosen) + 1):
        err = max_error(adaptive, chosen[:m], truth, options)
        std = adaptive.columns["selection_std"][chosen[m - 1]]
        note = "" if np.isnan(std) else f"  (std at choice {std * 1e3:.3f} mHa)"
        label = ", ".join(f"{v:.2f}" for v in adaptive.labels[chosen[m - 1]])
        print(f"  {m:2d} geometries ({label}): max |E_fit - E_true| = {err * 1e3:.3f} mHa{note}")
        if first_adaptive is None and err < tol:
            first_adaptive = m
    print(
        f"fewest geometries within {args.tolerance:g} mHa everywhere: uniform "
        f"{first_uniform or 'never'}, adaptive {first_adaptive or 'never'} "
        f"(of {len(chosen)} run)"
    )


if __name__ == "__main__":
    main()
