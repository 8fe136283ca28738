"""The picture of a sample: a histogram per Z-matrix coordinate, the raw samples beside
their importance-reweighted distribution (the same for MD frames). A dihedral's histogram
spans the turn centred on its circular mean, so that a trans well is not split at ±180°."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from .sample import ThermalSample


def plot_sample(path: str | Path, s: ThermalSample) -> None:
    """Write a PNG of the sampled distribution of every coordinate (bohr, degrees)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = len(s.labels)
    averages = s.averages()
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d + 0.8, 3.2), squeeze=False)
    for i, (ax, label) in enumerate(zip(axes[0], s.labels, strict=True)):
        values = s.coordinates[:, i] * (1.0 if label.startswith("r(") else 180 / np.pi)
        if label.startswith("φ(") and np.isfinite(averages[label].mean):
            mean = averages[label].mean
            values = mean + np.mod(values - mean + 180.0, 360.0) - 180.0
        bins = np.histogram_bin_edges(values, bins=40)
        ax.hist(values, bins, density=True, histtype="step", color="C7", label="samples")
        ax.hist(
            values,
            bins,
            weights=s.weights,
            density=True,
            histtype="step",
            color="C0",
            label="reweighted",
        )
        ax.set_xlabel(f"{label} ({'bohr' if label.startswith('r(') else 'degrees'})")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize="small")
    fig.suptitle(
        f"{s.method} at {s.temperature:g} K: {len(s.weights)} samples, ESS {100 * s.ess:.1f} %"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
