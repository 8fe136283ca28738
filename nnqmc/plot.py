"""``energy.png``: the training curve against the reference and HF energies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(x)))
    kernel = np.ones(window) / window
    return np.convolve(x, kernel, mode="valid")


def plot_training(path: str | Path, history: dict[str, np.ndarray], result: dict[str, Any]):
    """Energy per step (raw and smoothed), reference, HF, and the evaluated E ± error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    energy = np.asarray(history["energy"])
    steps = np.asarray(history["step"]) + 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, energy, color="0.75", lw=0.6, label="energy per step")
    window = max(1, len(energy) // 50)
    smooth = moving_average(energy, window)
    ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5, label=f"mean of {window} steps")
    ax.axhline(result["hf_energy"], color="C3", ls=":", label=f"{result['hf_method']}")
    ref = result.get("reference_energy")
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", label="reference")
    e, err = result["energy"], result["energy_err"]
    ax.axhspan(e - err, e + err, color="C2", alpha=0.3)
    ax.axhline(e, color="C2", lw=1, label=f"evaluated {e:.5f} ± {err:.5f}")
    if result.get("dmc_energy") is not None:
        d, d_err = result["dmc_energy"], result["dmc_energy_err"]
        ax.axhspan(d - d_err, d + d_err, color="C1", alpha=0.3)
        ax.axhline(d, color="C1", lw=1, label=f"DMC {d:.5f} ± {d_err:.5f}")
        e = min(e, d)
    low = min(ref if ref is not None else e, e) - 0.01 * abs(result["hf_energy"] - e) - 0.005
    high = result["hf_energy"] + 0.25 * abs(result["hf_energy"] - low)
    ax.set_ylim(low, high)
    ax.set_xlabel("training step")
    ax.set_ylabel("energy (Ha)")
    ax.set_title(result["name"])
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
