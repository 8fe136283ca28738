"""Seconds per training step of DeepQMC 1.3.0 on LiH, for comparison with ``nnqmc bench``.

Not part of nnqmc: this script runs in its own virtual environment (DeepQMC 1.3.0 needs
Python >= 3.12) and only calls DeepQMC's public API (its hydra configs, ``Molecule``,
``MolecularHamiltonian``, samplers, ``KFACOptimizer`` and the ``fit_wf`` training loop
that ``deepqmc.train.train`` drives). Nothing in nnqmc imports it and pytest does not
collect it.

Set up the environment (outside the repository)::

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/peers/dq312
    /work/peers/dq312/bin/pip install deepqmc==1.3.0

Run one configuration per process. nnqmc limits LAPACK (SciPy's OpenBLAS) to one thread
while it trains (``nnqmc/threads.py``); give DeepQMC, whose KFAC also factorises matrices
on the CPU, the same with ``OPENBLAS_NUM_THREADS=1`` (on 2 cores its step went from
0.51 to 0.34 s). E.g.::

    export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
    /work/peers/dq312/bin/python bench/peers/deepqmc_lih.py \
        --ansatz default --walkers 256 --steps 25
    /work/peers/dq312/bin/python bench/peers/deepqmc_lih.py \
        --ansatz ferminet --task train_ferminet --x64
    /work/peers/dq312/bin/python bench/peers/deepqmc_lih.py \
        --ansatz default --set ansatz.omni_factory.embedding_dim=64

Each training step is what DeepQMC does per training iteration: MCMC sampling (the
sampler of the chosen task config), local energies with the forward Laplacian, the loss
gradient, the KFAC update and the sampler state update. Training starts from freshly
initialised parameters after a short MCMC equilibration (no pretraining). The first step
(which includes KFAC initialisation and compilation) is timed on its own; the reported
``seconds_per_step`` is the median of steps ``--first-timed``..``--steps`` (inclusive).
The last line printed is a JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from importlib.metadata import version

LIH_COORDS_BOHR = "[[0.0,0.0,0.0],[0.0,0.0,3.015]]"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ansatz", default="default", help="DeepQMC ansatz config name")
    p.add_argument("--task", default="train", help="DeepQMC task config name")
    p.add_argument("--walkers", type=int, default=256, help="electron_batch_size")
    p.add_argument("--steps", type=int, default=25, help="last step index to run")
    p.add_argument("--first-timed", type=int, default=5, help="first step in the median")
    p.add_argument("--equilibration", type=int, default=10, help="MCMC steps before training")
    p.add_argument("--x64", action="store_true", help="enable jax_enable_x64 (float64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params-only", action="store_true", help="count parameters and exit")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra hydra override (repeatable), e.g. ansatz.omni_factory.embedding_dim=64",
    )
    return p.parse_args()


def compose_config(args: argparse.Namespace):
    from hydra import compose, initialize_config_module

    overrides = [
        f"task={args.task}",
        f"ansatz={args.ansatz}",
        "hamil=qc_forward_laplacian",
        f"hamil.mol.coords={LIH_COORDS_BOHR}",
        "hamil.mol.charges=[3,1]",
        "hamil.mol.charge=0",
        "hamil.mol.spin=0",
        "hamil.mol.unit=bohr",
        f"task.electron_batch_size={args.walkers}",
        f"task.seed={args.seed}",
        "task.workdir=null",
        *args.set,
    ]
    with initialize_config_module(config_module="deepqmc.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    return cfg, overrides


def main() -> None:
    args = parse_args()
    import deepqmc  # noqa: F401  (first: registers its omegaconf resolvers, sets jax flags)
    import jax

    if args.x64:  # before any array is created
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from deepqmc.app import instantiate_ansatz
    from deepqmc.fit import fit_wf
    from deepqmc.observable import default_observable_monitors, observable_monitor_from_name
    from deepqmc.parallel import split_on_devices, split_rng_key_to_devices
    from deepqmc.physics import pairwise_self_distance
    from deepqmc.sampling import equilibrate, initialize_sampler_state
    from deepqmc.types import TrainState
    from deepqmc.wf.base import init_wf_params
    from hydra.utils import instantiate

    logging.basicConfig(level=logging.WARNING)
    cfg, overrides = compose_config(args)
    task = cfg.task
    hamil = instantiate(cfg.hamil, _convert_="all")
    ansatz = instantiate_ansatz(hamil, instantiate(cfg.ansatz, _convert_="all"))
    opt_factory = instantiate(task.opt, _convert_="all")
    sampler_factory = instantiate(task.sampler_factory, _convert_="all")
    loss_function_factory = instantiate(task.loss_function_factory, _convert_="all")

    rng = jax.random.PRNGKey(args.seed)
    rng, rng_smpl = jax.random.split(rng)
    mols = [hamil.mol]
    molecule_idx_sampler, sampler = sampler_factory(rng_smpl, hamil, ansatz, mols, 1, 1)
    rng, rng_init = jax.random.split(rng)
    params = init_wf_params(rng_init, hamil, ansatz, 1)
    n_dev = jax.device_count()
    leaves = jax.tree_util.tree_leaves(params)
    n_params = sum(x.size for x in leaves) // n_dev
    dtypes = sorted({str(x.dtype) for x in leaves})
    if args.params_only:
        print(json.dumps({"ansatz": args.ansatz, "overrides": overrides, "parameters": n_params}))
        return

    rng = split_rng_key_to_devices(rng)
    rng, rng_eq, rng_smpl_init = split_on_devices(rng, 3)
    smpl_state = initialize_sampler_state(
        rng_smpl_init, sampler, params, args.walkers, jnp.stack([m.coords for m in mols])
    )
    t0 = time.perf_counter()
    state0 = smpl_state
    for _, smpl_state, _, _ in equilibrate(  # noqa: B007
        rng_eq,
        params,
        molecule_idx_sampler,
        sampler,
        state0,
        lambda phys_conf: pairwise_self_distance(phys_conf.r).mean(),
        range(args.equilibration),
        block_size=10,
        allow_early_stopping=False,
    ):
        pass
    jax.block_until_ready(smpl_state)
    equilibration_seconds = time.perf_counter() - t0
    walker_dtype = str(smpl_state["elec"]["r"].dtype)

    monitors = default_observable_monitors() + [
        observable_monitor_from_name(name) for name in task.observable_monitors
    ]
    steps = fit_wf(
        rng,
        hamil,
        ansatz,
        opt_factory,
        molecule_idx_sampler,
        sampler,
        range(args.steps + 1),
        TrainState(smpl_state, params, None),
        None,
        loss_function_factory,
        observable_monitors=[m.finalize(hamil, ansatz.apply) for m in monitors],
    )
    times = []
    energies = []
    while True:
        t0 = time.perf_counter()
        try:
            step, train_state, _, stats, _ = next(steps)
        except StopIteration:
            break
        jax.block_until_ready((train_state, stats))
        times.append(time.perf_counter() - t0)
        energies.append(float(jnp.mean(stats["local_energy/mean"])))
        print(f"step {step:3d}  {times[-1]:8.4f} s  E={energies[-1]:.5f}", flush=True)

    timed = times[args.first_timed :]
    per_step = statistics.median(timed)
    result = {
        "code": "deepqmc",
        "versions": {pkg: version(pkg) for pkg in ("deepqmc", "jax", "jaxlib", "kfac-jax", "folx")},
        "system": "LiH R=3.015 bohr",
        "ansatz": args.ansatz,
        "task": args.task,
        "overrides": overrides,
        "optimizer": "kfac",
        "laplacian": "forward (folx.ForwardLaplacianOperator)",
        "decorr_length": int(task.sampler_factory.elec_sampler.samplers[0].length),
        "x64": args.x64,
        "param_dtypes": dtypes,
        "walker_dtype": walker_dtype,
        "walkers": args.walkers,
        "devices": n_dev,
        "backend": jax.default_backend(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "host": platform.node(),
        "parameters": int(n_params),
        "equilibration_seconds": equilibration_seconds,
        "first_step_seconds": times[0],
        "compile_seconds": times[0] - per_step,
        "seconds_per_step": per_step,
        "timed_steps": f"{args.first_timed}..{args.steps} ({len(timed)})",
        "step_seconds": times,
        "final_energy": energies[-1],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
