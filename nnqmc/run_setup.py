"""The prepared run: a config turned into molecule, Hartree–Fock, ansatz and Hamiltonian
(:class:`Run`, :func:`prepare`), and the checks every phase makes before its first step.

Everything of a molecular run that changes with the geometry (nuclear positions, MO
coefficients, cusp corrections, the nuclear energy) is kept apart as :attr:`Run.geometry`,
a pytree of arrays, and :attr:`Run.physics` rebuilds ansatz and Hamiltonian from it. The
compiled steps take the geometry as an argument (:mod:`nnqmc.programs`), so every geometry
of a scan with the same atoms, basis and settings runs the same compiled programs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .ansatz import Ansatz, slater_jastrow_from_part
from .ansatz.slater import slater_arrays, slater_from_arrays
from .config import Config
from .ecp import ecp_arrays
from .errors import RunError
from .external import external_terms, scf_external
from .hamiltonian import Hamiltonian, MolecularHamiltonian
from .molecule import Molecule
from .optimize import Optimizer, make_optimizer
from .parallel import device_count, global_device_count, process_count
from .pseudopotentials import ECPError, atom_potentials
from .sampler import StepScale, init_walkers, nucleus_step_scale
from .scf import SCFResult, run_scf
from .steps import batch_log_psi

__all__ = [
    "Physics",
    "Run",
    "build_ansatz",
    "check_devices",
    "initial_walkers",
    "precision_dtype",
    "prepare",
    "with_nuclei",
]

# Keys of the independent random streams of one run, all folded into the seed's key; a new
# phase takes the next number.
STREAM_INIT, STREAM_WALKERS, STREAM_BURN_IN, STREAM_TRAIN, STREAM_EVAL, STREAM_DMC = range(6)


class Physics(NamedTuple):
    """What the compiled steps use of a run, as built from its geometry arrays."""

    ansatz: Ansatz
    hamiltonian: Hamiltonian
    gradient_ansatz: Ansatz | None
    step_scale: StepScale | None


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
    # the arrays that change with the geometry, and the physics built from them (possibly
    # traced); None: the steps close over ansatz and Hamiltonian (Python-API runs)
    geometry: Any = None
    build_physics: Callable[[Any], Physics] | None = None
    # runs with equal keys can share compiled steps (see nnqmc.programs); None: never
    program_key: Hashable | None = None

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

    def physics(self, geometry: Any) -> Physics:
        """Ansatz, Hamiltonian, gradient ansatz and step scale at ``geometry`` (the arrays
        of :attr:`geometry`'s structure, possibly traced); a run without geometry arrays
        returns its own."""
        if self.build_physics is None:
            return Physics(self.ansatz, self.hamiltonian, self.gradient_ansatz, self.step_scale())
        return self.build_physics(geometry)

    def optimizer_for(self, physics: Physics) -> Optimizer:
        """The config's optimizer differentiating ``physics``' gradient ansatz (see
        :meth:`optimizer`)."""
        cfg = self.config
        ansatz = physics.gradient_ansatz or physics.ansatz
        dtype = self.gradient_dtype if physics.gradient_ansatz is not None else None
        return make_optimizer(cfg.train.optimizer, batch_log_psi(ansatz), cfg.train, dtype)

    def optimizer(self) -> Optimizer:
        """The config's optimizer; with precision = "mixed" it differentiates the float32
        copy of the ansatz (per-walker gradients and SPRING's Gram product in float32)."""
        return self.optimizer_for(
            Physics(self.ansatz, self.hamiltonian, self.gradient_ansatz, None)
        )


def precision_dtype(precision: str) -> Any:
    """The dtype of parameters, walkers and local energies for a ``precision`` setting."""
    return jnp.float32 if precision == "float32" else jnp.float64


def build_ansatz(config: Config, molecule: Molecule, scf: SCFResult, dtype: Any = None) -> Ansatz:
    """The config's ansatz in ``dtype`` (default: that of ``config.precision``)."""
    arrays = reference_orbitals(config, molecule, scf)
    return ansatz_from_arrays(config, molecule, scf, arrays, molecule.coords, dtype)


def reference_orbitals(config: Config, molecule: Molecule, scf: SCFResult) -> dict[str, Any]:
    """The orbital arrays of the reference determinants, cusp-corrected as ``[ansatz]`` says."""
    a = config.ansatz
    return slater_arrays(scf, molecule.cusp_charges, a.cusp_correction, a.cusp_radius)


def ansatz_from_arrays(
    config: Config,
    molecule: Molecule,
    scf: SCFResult,
    orbitals: dict[str, Any],
    coords: Any,
    dtype: Any = None,
) -> Ansatz:
    """The config's ansatz with the orbitals of :func:`~nnqmc.ansatz.slater.slater_arrays`
    and the nuclei at ``coords`` (both possibly traced); ``molecule`` and ``scf`` supply the
    rest (charges, basis, occupations)."""
    dtype = precision_dtype(config.precision) if dtype is None else dtype
    slater = slater_from_arrays(scf, orbitals, dtype)
    kind = config.ansatz.kind
    if kind in ("hf", "jastrow"):
        return slater_jastrow_from_part(
            slater, coords, kind == "jastrow", dtype, config.ansatz.ee_cusp_range
        )
    a = config.ansatz
    if kind == "generalized":
        from .ansatz.generalized import generalized_from_options

        return generalized_from_options(slater, coords, molecule.cusp_charges, a, dtype)
    from .ansatz.paulinet import paulinet_from_options

    return paulinet_from_options(slater, coords, a, dtype)


def geometry_arrays(
    config: Config, molecule: Molecule, scf: SCFResult, hamiltonian: MolecularHamiltonian
) -> dict[str, Any]:
    """The arrays of a molecular run that change with the geometry (float64): nuclear
    positions, the energy without electrons, the orbitals' MO and cusp coefficients."""
    arrays = {
        "coords": np.asarray(molecule.coords, np.float64).reshape(-1, 3),
        "constant": np.float64(hamiltonian.constant_energy),
        "orbitals": reference_orbitals(config, molecule, scf),
    }
    if hamiltonian.ecp is not None:
        arrays["ecp"] = hamiltonian.ecp
    return arrays


def with_nuclei(geometry: dict[str, Any], coords: Any) -> dict[str, Any]:
    """:func:`geometry_arrays`' output with the nuclei, and the orbitals' centres with them,
    at ``coords`` (n_atoms, 3); MO and cusp coefficients unchanged. The constant energy,
    which belongs to the old nuclei, is left out: the Hamiltonian built from the result
    computes its own at ``coords`` where asked (concrete ``coords`` only). Differentiating
    the ansatz built from it with respect to ``coords`` gives d log|psi|/dR at frozen
    parameters (the Pulay term of the forces)."""
    for arrays in geometry["orbitals"].values():
        if np.shape(arrays["centers"]) != np.shape(geometry["coords"]):
            raise ValueError("the basis has centres other than the nuclei: cannot move them")
    orbitals = {spin: {**a, "centers": coords} for spin, a in geometry["orbitals"].items()}
    moved = {name: value for name, value in geometry.items() if name != "constant"}
    return {**moved, "coords": coords, "orbitals": orbitals}


def physics_builder(
    config: Config, molecule: Molecule, scf: SCFResult, hamiltonian: MolecularHamiltonian
) -> Callable[[Any], Physics]:
    """``geometry -> Physics``: what :func:`prepare` builds, from :func:`geometry_arrays`'
    output of this or another geometry of the same molecule (possibly traced), or from
    :func:`with_nuclei`'s (no constant energy: the Hamiltonian's own at its nuclei)."""

    def build(geometry: Any) -> Physics:
        coords, orbitals = geometry["coords"], geometry["orbitals"]
        ansatz = ansatz_from_arrays(config, molecule, scf, orbitals, coords)
        gradient = None
        if config.precision == "mixed":
            gradient = ansatz_from_arrays(config, molecule, scf, orbitals, coords, jnp.float32)
        h = dataclasses.replace(
            hamiltonian, coords=coords, ecp=geometry.get("ecp"), constant=geometry.get("constant")
        )
        uniform = config.sampler.proposal == "uniform"
        return Physics(ansatz, h, gradient, None if uniform else nucleus_step_scale(coords))

    return build


def _basis_digest(basis: Any) -> str:
    """The basis set's contents (shell centres, l, exponents, contractions): the steps carry
    them as constants, and a basis given by name or file can change under the same name."""
    h = hashlib.sha256()
    for shell in basis.shells:
        h.update(repr((shell.center, shell.l)).encode())
        h.update(np.asarray(shell.exponents, np.float64).tobytes())
        h.update(np.asarray(shell.coeffs, np.float64).tobytes())
    return h.hexdigest()


def changed_settings(section: Any) -> tuple[tuple[str, Any], ...]:
    """The settings of a config section that differ from its defaults, as (name, value)
    pairs: a setting added later with a default leaves the keys of earlier runs alone."""
    default = type(section)()
    return tuple(
        (f.name, value)
        for f in dataclasses.fields(section)
        if (value := getattr(section, f.name)) != getattr(default, f.name)
    )


def program_key(config: Config, molecule: Molecule, scf: SCFResult, geometry: Any) -> Hashable:
    """What the compiled steps of a run depend on besides the geometry arrays' values: the
    settings (but not step counts, seeds or the geometry), the atoms, the occupations and
    the arrays' shapes. Runs with equal keys run the same programs."""
    cfg = config
    leaves = jax.tree_util.tree_leaves(geometry)
    return (
        cfg.precision,
        changed_settings(cfg.ansatz),
        changed_settings(dataclasses.replace(cfg.train, steps=0, seed=0, checkpoint_every=1)),
        changed_settings(dataclasses.replace(cfg.sampler, burn_in=0, initial_width=1.0)),
        cfg.eval.decorrelation,
        cfg.eval.dipole,
        changed_settings(cfg.hamiltonian),
        cfg.system.basis_label if cfg.system is not None else None,
        cfg.system.ecp_points if cfg.system is not None else None,
        _basis_digest(scf.basis),
        tuple(np.asarray(molecule.charges, np.float64).tolist()),
        molecule.n_up,
        molecule.n_down,
        scf.occ_up.tobytes(),
        scf.occ_down.tobytes(),
        tuple(np.shape(scf.ci)),
        str(jax.tree_util.tree_structure(geometry)),
        tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves),
    )


def prepare(config: Config, scf: SCFResult | None = None) -> Run:
    """Run Hartree–Fock (or take ``scf``: a run directory's stored reference) and build the
    ansatz and Hamiltonian for a config."""
    if config.system is None:
        raise RunError("prepare() needs a [system]; without a molecule use nnqmc.custom_run")
    molecule = config.system.molecule
    a = config.ansatz
    external = external_terms(config.hamiltonian)  # in the SCF as well as in H
    ext = scf_external(external, molecule.charges, molecule.coords)
    try:
        if scf is None:
            scf = run_scf(molecule, config.system.basis, a.cas, a.determinants, **ext)
    except ECPError as err:
        raise RunError(f"system.ecp: {err}") from None
    except ValueError as err:
        raise RunError(f"ansatz.cas: {err}") from None
    hamiltonian = MolecularHamiltonian(
        molecule.charges,
        molecule.coords,
        molecule.n_up,
        molecule.n_down,
        external,
        ecp=ecp_arrays(atom_potentials(molecule)),
        ecp_points=config.system.ecp_points,
    )
    geometry = geometry_arrays(config, molecule, scf, hamiltonian)
    build = physics_builder(config, molecule, scf, hamiltonian)
    own = build(geometry)  # the ansatz at this geometry, from the same code as the steps'
    return Run(
        config,
        molecule,
        scf,
        hamiltonian,
        own.ansatz,
        gradient_ansatz=own.gradient_ansatz,
        geometry=geometry,
        build_physics=build,
        program_key=program_key(config, molecule, scf, geometry),
    )


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
