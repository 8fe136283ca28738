"""``pes.png``: the VMC energy along a scan with error bars beside the HF, CCSD(T) and
exact curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from .dataset import Dataset

_AXIS = {
    "bond": "bond length (bohr)",
    "angle": "angle (degrees)",
    "xyz": "frame",
    "thermal": "geometry (in the order chosen)",
}


def plot_scan(path: str | Path, data: Dataset) -> None:
    """Energy against the scan coordinate (the geometry number for several coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_axis = data.labels.shape[1] == 1
    x = data.labels[:, 0] if one_axis else np.arange(data.n, dtype=np.float64)
    label = _AXIS.get(str(data.attrs.get("kind")), "geometry") if one_axis else "geometry"
    order = np.argsort(x, kind="stable")
    cols = data.columns
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x[order], cols["hf_energy"][order], "o:", color="C3", ms=3, label="HF")
    if "ccsd_t_energy" in cols:
        ax.plot(x[order], cols["ccsd_t_energy"][order], "s--", color="C1", ms=3, label="CCSD(T)")
    if "reference_energy" in cols:
        ax.plot(x[order], cols["reference_energy"][order], "-", color="k", lw=1, label="exact")
    done = np.array([data.status(k) == "done" for k in range(data.n)], dtype=bool)
    if done.any():
        ax.errorbar(
            x[done],
            cols["energy"][done],
            yerr=cols["energy_err"][done],
            fmt="o",
            color="C0",
            ms=4,
            capsize=3,
            label="VMC",
        )
    ax.set_xlabel(label)
    ax.set_ylabel("energy (Ha)")
    ax.set_title(f"{data.attrs.get('name', 'scan')}: {int(done.sum())} of {data.n} geometries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
