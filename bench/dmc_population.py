"""Population-control bias: the same DMC at several population sizes on one trained run.

    python bench/dmc_population.py RUN_DIR --timestep 0.02 --sizes 64:16000,256:8000
        [--equilibration 300]

Each ``W:STEPS`` runs fixed-node DMC with ``W`` walkers for ``STEPS`` production steps
(after the equilibration) from the run's trained walkers and prints E ± error and the
distance to the run's reference energy. The bias of a fixed population falls as 1/W, so
sizes that agree within their error bars bound it below those bars at the larger size.
"""

from __future__ import annotations

import argparse
import time

from nnqmc.api import prepare_stored, trained_state
from nnqmc.config import load_config
from nnqmc.phases.dmc import dmc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--timestep", type=float, default=0.02)
    parser.add_argument("--sizes", default="64:16000,256:8000", help="W:STEPS,...")
    parser.add_argument("--equilibration", type=int, default=300)
    args = parser.parse_args()
    config = load_config(f"{args.run_dir}/config.toml")
    run = prepare_stored(config, args.run_dir)
    params, walkers = trained_state(run, args.run_dir)
    ref = config.reference_energy
    for item in args.sizes.split(","):
        n_walkers, steps = (int(x) for x in item.split(":"))
        t0 = time.perf_counter()
        result = dmc(
            run,
            params,
            walkers,
            timesteps=[args.timestep],
            steps=steps,
            equilibration=args.equilibration,
            n_walkers=n_walkers,
        )
        row = result.rows[0]
        diff = "" if ref is None else f"  E - E_ref = {(row['energy'] - ref) * 1e3:+.2f} mHa"
        print(
            f"W = {n_walkers:5d}  steps = {steps:6d}  E = {row['energy']:.6f} ± "
            f"{row['energy_err']:.6f}{diff}  {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
