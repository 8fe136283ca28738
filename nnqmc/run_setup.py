"""The prepared run: a config turned into molecule, Hartree–Fock, ansatz and Hamiltonian
(:class:`Run`, :func:`prepare`), and the checks every phase makes before its first step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .ansatz import Ansatz, slater_jastrow
from .config import Config
from .errors import RunError
from .external import external_terms, scf_external
from .hamiltonian import Hamiltonian, MolecularHamiltonian
from .molecule import Molecule
from .optimize import Optimizer, make_optimizer
from .parallel import device_count, global_device_count, process_count
from .sampler import StepScale, init_walkers, nucleus_step_scale
from .scf import SCFResult, run_scf
from .train import batch_log_psi

__all__ = [
    "Run",
    "build_ansatz",
    "check_devices",
    "initial_walkers",
    "precision_dtype",
    "prepare",
]

# Keys of the independent random streams of one run, all folded into the seed's key; a new
# phase takes the next number.
STREAM_INIT, STREAM_WALKERS, STREAM_BURN_IN, STREAM_TRAIN, STREAM_EVAL, STREAM_DMC = range(6)


@dataclass
class Run:
    """Everything a run needs, built once from a config: molecule, HF, ansatz, Hamiltonian."""

    config: Config
    molecule: Molecule | None  # None: a Python-API run without a molecule (custom_run)
    scf: SCFResult | None
    hamiltonian: Hamiltonian
    ansatz: Ansatz
    # (key, n_walkers) -> initial walkers; None: around the molecule's nuclei
    walker_init: Callable[[jax.Array, int], jax.Array] | None = None
    # precision = "mixed": the same ansatz built in float32, which the optimizer differentiates
    gradient_ansatz: Ansatz | None = None

    def __post_init__(self) -> None:
        if self.config.precision == "mixed" and self.gradient_ansatz is None:
            raise RunError(
                'precision = "mixed" needs the ansatz built in float32 as well (gradient_ansatz)'
            )

    @property
    def dtype(self):
        """Parameters, walkers and local energies: float32 only for precision = "float32"."""
        return precision_dtype(self.config.precision)

    @property
    def gradient_dtype(self):
        """The optimizer's per-walker gradients: float32 for "mixed", else :attr:`dtype`."""
        return jnp.float32 if self.config.precision == "mixed" else self.dtype

    def gradient_log_psi(self) -> Callable[[Any, jax.Array], jax.Array]:
        """The batched log|psi| the optimizer differentiates, in :attr:`gradient_dtype`."""
        return batch_log_psi(self.gradient_ansatz or self.ansatz)

    def step_scale(self) -> StepScale | None:
        """The Metropolis step scale per electron of ``sampler.proposal`` (None: uniform;
        also for runs without nuclei)."""
        if self.config.sampler.proposal == "uniform" or self.molecule is None:
            return None
        return nucleus_step_scale(self.molecule.coords)

    def optimizer(self) -> Optimizer:
        """The config's optimizer; with precision = "mixed" it differentiates the float32
        copy of the ansatz (per-walker gradients and SPRING's Gram product in float32)."""
        cfg = self.config
        dtype = self.gradient_dtype if self.gradient_ansatz is not None else None
        return make_optimizer(cfg.train.optimizer, self.gradient_log_psi(), cfg.train, dtype)


def precision_dtype(precision: str) -> Any:
    """The dtype of parameters, walkers and local energies for a ``precision`` setting."""
    return jnp.float32 if precision == "float32" else jnp.float64


def build_ansatz(config: Config, molecule: Molecule, scf: SCFResult, dtype: Any = None) -> Ansatz:
    """The config's ansatz in ``dtype`` (default: that of ``config.precision``)."""
    dtype = precision_dtype(config.precision) if dtype is None else dtype
    kind = config.ansatz.kind
    if kind in ("hf", "jastrow"):
        return slater_jastrow(
            scf,
            molecule.charges,
            molecule.coords,
            jastrow=kind == "jastrow",
            cusp=config.ansatz.cusp_correction,
            dtype=dtype,
        )
    a = config.ansatz
    if kind == "generalized":
        from .ansatz.generalized import generalized_from_options
        from .ansatz.slater import slater_part

        slater = slater_part(scf, molecule.charges, cusp=a.cusp_correction, dtype=dtype)
        return generalized_from_options(slater, molecule.coords, molecule.charges, a, dtype)
    from .ansatz.paulinet import paulinet

    return paulinet(
        scf,
        molecule.charges,
        molecule.coords,
        embedding_dim=a.embedding_dim,
        layers=a.layers,
        n_rbf=a.n_rbf,
        cutoff=a.cutoff,
        jastrow_layers=a.jastrow_layers,
        backflow_layers=a.backflow_layers,
        backflow=a.backflow,
        ee_cusp=a.ee_cusp,
        cusp=a.cusp_correction,
        dtype=dtype,
    )


def prepare(config: Config) -> Run:
    """Run Hartree–Fock and build the ansatz and Hamiltonian for a config."""
    if config.system is None:
        raise RunError("prepare() needs a [system]; without a molecule use nnqmc.custom_run")
    molecule = config.system.molecule
    a = config.ansatz
    external = external_terms(config.hamiltonian)  # in the SCF as well as in H
    ext = scf_external(external, molecule.charges, molecule.coords)
    try:
        scf = run_scf(molecule, config.system.basis, a.cas, a.determinants, **ext)
    except ValueError as err:
        raise RunError(f"ansatz.cas: {err}") from None
    hamiltonian = MolecularHamiltonian(
        molecule.charges, molecule.coords, molecule.n_up, molecule.n_down, external
    )
    ansatz = build_ansatz(config, molecule, scf)
    gradient_ansatz = None
    if config.precision == "mixed":
        gradient_ansatz = build_ansatz(config, molecule, scf, jnp.float32)
    return Run(config, molecule, scf, hamiltonian, ansatz, gradient_ansatz=gradient_ansatz)


def initial_walkers(run: Run, key: jax.Array, n_walkers: int) -> jax.Array:
    """Walkers placed around the nuclei, consistent with the charge and spin state."""
    if run.walker_init is not None:
        return jnp.asarray(run.walker_init(key, n_walkers), run.dtype)
    mol = run.molecule
    return init_walkers(
        key, mol.coords, mol.charges, mol.charge, mol.n_up, mol.n_down, n_walkers, run.dtype
    )


def check_devices(walkers: int) -> int:
    """The number of local devices; walkers must split evenly over all devices of all hosts."""
    n = global_device_count()
    if walkers % n:
        where = f"{n} devices" if process_count() == 1 else f"{n} devices of all processes"
        raise RunError(f"train.walkers = {walkers} is not divisible by the {where}")
    return device_count()
