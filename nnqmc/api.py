"""The public functions that build, train and evaluate a run; the CLI and PES scans call
these. Only a surface: each name lives in the module that owns its concern
(docs/architecture.md):

* :mod:`nnqmc.run_setup`: the prepared run (:class:`Run`, :func:`prepare`, ...);
* :mod:`nnqmc.rundir`: the run directory, locks, signals, checkpoint rotation, NaN guard;
* :mod:`nnqmc.phases.training`, :mod:`nnqmc.phases.evaluation` and :mod:`nnqmc.phases.dmc`:
  the phases (VMC training, VMC evaluation, fixed-node diffusion Monte Carlo);
* :mod:`nnqmc.runner`: one ``nnqmc run`` / ``eval`` / ``dmc`` (phases chained, result.json).
"""

from __future__ import annotations

from .errors import Interrupted, RunError
from .phases.dmc import DMCResult, dmc
from .phases.evaluation import EvalResult, eval_step, evaluate
from .phases.training import StepHook, TrainResult, train, trained_state
from .run_setup import Run, build_ansatz, check_devices, initial_walkers, precision_dtype, prepare
from .rundir import Progress, StopCheck, check_run_directory, run_directory, stop_on_signals
from .runner import (
    __version__,
    correlation_fraction,
    dmc_run,
    evaluate_run,
    release_compiled,
    run,
    summarize,
)
from .train import NuclearObservable, WaveObservable

__all__ = [
    "DMCResult",
    "EvalResult",
    "Interrupted",
    "NuclearObservable",
    "Progress",
    "Run",
    "RunError",
    "StepHook",
    "StopCheck",
    "TrainResult",
    "WaveObservable",
    "__version__",
    "build_ansatz",
    "check_devices",
    "check_run_directory",
    "correlation_fraction",
    "dmc",
    "dmc_run",
    "eval_step",
    "evaluate",
    "evaluate_run",
    "initial_walkers",
    "precision_dtype",
    "prepare",
    "release_compiled",
    "run",
    "run_directory",
    "stop_on_signals",
    "summarize",
    "train",
    "trained_state",
]
