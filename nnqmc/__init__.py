"""nnqmc: neural-network variational quantum Monte Carlo in JAX.

The public Python API (see README, "Python API"):

* systems: :class:`Molecule`, :class:`Hamiltonian` (protocol), :class:`MolecularHamiltonian`,
  external terms :class:`UniformField`, :class:`PointCharges`, :class:`HarmonicTrap`,
  :func:`with_external`;
* wavefunctions: :func:`prepare` (HF of a molecule -> PauliNet/Jastrow/HF, as the CLI),
  :func:`ansatz_from_orbitals` (PauliNet etc. on user orbitals);
* runs: :func:`settings`, :func:`custom_run`, :func:`train`, :func:`evaluate`, :func:`dmc`
  (fixed-node diffusion Monte Carlo), :func:`run`, with results :class:`TrainResult`,
  :class:`EvalResult`, :class:`DMCResult`;
* observables: :func:`dipole_moment`, :func:`default_observables`;
* force fields from scan datasets: :class:`ForceField` (an ASE calculator of a model that
  ``nnqmc fit`` wrote; imported on first use and left out of ``__all__``, as it needs ASE,
  an optional dependency), the fit itself in :mod:`nnqmc.fit`.
"""

from .backend import cpu_backend_expected as _cpu_backend_expected
from .xla_cpu import disable_ynn_fusion as _disable_ynn_fusion

if _cpu_backend_expected():
    _disable_ynn_fusion()

import jax as _jax  # noqa: E402

_jax.config.update("jax_enable_x64", True)

from .compile_cache import enable_compilation_cache as _enable_compilation_cache  # noqa: E402

_enable_compilation_cache()  # compiled steps kept on disk (NNQMC_COMPILATION_CACHE=off: not)

from .ansatz import Ansatz  # noqa: E402
from .ansatz.custom import ansatz_from_orbitals  # noqa: E402
from .api import (  # noqa: E402
    DMCResult,
    EvalResult,
    Run,
    TrainResult,
    dmc,
    evaluate,
    prepare,
    run,
    train,
)
from .config import Config, ConfigError, load_config  # noqa: E402
from .custom import custom_run, default_observables, gaussian_walkers, settings  # noqa: E402
from .external import HarmonicTrap, PointCharges, UniformField, dipole_moment  # noqa: E402
from .hamiltonian import (  # noqa: E402
    ExternalPotential,
    Hamiltonian,
    MolecularHamiltonian,
    with_external,
)
from .molecule import Molecule  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Ansatz",
    "Config",
    "ConfigError",
    "DMCResult",
    "EvalResult",
    "ExternalPotential",
    "Hamiltonian",
    "HarmonicTrap",
    "MolecularHamiltonian",
    "Molecule",
    "PointCharges",
    "Run",
    "TrainResult",
    "UniformField",
    "ansatz_from_orbitals",
    "custom_run",
    "default_observables",
    "dipole_moment",
    "dmc",
    "evaluate",
    "gaussian_walkers",
    "load_config",
    "prepare",
    "run",
    "settings",
    "train",
    "with_external",
]


def __getattr__(name: str):
    """``nnqmc.ForceField`` is imported on first use: it needs ASE, an optional dependency."""
    if name == "ForceField":
        from .fit import ForceField

        return ForceField
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
