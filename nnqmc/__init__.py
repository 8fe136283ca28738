"""nnqmc: neural-network variational quantum Monte Carlo in JAX."""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .api import EvalResult, Run, TrainResult, evaluate, prepare, run, train  # noqa: E402
from .config import Config, ConfigError, load_config  # noqa: E402
from .hamiltonian import Hamiltonian, MolecularHamiltonian  # noqa: E402
from .molecule import Molecule  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "EvalResult",
    "Hamiltonian",
    "MolecularHamiltonian",
    "Molecule",
    "Run",
    "TrainResult",
    "evaluate",
    "load_config",
    "prepare",
    "run",
    "train",
]
