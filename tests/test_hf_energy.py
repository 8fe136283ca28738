"""Without the Jastrow factor the VMC energy is the PySCF Hartree–Fock energy."""

import jax
import numpy as np
import pytest

from nnqmc import api
from nnqmc.config import config_from_dict

SYSTEMS = {
    "h2": ("H 0 0 0\nH 0 0 1.4011", 0, 0),
    "lih": ("Li 0 0 0\nH 0 0 3.015", 0, 0),
    "li_atom": ("Li 0 0 0", 0, 1),
}


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_hf_ansatz_reproduces_hf_energy(name):
    atoms, charge, spin = SYSTEMS[name]
    config = config_from_dict(
        {
            "name": name,
            "system": {
                "atoms": atoms,
                "unit": "bohr",
                "charge": charge,
                "spin": spin,
                "basis": "cc-pvdz",
            },
            "ansatz": {"kind": "hf"},
            "sampler": {"burn_in": 200},
            "train": {"walkers": 512, "steps": 1},
            "eval": {"steps": 80},
        }
    )
    run = api.prepare(config)
    trained = api.train(run)
    result = api.evaluate(run, trained.params, trained.walkers, trained.width)
    assert np.isfinite(result.energy) and result.energy_err > 0
    assert abs(result.energy - run.scf.energy) < 3 * result.energy_err, (
        result.energy,
        result.energy_err,
        run.scf.energy,
    )


def test_untrained_paulinet_gives_hf_energy():
    """J = 0 and f = 1 at initialisation: without gamma the energy is the HF one."""
    config = config_from_dict(
        {
            "name": "lih",
            "system": {"atoms": SYSTEMS["lih"][0], "unit": "bohr", "basis": "cc-pvdz"},
            "ansatz": {"kind": "paulinet", "ee_cusp": False, "embedding_dim": 16, "layers": 2},
            "sampler": {"burn_in": 200},
            "train": {"walkers": 512, "steps": 1},
            "eval": {"steps": 80},
        }
    )
    run = api.prepare(config)
    # one step: the walkers are burnt in and sampled with the initial parameters
    trained = api.train(run)
    params = run.ansatz.init(jax.random.PRNGKey(7))  # any key: J = 0, f = 1
    result = api.evaluate(run, params, trained.walkers, trained.width)
    assert abs(result.energy - run.scf.energy) < 3 * result.energy_err, (
        result.energy,
        result.energy_err,
        run.scf.energy,
    )
