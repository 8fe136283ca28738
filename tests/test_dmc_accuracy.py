"""Fixed-node DMC against exact energies where the fixed-node approximation is exact.

The ground states of He, H2 and Hooke's atom are nodeless, so DMC must reach the exact
energy whatever the trial: a Jastrow trial trained for 100 steps (He, H2), the Gaussian
orbital with nothing trained (Hooke's atom, omega = 1/2, exact 2 Ha: the orbital times the
ansatz's fixed electron-electron cusp factor; without that factor the local energy diverges
as 1/r12 and E(tau) is no longer linear, docs/dmc.md). Each must land within 3 sigma of
exact after the tau -> 0 extrapolation while its VMC energy is clearly above.

``ci_slow``: He with a short DMC (sigma about 0.6 mHa). ``slow``: the three cases with
sigma <= 0.3 mHa (docs/dmc.md has the measured numbers and times), and one case where the
nodes are wrong on purpose: Li2 on its RHF determinant's nodes must reproduce the
published fixed-node energy.
"""

from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import pytest

import nnqmc
from nnqmc import api
from nnqmc.config import load_config

SYSTEMS = Path(__file__).parent.parent / "systems"
TRIAL = ["ansatz.kind=jastrow", "train.steps=100", "train.walkers=256", "eval.steps=1000"]


def check_exact(vmc: float, vmc_err: float, dmc: float, dmc_err: float, exact: float, sigma):
    print(
        f"VMC {(vmc - exact) * 1e3:+.2f} ± {vmc_err * 1e3:.2f} mHa, "
        f"DMC {dmc:.6f} ± {dmc_err:.6f} ({(dmc - exact) * 1e3:+.2f} ± {dmc_err * 1e3:.2f} mHa)"
    )
    assert dmc_err <= sigma, f"DMC error {dmc_err * 1e3:.2f} mHa > {sigma * 1e3:.2f}"
    assert abs(dmc - exact) < 3 * dmc_err, f"DMC {dmc} ± {dmc_err}, exact {exact}"
    assert vmc - exact > 3 * (vmc_err + dmc_err), f"VMC {vmc} ± {vmc_err} not clearly above"


def molecule_dmc(name: str, dmc: list[str], tmp_path) -> dict:
    config = load_config(SYSTEMS / f"{name}.toml", TRIAL + dmc)
    return api.run(config, tmp_path / name).summary()


@pytest.mark.ci_slow
def test_he_dmc_is_exact_from_a_rough_jastrow_trial(tmp_path):
    dmc = ["dmc.steps=3000", "dmc.timestep=[0.08, 0.02]", "dmc.equilibration=300"]
    dmc += ["dmc.walkers=512"]
    r = molecule_dmc("he", dmc, tmp_path)
    check_exact(
        r["energy"], r["energy_err"], r["dmc_energy"], r["dmc_energy_err"], -2.903724, 0.0012
    )


EXACT_SET = [("he", -2.903724), ("h2", -1.174475)]
LONG_DMC = ["dmc.steps=11000", "dmc.timestep=[0.04, 0.02, 0.01]", "dmc.equilibration=300"]
LONG_DMC += ["dmc.walkers=1024"]


@pytest.mark.slow
@pytest.mark.parametrize("name, exact", EXACT_SET, ids=[c[0] for c in EXACT_SET])
def test_nodeless_molecules_to_0_3_mha(name, exact, tmp_path):
    r = molecule_dmc(name, LONG_DMC, tmp_path)
    for row in r["dmc"]:
        print(row)
    check_exact(r["energy"], r["energy_err"], r["dmc_energy"], r["dmc_energy_err"], exact, 3e-4)


OMEGA = 0.5


@dataclass(frozen=True)
class HookeAtom:
    omega: float = OMEGA
    n_up: int = 1
    n_down: int = 1

    def potential(self, r):
        return 0.5 * self.omega**2 * jnp.sum(r * r) + 1.0 / jnp.linalg.norm(r[0] - r[1])


def _gaussian(x):
    return jnp.exp(-0.5 * OMEGA * jnp.sum(x * x))[None]


@pytest.mark.slow
def test_hooke_atom_from_the_bare_gaussian_orbital():
    """Nothing trained (one step at a vanishing learning rate samples the walkers): the
    non-interacting ground state times the fixed e-e cusp factor."""
    config = nnqmc.settings(
        "hooke",
        train={"steps": 1, "walkers": 2048, "optimizer": "adam", "learning_rate": 1e-12},
        sampler={"burn_in": 300},
        eval={"steps": 1000},
        dmc={"steps": 20000, "timestep": [0.2, 0.1, 0.05], "equilibration": 300},
    )
    ansatz = nnqmc.ansatz_from_orbitals(_gaussian, n_up=1, n_down=1, kind="jastrow")
    run = nnqmc.custom_run(HookeAtom(), ansatz, config)
    trained = nnqmc.train(run)
    vmc = nnqmc.evaluate(run, trained.params, trained.walkers, trained.width)
    d = nnqmc.dmc(run, trained.params, trained.walkers, energy=vmc.energy)
    for row in d.rows:
        print(row)
    check_exact(vmc.energy, vmc.energy_err, d.energy, d.energy_err, 2.0, 3e-4)


LI2_HF_NODES_PUBLISHED = (-14.9890, 0.0002)
"""Umrigar, Nightingale and Runge, J. Chem. Phys. 99, 2865 (1993): fixed-node DMC of Li2
on a single-determinant trial (tau -> 0)."""
LI2_NODE_SPREAD = 0.001
"""Their trial has Slater-type HF orbitals, ours a cc-pVTZ RHF determinant, so the nodes
differ slightly: QMCPACK's re-run of their very trial extrapolates to -14.98997(7), 1 mHa
from theirs (QMCPACK tests/molecules/Li2_STO_ae/README)."""
LI2_EXACT = -14.9954


@pytest.mark.slow
def test_li2_on_hf_nodes_reproduces_the_published_fixed_node_energy(tmp_path):
    """Not an exact case: with the RHF determinant's nodes (no backflow) DMC must land on
    the published single-determinant value, about 6 mHa above exact, and not below it."""
    config = load_config(SYSTEMS / "li2_hf_nodes.toml")
    r = api.run(config, tmp_path / "li2_hf_nodes").summary()
    for row in r["dmc"]:
        print(row)
    published, published_err = LI2_HF_NODES_PUBLISHED
    err = (r["dmc_energy_err"] ** 2 + published_err**2) ** 0.5
    print(f"DMC {r['dmc_energy']:.6f} ± {r['dmc_energy_err']:.6f}, published {published}")
    assert abs(r["dmc_energy"] - published) < 3 * err + LI2_NODE_SPREAD
    assert r["dmc_energy"] - LI2_EXACT > 3 * r["dmc_energy_err"], "below the fixed-node limit"
