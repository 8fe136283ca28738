"""Trained energies against the exact ones (REFERENCE_ENERGIES.md).

``ci_slow``: the small set CI runs after the default suite — short trainings that must beat
Hartree–Fock clearly, stay variational, and land close to the exact energy.
``slow``: the shipped inputs with their full budgets (the accuracy claims of the README).
"""

from pathlib import Path

import pytest

from nnqmc import api
from nnqmc.config import load_config

SYSTEMS = Path(__file__).parent.parent / "systems"

# name, overrides, largest allowed E - E_exact (Ha)
CI_SET = [
    ("h2", ["train.steps=300", "train.walkers=256", "eval.steps=300"], 0.004),
    ("he", ["train.steps=300", "train.walkers=256", "eval.steps=300"], 0.004),
    ("lih", ["train.steps=300", "train.walkers=256", "eval.steps=200"], 0.010),
    (
        "lih",
        ["train.steps=300", "train.walkers=256", "eval.steps=200", "ansatz.kind=generalized"],
        0.010,
    ),
]
CI_IDS = ["h2", "he", "lih", "lih-generalized"]

# the shipped inputs and the largest E - E_exact they must reach (Li2, B, C: issue 17's
# chemical accuracy with the generalized ansatz)
FULL_SET = [
    ("h2", 0.0005),
    ("lih", 0.0016),
    ("be", 0.003),
    ("li2", 0.0016),
    ("b", 0.0016),
    ("c", 0.0016),
]


def check_energy(result: dict, tolerance: float) -> None:
    e, err = result["energy"], result["energy_err"]
    exact, hf = result["reference_energy"], result["hf_energy"]
    assert err < 0.002, result
    assert e < hf - 3 * err, f"not below HF: {e} ± {err}, HF {hf}"
    assert e > exact - 3 * err, f"below the exact energy: {e} ± {err}, exact {exact}"
    assert e - exact < tolerance, f"{(e - exact) * 1000:.2f} mHa above exact"


@pytest.mark.ci_slow
@pytest.mark.parametrize("name, overrides, tolerance", CI_SET, ids=CI_IDS)
def test_short_training_beats_hf_and_approaches_exact(name, overrides, tolerance, tmp_path):
    config = load_config(SYSTEMS / f"{name}.toml", overrides)
    check_energy(api.run(config, tmp_path / name).summary(), tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("name, tolerance", FULL_SET, ids=[c[0] for c in FULL_SET])
def test_shipped_input_reaches_accuracy(name, tolerance, tmp_path):
    config = load_config(SYSTEMS / f"{name}.toml")
    check_energy(api.run(config, tmp_path / name).summary(), tolerance)
