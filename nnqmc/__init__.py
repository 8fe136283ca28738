"""nnqmc: neural-network variational quantum Monte Carlo in JAX.

The public Python API (see README, "Python API"):

* systems: :class:`Molecule`, :class:`Hamiltonian` (protocol), :class:`MolecularHamiltonian`,
  external terms :class:`UniformField`, :class:`PointCharges`, :class:`HarmonicTrap`,
  :func:`with_external`;
* wavefunctions: :func:`prepare` (HF of a molecule -> PauliNet/Jastrow/HF, as the CLI),
  :func:`ansatz_from_orbitals` (PauliNet etc. on user orbitals);
* runs: :func:`settings`, :func:`custom_run`, :func:`train`, :func:`evaluate`, :func:`dmc`
  (fixed-node diffusion Monte Carlo), :func:`run`, with results :class:`TrainResult`,
  :class:`EvalResult`, :class:`DMCResult` and :class:`RunResult` (all three of a run);
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

from .api import *  # noqa: E402, F403  (the public surface: nnqmc.api)
from .api import __all__ as __all__  # noqa: E402
from .api import __version__ as __version__  # noqa: E402


def __getattr__(name: str):
    """``nnqmc.ForceField`` is imported on first use: it needs ASE, an optional dependency."""
    if name == "ForceField":
        from .fit import ForceField

        return ForceField
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
