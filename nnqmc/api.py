"""The public surface, the same set as ``nnqmc``: systems, wavefunctions, the functions
that build, train and evaluate a run (the CLI and PES scans call these), observables. Only
a surface: each name lives in the module that owns its concern (docs/architecture.md):

* :mod:`nnqmc.run_setup`: the prepared run (:class:`Run`, :func:`prepare`, ...);
* :mod:`nnqmc.rundir`: the run directory, locks, signals, checkpoint rotation, NaN guard;
* :mod:`nnqmc.phases.training`, :mod:`nnqmc.phases.evaluation` and :mod:`nnqmc.phases.dmc`:
  the phases (VMC training, VMC evaluation, fixed-node diffusion Monte Carlo);
* :mod:`nnqmc.runner`: one ``nnqmc run`` / ``eval`` / ``dmc`` (phases chained, their
  :class:`RunResult`, result.json).
"""

from __future__ import annotations

from .ansatz import Ansatz
from .ansatz.custom import ansatz_from_orbitals
from .config import Config, ConfigError, load_config
from .custom import custom_run, default_observables, gaussian_walkers, settings
from .errors import Interrupted, RunError
from .external import HarmonicTrap, PointCharges, UniformField, dipole_moment
from .hamiltonian import ExternalPotential, Hamiltonian, MolecularHamiltonian, with_external
from .molecule import Molecule
from .phases.dmc import DMCResult, dmc
from .phases.evaluation import EvalResult, evaluate
from .phases.training import StepHook, TrainResult, train, trained_state
from .programs import eval_program
from .run_setup import Run, build_ansatz, check_devices, initial_walkers, precision_dtype, prepare
from .rundir import Progress, StopCheck, check_run_directory, run_directory, stop_on_signals
from .runner import (
    RunResult,
    correlation_fraction,
    dmc_run,
    evaluate_run,
    prepare_stored,
    release_compiled,
    run,
    stored_reference,
    summarize,
)
from .steps import NuclearObservable, WaveObservable
from .thermal.flow import Flow, FlowOptions
from .thermal.md import MDOptions
from .thermal.sample import ThermalSample, sample
from .version import __version__

__all__ = [
    "Ansatz",
    "Flow",
    "FlowOptions",
    "MDOptions",
    "ThermalSample",
    "Config",
    "ConfigError",
    "DMCResult",
    "EvalResult",
    "ExternalPotential",
    "Hamiltonian",
    "HarmonicTrap",
    "Interrupted",
    "MolecularHamiltonian",
    "Molecule",
    "NuclearObservable",
    "PointCharges",
    "Progress",
    "Run",
    "RunError",
    "RunResult",
    "StepHook",
    "StopCheck",
    "TrainResult",
    "UniformField",
    "WaveObservable",
    "__version__",
    "ansatz_from_orbitals",
    "build_ansatz",
    "check_devices",
    "check_run_directory",
    "correlation_fraction",
    "custom_run",
    "default_observables",
    "dipole_moment",
    "dmc",
    "dmc_run",
    "eval_program",
    "evaluate",
    "evaluate_run",
    "gaussian_walkers",
    "initial_walkers",
    "load_config",
    "precision_dtype",
    "prepare",
    "prepare_stored",
    "release_compiled",
    "run",
    "run_directory",
    "sample",
    "settings",
    "stop_on_signals",
    "stored_reference",
    "summarize",
    "train",
    "trained_state",
    "with_external",
]
