"""Without the Jastrow factor the VMC energy is the PySCF Hartree–Fock energy."""

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
