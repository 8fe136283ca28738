"""How much noise the ECP quadrature's rule adds to the local energies of a trained run.

For each rule (``--points``) the local energies of the run's last evaluation walkers are
computed under ``--rotations`` independent random rotations of the quadrature. Printed per
rule: the mean, the local-energy variance over walkers, and the quadrature's own variance
(over rotations at fixed walkers, averaged over walkers). Every rule is unbiased under the
random rotation; in DMC the branching factor exp(-tau E_L) turns a noise variance s2 into an
energy bias of about tau * s2 / 2, which is printed for ``--timestep``.

    python bench/ecp_quadrature_noise.py RUN_DIR --points 6 12 26
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from nnqmc.config import load_config
from nnqmc.io import EVAL_CHECKPOINT
from nnqmc.phases.training import saved_training
from nnqmc.programs import with_ecp_points
from nnqmc.runner import prepare_stored
from nnqmc.steps import batch_local_energy


def quadrature_noise(run_dir: Path, points: list[int], rotations: int) -> dict[int, dict]:
    config = load_config(run_dir / "config.toml")
    run = prepare_stored(config, run_dir)
    params = saved_training(run, run_dir).params
    with h5py.File(run_dir / EVAL_CHECKPOINT, "r") as f:
        walkers = np.asarray(f["walkers"])
    r = jnp.asarray(walkers.reshape(-1, *walkers.shape[-2:]), run.dtype)
    out = {}
    for n in points:
        energies = jax.jit(
            batch_local_energy(run.ansatz, with_ecp_points(run.hamiltonian, n), "forward")
        )
        keys = [jax.random.PRNGKey(s) for s in range(rotations)]
        e = np.stack([np.asarray(energies(params, r, k)) for k in keys])
        out[n] = {
            "mean": float(e.mean()),
            "variance": float(e.var(axis=1).mean()),
            "quadrature_variance": float(e.var(axis=0, ddof=1).mean()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--points", type=int, nargs="+", default=[6, 12, 26])
    parser.add_argument("--rotations", type=int, default=4)
    parser.add_argument("--timestep", type=float, default=0.05)
    args = parser.parse_args()
    rows = quadrature_noise(args.run_dir, args.points, args.rotations)
    header = ("points", "mean (Ha)", "var (Ha^2)", "quad var", "DMC bias (Ha)")
    print("{:>6} {:>12} {:>11} {:>10} {:>14}".format(*header))
    for n, row in rows.items():
        bias = args.timestep * row["quadrature_variance"] / 2
        print(
            f"{n:>6} {row['mean']:>12.6f} {row['variance']:>11.4f} "
            f"{row['quadrature_variance']:>10.2e} {bias:>14.1e}"
        )


if __name__ == "__main__":
    main()
