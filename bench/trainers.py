"""MACE, NequIP, GAP and SchNetPack train on an nnqmc export, each in its own virtual
environment (issue 21; the results are in docs/forcefields.md).

    python bench/trainers.py [--dataset DATASET.h5] [--work DIR]
        [--trainers mace,nequip,gap,schnetpack] [--epochs N] [--count N] [--timeout S]

1. The dataset: ``--dataset`` (an nnqmc scan dataset), else the synthetic one of
   :mod:`nnqmc.pes.synthetic` (RHF/STO-3G energies and analytic forces of ``--count`` (40)
   displaced H2O geometries, varying synthetic error bars; no QMC), exported with
   ``nnqmc export`` (extxyz to ``DIR/data.extxyz``; db for SchNetPack). Every 5th geometry
   is held out for testing (``DIR/test.extxyz``), the others train (``DIR/train.extxyz``).
2. One virtual environment per trainer, ``DIR/venv-<trainer>`` (kept and reused). MACE,
   NequIP, SchNetPack: a CPU build of PyTorch first (``torch==2.13.0``; set
   ``TORCH_INDEX_URL`` to https://download.pytorch.org/whl/cpu where pip would otherwise
   pull a CUDA build), then the trainer at a pinned version with torch pinned too, so that
   pip fails rather than change torch (mace-torch pins e3nn==0.4.4, nequip wants
   e3nn>=0.6,<0.7: separate environments; SchNetPack 2.2.0 from GitHub, or
   ``SCHNETPACK_SPEC``, since 2.1.1 on PyPI needs torch <= 2.4; see SCHNETPACK below).
   GAP: ``quippy-ase``, whose wheel ships ``gap_fit``.
3. Training with each trainer's own command line reading our keys, then its errors on the
   held-out geometries: MACE ``mace_run_train --energy_key REF_energy --forces_key
   REF_forces --E0s average`` (with the file's ``config_energy_weight`` /
   ``config_forces_weight``); NequIP ``nequip-train`` with an ``ASEDataModule`` config (the
   ASE calculator fields ``energy``, ``forces``); SchNetPack ``spktrain`` with an
   experiment config on the db (a split file holds the same test geometries); each a tiny
   model for ``--epochs`` (25) epochs on the CPU. GAP ``gap_fit
   energy_parameter_name=REF_energy force_parameter_name=REF_forces`` with the file's
   ``energy_sigma``, ``force_sigma`` and ``force_component_sigma``, then the fitted
   potential through quippy's ASE calculator.

Each trainer's log is ``DIR/<trainer>/train.log``; ``DIR/summary.json`` holds the versions,
commands, wall times and errors (updated per trainer run), and the last line printed is
that JSON. Run it niced (``nice -n 19``) on a shared machine. Not run by CI (about 1 GB of
installs per PyTorch trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnqmc.molecule import ELEMENTS
from nnqmc.pes import Dataset, export, read_dataset, write_dataset
from nnqmc.pes.export import labels
from nnqmc.pes.synthetic import rhf_dataset

TORCH = "torch==2.13.0"
TEST_EVERY = 5  # every 5th geometry (k % 5 == 4) is held out for testing


@dataclass(frozen=True)
class Trainer:
    """A trainer: what to install (in order; each item one pip command's arguments), its
    command, the versions to report, whether it runs on PyTorch (then every install pins
    ``TORCH``, so that pip fails rather than swap in another torch), extra environment."""

    requirements: tuple[str, ...]
    script: str
    report: tuple[str, ...]
    torch: bool = True
    env: tuple[tuple[str, str], ...] = ()


# schnetpack 2.1.1, the newest on PyPI, needs torch <= 2.4 (it pins sympy<=1.12 and imports
# torch.utils.data.dataloader.T_co, gone since): pip would swap in torch 2.4.1 with CUDA.
# Release 2.2.0 (GitHub only; SCHNETPACK_SPEC may name a local clone) runs on torch 2.13 but
# declares Python >= 3.12; it imports and trains on 3.11, so it goes in without that check
# and without its dependencies, which come first (less its development tools).
SCHNETPACK = os.environ.get(
    "SCHNETPACK_SPEC", "git+https://github.com/atomistic-machine-learning/schnetpack@v2.2.0"
)
SCHNETPACK_DEPENDENCIES = (
    "numpy>=2 sympy>=1.13 ase>=3.21 h5py pyyaml hydra-core>=1.1 pytorch_lightning>=2 "
    "torchmetrics hydra-colorlog>=1.1 rich fasteners dirsync torch-ema matscipy>=1.1 "
    "tensorboard>=2.17.1 tensorboardX>=2.6.2.2 tqdm protobuf progressbar petname vesin"
)

TRAINERS = {
    "mace": Trainer(
        ("mace-torch==0.3.16",), "mace_run_train", ("mace-torch", "e3nn", "torch", "ase")
    ),
    "nequip": Trainer(
        ("nequip==0.19.1",), "nequip-train", ("nequip", "e3nn", "torch", "lightning", "ase")
    ),
    "gap": Trainer(("quippy-ase==0.10.3",), "gap_fit", ("quippy-ase", "ase"), torch=False),
    "schnetpack": Trainer(
        (SCHNETPACK_DEPENDENCIES, f"--no-deps --ignore-requires-python {SCHNETPACK}"),
        "spktrain",
        ("schnetpack", "torch", "pytorch-lightning", "sympy", "ase"),
        # its test step reloads its own checkpoint with torch.load, which torch >= 2.6
        # refuses by default (weights_only); the checkpoint is this run's own
        env=(("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1"),),
    ),
}

# Evaluates a GAP on an extxyz file (run with the GAP environment's python): RMSE of the
# energy (meV) and of the force components (meV/Å) against REF_energy / REF_forces.
GAP_EVALUATE = """
import json, sys
import ase.io
import numpy as np
from quippy.potential import Potential
pot = Potential(param_filename=sys.argv[1])
de, df = [], []
for atoms in ase.io.read(sys.argv[2], index=":"):
    e_ref, f_ref = atoms.info["REF_energy"], atoms.arrays["REF_forces"].copy()
    atoms.calc = pot
    de.append(atoms.get_potential_energy() - e_ref)
    df.append(atoms.get_forces() - f_ref)
rmse = lambda x: 1000 * float(np.sqrt(np.mean(np.square(x))))
print("GAP_TEST", json.dumps({"n": len(de), "rmse_e_meV": rmse(de), "rmse_f_meV_per_A": rmse(df)}))
"""


def run_logged(
    cmd: list[str], cwd: Path, log: Path, timeout: float, extra_env: tuple = ()
) -> tuple[int, float]:
    """Run ``cmd`` in ``cwd``, its output appended to ``log``; (exit status, wall seconds)."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.update(dict(extra_env))
    env["PWD"] = str(cwd)  # spktrain looks for configs/ under $PWD
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            rc = subprocess.run(
                cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t0


def ensure_venv(venv: Path, trainer: Trainer, log: Path) -> float:
    """Create ``venv`` with the trainer's requirements unless it has the trainer's script;
    returns the seconds spent."""
    if (venv / "bin" / trainer.script).exists():
        return 0.0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    index = os.environ.get("TORCH_INDEX_URL")
    steps = [[sys.executable, "-m", "venv", str(venv)], pip + ["--upgrade", "pip"]]
    if trainer.torch:
        steps.append(pip + (["--index-url", index] if index else []) + [TORCH])
    for req in trainer.requirements:
        steps.append(pip + ([TORCH] if trainer.torch else []) + req.split())
    seconds = 0.0
    for cmd in steps:
        rc, dt = run_logged(cmd, venv.parent, log, timeout=3600)
        seconds += dt
        if rc != 0:
            sys.exit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return seconds


def versions(venv: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``names`` in ``venv``."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *names], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}


def split_indices(n: int) -> tuple[list[int], list[int]]:
    """(training, test) geometries: every ``TEST_EVERY``-th one is a test geometry."""
    test = [k for k in range(n) if k % TEST_EVERY == TEST_EVERY - 1]
    return [k for k in range(n) if k % TEST_EVERY != TEST_EVERY - 1], test


def split_frames(text: str, n_atoms: int) -> tuple[str, str]:
    """(training, test) extxyz text, split as :func:`split_indices`."""
    lines = text.splitlines(keepends=True)
    size = n_atoms + 2
    frames = ["".join(lines[i : i + size]) for i in range(0, len(lines), size)]
    train, test = split_indices(len(frames))
    return "".join(frames[k] for k in train), "".join(frames[k] for k in test)


def mace_commands(venv: Path, train: Path, test: Path, epochs: int) -> list[list[str]]:
    """A tiny MACE (16 scalar channels, 2 interactions, correlation order 2) for ``epochs``,
    energy and force losses weighted alike (MACE's default 1:100 leaves the energy
    untrained in so few epochs), with the file's per-configuration weights."""
    return [
        [
            str(venv / "bin" / "mace_run_train"),
            "--name=nnqmc",
            f"--train_file={train}",
            "--valid_fraction=0.125",
            f"--test_file={test}",
            "--energy_key=REF_energy",
            "--forces_key=REF_forces",
            "--E0s=average",
            "--model=MACE",
            "--num_channels=16",
            "--max_L=0",
            "--correlation=2",
            "--num_interactions=2",
            "--r_max=4.0",
            "--energy_weight=1",
            "--forces_weight=1",
            "--batch_size=4",
            "--valid_batch_size=8",
            f"--max_num_epochs={epochs}",
            "--eval_interval=1",
            "--device=cpu",
            "--default_dtype=float64",
            "--num_workers=0",
            "--seed=1",
        ]
    ]


def nequip_config(train: Path, test: Path, epochs: int, symbols: list[str]) -> str:
    """A tiny NequIP (2 layers, l_max 1, 8 features) config for ``nequip-train``."""
    names = "[" + ", ".join(symbols) + "]"
    return f"""run: [train, test]
cutoff_radius: 4.0
model_type_names: {names}
data:
  _target_: nequip.data.datamodule.ASEDataModule
  seed: 1
  split_dataset:
    file_path: {train}
    train: 0.875
    val: 0.125
  test_file_path: {test}
  transforms:
    - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
      model_type_names: ${{model_type_names}}
    - _target_: nequip.data.transforms.NeighborListTransform
      r_max: ${{cutoff_radius}}
  train_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: 4
    shuffle: true
  val_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: 8
  test_dataloader: ${{data.val_dataloader}}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${{model_type_names}}
trainer:
  _target_: lightning.Trainer
  accelerator: cpu
  max_epochs: {epochs}
  enable_progress_bar: false
  log_every_n_steps: 1
  logger:
    _target_: lightning.pytorch.loggers.CSVLogger
    save_dir: ${{hydra:runtime.output_dir}}
training_module:
  _target_: nequip.train.NequIPLightningModule
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs:
      total_energy: 1.0
      forces: 1.0
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs:
      total_energy_mae: 1.0
      forces_mae: 1.0
  test_metrics: ${{training_module.val_metrics}}
  optimizer:
    _target_: torch.optim.Adam
    lr: 0.01
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: 1
    model_dtype: float64
    type_names: ${{model_type_names}}
    r_max: ${{cutoff_radius}}
    num_layers: 2
    l_max: 1
    num_features: 8
    radial_mlp_depth: 1
    radial_mlp_width: 16
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_scales: ${{training_data_stats:per_type_forces_rms}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
global_options:
  allow_tf32: false
"""


def nequip_commands(venv: Path, config_dir: Path) -> list[list[str]]:
    """``nequip-train`` on ``config_dir/config.yaml``, Hydra's output under it."""
    return [
        [
            str(venv / "bin" / "nequip-train"),
            "-cp",
            str(config_dir),
            "-cn",
            "config",
            f"hydra.run.dir={config_dir / 'outputs'}",
        ]
    ]


def gap_commands(venv: Path, out: Path, train: Path, test: Path) -> list[list[str]]:
    """``gap_fit`` (two-body H-O and H-H plus SOAP) reading our labels and sigmas, then the
    fitted GAP on the test geometries. The per-configuration sigmas of the file override
    ``default_sigma``."""
    gap = (
        "distance_2b Z1=1 Z2=8 add_species=F cutoff=3.0 covariance_type=ard_se delta=1.0 "
        "theta_uniform=0.5 n_sparse=15 sparse_method=uniform : "
        "distance_2b Z1=1 Z2=1 add_species=F cutoff=3.0 covariance_type=ard_se delta=1.0 "
        "theta_uniform=0.5 n_sparse=15 sparse_method=uniform : "
        "soap cutoff=3.0 l_max=4 n_max=6 atom_sigma=0.5 zeta=4 delta=0.2 "
        "covariance_type=dot_product n_sparse=30 sparse_method=cur_points add_species=T"
    )
    return [
        [
            str(venv / "bin" / "gap_fit"),
            f"at_file={train}",
            f"gp_file={out / 'gap.xml'}",
            "energy_parameter_name=REF_energy",
            "force_parameter_name=REF_forces",
            "default_sigma={0.01 0.1 0.0 0.0}",
            "e0_method=average",
            f"gap={{{gap}}}",
            "do_copy_at_file=F",
            "sparse_separate_file=F",
        ],
        [str(venv / "bin" / "python"), "-c", GAP_EVALUATE, str(out / "gap.xml"), str(test)],
    ]


SCHNETPACK_EXPERIMENT = """# @package _global_
# energies and forces of an nnqmc export (nnqmc export DATASET.h5 --format db)
defaults:
  - override /model: nnp
  - override /data: custom
run:
  experiment: nnqmc
globals:
  cutoff: 4.0
  lr: 5e-3
  energy_key: energy
  forces_key: forces
data:
  batch_size: 4
  num_workers: 0
  distance_unit: Ang
  property_units: {energy: eV, forces: eV/Ang}
  transforms:
    - _target_: schnetpack.transform.SubtractCenterOfMass
    - {_target_: schnetpack.transform.RemoveOffsets, property: energy, remove_mean: true}
    - _target_: schnetpack.transform.MatScipyNeighborList
      cutoff: ${globals.cutoff}
    - _target_: schnetpack.transform.CastTo32
model:
  output_modules:
    - _target_: schnetpack.atomistic.Atomwise
      output_key: ${globals.energy_key}
      n_in: ${model.representation.n_atom_basis}
      aggregation_mode: sum
    - _target_: schnetpack.atomistic.Forces
      energy_key: ${globals.energy_key}
      force_key: ${globals.forces_key}
  postprocessors:
    - _target_: schnetpack.transform.CastTo64
    - {_target_: schnetpack.transform.AddOffsets, property: energy, add_mean: true}
task:
  outputs:
    - _target_: schnetpack.task.ModelOutput
      name: ${globals.energy_key}
      loss_fn: {_target_: torch.nn.MSELoss}
      metrics:
        rmse: {_target_: torchmetrics.regression.MeanSquaredError, squared: false}
      loss_weight: 0.5
    - _target_: schnetpack.task.ModelOutput
      name: ${globals.forces_key}
      loss_fn: {_target_: torch.nn.MSELoss}
      metrics:
        rmse: {_target_: torchmetrics.regression.MeanSquaredError, squared: false}
      loss_weight: 0.5
"""


def schnetpack_commands(venv: Path, out: Path, data: Dataset, epochs: int) -> list[list[str]]:
    """``spktrain`` with the experiment above on ``out/data.db`` (our db export), the same
    test geometries as the others (a split file) and a tiny SchNet (16 features, 2
    interactions)."""
    export(data, "db", out / "data.db")
    train, test = split_indices(len(labels(data).rows))
    val = train[::8]
    train = [k for k in train if k not in val]
    np.savez(out / "split.npz", train_idx=train, val_idx=val, test_idx=test)
    (out / "configs" / "experiment").mkdir(parents=True)
    (out / "configs" / "experiment" / "nnqmc.yaml").write_text(SCHNETPACK_EXPERIMENT)
    return [
        [
            str(venv / "bin" / "spktrain"),
            "experiment=nnqmc",
            f"data.datapath={out / 'data.db'}",
            f"+data.split_file={out / 'split.npz'}",
            f"data.num_train={len(train)}",
            f"data.num_val={len(val)}",
            f"data.num_test={len(test)}",
            "model/representation=schnet",
            "model.representation.n_atom_basis=16",
            "model.representation.n_interactions=2",
            f"trainer.max_epochs={epochs}",
            "trainer.accelerator=cpu",
            "logger=csv",
            f"run.path={out / 'runs'}",
            "run.id=tiny",
            "+seed=1",
        ]
    ]


def summarize_mace(log: str) -> dict[str, object]:
    """MACE's last error table (RMSE of E per atom in meV, of F in meV/Å, per set) and the
    sums of the configuration weights it read (its ``[energy: ..., forces: ...]`` counts)."""
    rows = re.findall(r"\|\s*(\w+)\s*\|\s*([-\d.]+)\s*\|\s*([-\d.]+)\s*\|", log)
    table = {
        name: {"rmse_e_meV_per_atom": float(e), "rmse_f_meV_per_A": float(f)} for name, e, f in rows
    }
    losses = re.findall(r"loss=([-\d.eE+]+)", log)
    weights = re.findall(r"(\w+ set) \[energy: (\d+),.*?forces: (\d+)", log)
    return {
        "errors": table,
        "first_loss": float(losses[0]) if losses else None,
        "last_loss": float(losses[-1]) if losses else None,
        "weight_sums": {name: {"energy": int(e), "forces": int(f)} for name, e, f in weights},
    }


def summarize_nequip(log: str) -> dict[str, object]:
    """NequIP's test metrics (``test0_epoch/...``, eV and eV/Å) from Lightning's table."""
    found = re.findall(r"(test0_epoch/\w+)\s*│?\s*([-\d.eE+]+)", log)
    return {"test": {k: float(v) for k, v in found}}


def summarize_schnetpack(log: str) -> dict[str, object]:
    """SchNetPack's test metrics (``test_energy_rmse`` eV, ``test_forces_rmse`` eV/Å)."""
    found = re.findall(r"│\s*(test_\w+)\s*│\s*([-\d.eE+]+)\s*│", log)
    return {"test": {k: float(v) for k, v in found}}


def summarize_gap(log: str) -> dict[str, object]:
    """How many per-configuration sigmas gap_fit found, and the test errors."""
    counts = re.findall(r"Number of per-\w+ setting of (\w+) found:\s*(\d+)", log)
    test = re.findall(r"GAP_TEST (\{.*\})", log)
    return {
        "sigmas_found": {k: int(v) for k, v in counts if int(v) > 0},
        "test": json.loads(test[-1]) if test else None,
    }


def label_spread(data: Dataset) -> dict[str, float]:
    """What predicting the mean would miss: the standard deviation of the energies (eV,
    total and per atom) and the root mean square of the force components (eV/Å)."""
    lab = labels(data)
    spread = {
        "energy_std_eV": float(np.std(lab.energy)),
        "energy_std_per_atom_meV": float(np.std(lab.energy) / len(lab.numbers) * 1000),
    }
    if lab.forces is not None:
        spread["forces_rms_eV_per_A"] = float(np.sqrt(np.mean(lab.forces**2)))
    return spread


def dataset_file(args: argparse.Namespace, work: Path) -> tuple[Path, Dataset, int]:
    """Export the dataset to ``work/data.extxyz``; (path, dataset, geometries written)."""
    if args.dataset:
        data = read_dataset(args.dataset)
    else:
        data = rhf_dataset("h2o", count=args.count, seed=0)
        write_dataset(work / "data.h5", data)
    path = work / "data.extxyz"
    return path, data, export(data, "extxyz", path)


def trainer_commands(
    name: str, venv: Path, out: Path, split: tuple[Path, Path], epochs: int, data: Dataset
) -> list[list[str]]:
    """The commands that train (and, for GAP, test) ``name`` in ``out``."""
    train, test = split
    if name == "mace":
        return mace_commands(venv, train, test, epochs)
    if name == "nequip":
        symbols = [ELEMENTS[z - 1] for z in sorted(set(np.asarray(data.atomic_numbers).tolist()))]
        (out / "config.yaml").write_text(nequip_config(train, test, epochs, symbols))
        return nequip_commands(venv, out)
    if name == "schnetpack":
        return schnetpack_commands(venv, out, data, epochs)
    return gap_commands(venv, out, train, test)


SUMMARIES = {
    "mace": summarize_mace,
    "nequip": summarize_nequip,
    "gap": summarize_gap,
    "schnetpack": summarize_schnetpack,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="nnqmc dataset with forces (default: the synthetic H2O one)")
    p.add_argument("--work", default="runs/trainers_bench", help="work directory")
    p.add_argument("--trainers", default="mace,nequip,gap,schnetpack")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--count", type=int, default=40, help="synthetic geometries")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    path, data, n = dataset_file(args, work)
    split = (work / "train.extxyz", work / "test.extxyz")
    texts = split_frames(path.read_text(), data.positions.shape[1])
    for part, text in zip(split, texts, strict=True):
        part.write_text(text)
    previous = work / "summary.json"  # other trainers' results of an earlier run stay
    summary: dict[str, object] = json.loads(previous.read_text()) if previous.exists() else {}
    summary |= {
        "dataset": str(path),
        "geometries": n,
        "test_geometries": n // TEST_EVERY,  # frames k % TEST_EVERY == TEST_EVERY - 1
        "label_spread": label_spread(data),
        "epochs": args.epochs,
    }
    for name in args.trainers.split(","):
        trainer = TRAINERS[name]
        venv, out = work / f"venv-{name}", work / name
        shutil.rmtree(out, ignore_errors=True)  # no checkpoint of an earlier run to resume
        out.mkdir()
        install_s = ensure_venv(venv, trainer, work / f"{name}-install.log")
        commands = trainer_commands(name, venv, out, split, args.epochs, data)
        rc, seconds = 0, 0.0
        for cmd in commands:
            rc, dt = run_logged(cmd, out, out / "train.log", args.timeout, trainer.env)
            seconds += dt
            if rc != 0:
                break
        result = SUMMARIES[name]((out / "train.log").read_text(errors="replace"))
        summary[name] = {
            "versions": versions(venv, trainer.report),
            "commands": [" ".join(cmd) for cmd in commands],
            "exit_status": rc,
            "seconds": round(seconds, 1),
            "install_seconds": round(install_s, 1),
            **result,
        }
        print(f"{name}: exit {rc}, {seconds:.0f} s, {json.dumps(result)}", flush=True)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
