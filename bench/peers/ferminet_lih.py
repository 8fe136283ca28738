"""Seconds per training step of DeepMind's FermiNet on LiH, for comparison with ``nnqmc bench``.

Not part of nnqmc: this script runs in FermiNet's own virtual environment and only calls
FermiNet's public entry point ``ferminet.train.train(cfg)`` with its ``base_config``. Nothing
in nnqmc imports it and pytest does not collect it.

FermiNet is not on PyPI. Set up the environment (outside the repository), e.g.::

    python3.11 -m venv /work/peers/fnvenv
    /work/peers/fnvenv/bin/pip install "jax==0.8.2" "jaxlib==0.8.2" kfac-jax \
        ml-collections absl-py optax chex pyscf pandas h5py
    /work/peers/fnvenv/bin/pip install --no-deps \
        "git+https://github.com/google-deepmind/ferminet@fa11e8044e5c9eaae5d021521031d6d048a40989"

(FermiNet needs jax 0.8.2 with kfac-jax 0.0.8; the numbers in docs/performance.md were taken
with that commit's JAX package.) Run it from a scratch directory, one configuration per process::

    cd /tmp && /work/peers/fnvenv/bin/python /work/main/bench/peers/ferminet_lih.py \
        --size small --dtype float64 --steps 30

What is timed: FermiNet's own training loop on LiH (Li at the origin, H at (0, 0, 3.015)
bohr, spin (2, 2)) or, with ``--molecule li2``, Li2 at R = 5.051 bohr (spin (3, 3)),
256 walkers, no pretraining, its default KFAC optimiser, its default
MCMC (10 moves per iteration after 100 burn-in moves) and its default Laplacian.
``--optimizer adam`` or ``none`` (sampling and local energies only) time the parts. ``--size
default`` is FermiNet's base network (4 x (256, 32) hidden units, 16 determinants: 683 744
parameters for LiH); ``--size small`` is 3 x (60, 8) with 4 determinants (27 780 parameters,
next to nnqmc's 28 165 for LiH). Each iteration's log line is time-stamped (it is written
after the step's energy has been fetched from the device); the first step (compilation) is
reported on its own, ``median_s_per_step`` is the median interval after ``--warmup`` steps.

LAPACK runs on one thread (``OPENBLAS_NUM_THREADS=1`` etc., set below before any import),
as nnqmc does while it trains; XLA keeps its own thread pool. The last line printed is a
JSON object with the results.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

FERMINET_COMMIT = "fa11e8044e5c9eaae5d021521031d6d048a40989"
SMALL_HIDDEN_DIMS = ((60, 8), (60, 8), (60, 8))
SMALL_DETERMINANTS = 4
# name -> (atoms as (symbol, (x, y, z) bohr, charge), electrons (up, down))
MOLECULES = {
    "lih": ((("Li", (0.0, 0.0, 0.0), 3.0), ("H", (0.0, 0.0, 3.015), 1.0)), (2, 2)),
    "li2": ((("Li", (0.0, 0.0, -2.5255), 3.0), ("Li", (0.0, 0.0, 2.5255), 3.0)), (3, 3)),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", choices=sorted(MOLECULES), default="lih")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--size", choices=["small", "default"], default="small")
    p.add_argument("--steps", type=int, default=30, help="training iterations")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    p.add_argument("--burn-in", type=int, default=None, help="MCMC burn-in (FermiNet: 100)")
    p.add_argument("--walkers", type=int, default=256, help="cfg.batch_size")
    p.add_argument(
        "--laplacian", choices=["default", "folx"], default="default", help="cfg.optim.laplacian"
    )
    p.add_argument(
        "--pretrain",
        type=int,
        default=0,
        help="HF pretraining iterations (cfg.pretrain.iterations; FermiNet's default is 1000)",
    )
    p.add_argument(
        "--optimizer",
        choices=["kfac", "adam", "none"],
        default="kfac",
        help="cfg.optim.optimizer; 'none' times sampling and local energies only",
    )
    p.add_argument("--curve", metavar="CSV", help="write step, seconds, energy of every step")
    p.add_argument(
        "--commit", default=FERMINET_COMMIT, help="the FermiNet commit installed (reported only)"
    )
    p.add_argument("--params-only", action="store_true", help="count parameters and exit")
    return p.parse_args()


def make_config(args: argparse.Namespace, save_path: str):
    from ferminet import base_config
    from ferminet.utils import system

    cfg = base_config.default()
    atoms, electrons = MOLECULES[args.molecule]
    cfg.system.molecule = [system.Atom(sym, xyz, charge=z) for sym, xyz, z in atoms]
    cfg.system.electrons = electrons
    cfg.batch_size = args.walkers
    cfg.pretrain.iterations = args.pretrain
    cfg.optim.iterations = args.steps
    cfg.optim.laplacian = args.laplacian
    cfg.optim.optimizer = args.optimizer
    if args.burn_in is not None:
        cfg.mcmc.burn_in = args.burn_in
    if args.size == "small":
        cfg.network.ferminet.hidden_dims = SMALL_HIDDEN_DIMS
        cfg.network.determinants = SMALL_DETERMINANTS
    cfg.log.stats_frequency = 1
    cfg.log.save_path = save_path
    cfg.log.save_frequency = 1.0e9  # minutes: no checkpoints
    cfg.debug.deterministic = True  # fixed seed
    return base_config.resolve(cfg)


def count_parameters(cfg) -> int:
    """Builds the network as ``train.train`` does and counts its parameters."""
    import jax
    import numpy as np
    from ferminet import envelopes, networks

    charges = jax.numpy.array([atom.charge for atom in cfg.system.molecule])
    rescale = cfg.network.get("rescale_inputs", False)
    features = networks.make_ferminet_features(
        natoms=charges.shape[0],
        nspins=cfg.system.electrons,
        ndim=cfg.system.ndim,
        rescale_inputs=rescale,
    )
    network = networks.make_fermi_net(
        cfg.system.electrons,
        charges,
        ndim=cfg.system.ndim,
        determinants=cfg.network.determinants,
        states=cfg.system.states,
        envelope=envelopes.make_isotropic_envelope(),
        feature_layer=features,
        jastrow=cfg.network.get("jastrow", "default"),
        bias_orbitals=cfg.network.bias_orbitals,
        full_det=cfg.network.full_det,
        rescale_inputs=rescale,
        complex_output=cfg.network.get("complex", False),
        **cfg.network.ferminet,
    )
    params = network.init(jax.random.PRNGKey(0))
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


class StepTimes(logging.Handler):
    """perf_counter() of train()'s 'Initial energy' line and of each 'Step' line."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.start: float | None = None
        self.steps: list[float] = []
        self.energies: list[float] = []
        self.last_energy: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        now = time.perf_counter()
        msg = str(record.msg)
        if msg.startswith("Initial energy"):
            self.start = now
        elif msg.startswith("Step %05d"):
            self.steps.append(now)
            try:
                self.last_energy = float(record.args[1])
            except (TypeError, ValueError, IndexError):
                self.last_energy = float("nan")
            self.energies.append(self.last_energy)


def main() -> None:
    args = parse_args()
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import numpy as np
    from absl import logging as absl_logging
    from ferminet import train

    # FermiNet assigns LiH's initial spins with np.random; seed it for repeatable runs.
    np.random.seed(0)
    save_path = tempfile.mkdtemp(prefix="ferminet_lih_")
    try:
        cfg = make_config(args, save_path)
        n_params = count_parameters(cfg)
        if args.params_only:
            print(json.dumps({"size": args.size, "dtype": args.dtype, "parameters": n_params}))
            return
        absl_logging.set_verbosity(absl_logging.INFO)
        times = StepTimes()
        logging.getLogger("absl").addHandler(times)
        t0 = time.perf_counter()
        train.train(cfg)
        total = time.perf_counter() - t0
        if not times.steps:
            raise SystemExit("no per-step log lines seen")
        intervals = np.diff(np.asarray(times.steps))
        timed = intervals[args.warmup :] if len(intervals) > args.warmup else intervals
        start = times.start if times.start is not None else t0
        result = {
            "code": "ferminet",
            "commit": args.commit,
            "dtype": args.dtype,
            "size": args.size,
            "parameters": n_params,
            "walkers": cfg.batch_size,
            "mcmc_steps": int(cfg.mcmc.steps),
            "burn_in": int(cfg.mcmc.burn_in),
            "laplacian": cfg.optim.laplacian,
            "optimizer": cfg.optim.optimizer,
            "pretrain_iterations": int(cfg.pretrain.iterations),
            "first_step_seconds": round(times.steps[0] - start, 4),
            "seconds_per_step": round(float(np.median(timed)), 5) if len(timed) else None,
            "steps_timed": int(len(timed)),
            "step_seconds": [round(float(d), 4) for d in intervals],
            "last_energy": times.last_energy,
            "total_seconds": round(total, 2),
            "jax": jax.__version__,
            "kfac_jax": metadata.version("kfac-jax"),
            "openblas_num_threads": os.environ["OPENBLAS_NUM_THREADS"],
        }
        if args.curve:
            with open(args.curve, "w") as f:
                f.write("step,seconds,energy\n")
                for k, (t, e) in enumerate(zip(times.steps, times.energies, strict=True)):
                    f.write(f"{k},{t - start:.4f},{e!r}\n")
        print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(save_path, ignore_errors=True)


if __name__ == "__main__":
    main()
