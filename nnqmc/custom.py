"""Runs built from Python objects: settings without a TOML file, a Hamiltonian and ansatz of
your own, walkers for systems without nuclei, and the default observables.

    config = settings(train={"steps": 500, "walkers": 256}, eval={"steps": 200})
    run = custom_run(my_hamiltonian, my_ansatz, config)
    trained = train(run); result = evaluate(run, trained.params, trained.walkers, trained.width)

A molecule goes through :func:`settings` (``molecule=``) and :func:`nnqmc.prepare`, which
runs Hartree–Fock (with the ``[hamiltonian]`` terms) exactly as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .ansatz import Ansatz
from .config import DEFAULT_BASIS, Config, config_from_dict
from .external import Observable, external_terms, standard_observables
from .hamiltonian import Hamiltonian, nuclei, with_external
from .molecule import Molecule
from .run_setup import Run, precision_dtype
from .sampler import init_walkers

__all__ = ["WalkerInit", "custom_run", "default_observables", "gaussian_walkers", "settings"]

# (key, n_walkers) -> walkers (n_walkers, n_up + n_down, 3), spin-up electrons first.
WalkerInit = Callable[[jax.Array, int], jax.Array]


def settings(
    name: str = "custom",
    *,
    molecule: Molecule | None = None,
    basis: str = DEFAULT_BASIS,
    **sections: Any,
) -> Config:
    """A validated :class:`~nnqmc.config.Config` from keyword sections, as in a TOML file.

    ``settings(train={"steps": 400}, eval={"steps": 200}, hamiltonian={"field": [0, 0,
    0.01]})``; any other top-level key (``precision="float32"``) works too. With
    ``molecule`` (e.g. ``Molecule.from_pyscf(mol)``) the config has a ``[system]`` and
    :func:`nnqmc.prepare` runs HF in ``basis``; without, it is for :func:`custom_run`, and
    ``precision`` defaults to ``"float64"`` there: the ansatz is then the caller's, and
    ``"mixed"`` needs the caller's float32 copy of it (``custom_run(gradient_ansatz=...)``).
    Invalid values raise :class:`~nnqmc.config.ConfigError` naming the key.
    """
    data: dict[str, Any] = {"name": name, **sections}
    if molecule is None:
        data.setdefault("precision", "float64")
    if molecule is not None:
        data["system"] = {
            "atoms": molecule.atoms_text(),
            "unit": "bohr",
            "charge": molecule.charge,
            "spin": molecule.spin,
            "basis": basis,
        }
        if molecule.ecp:
            data["system"]["ecp"] = dict(molecule.ecp)
    return config_from_dict(data, source="settings()", require_system=molecule is not None)


def gaussian_walkers(
    n_up: int,
    n_down: int,
    width: float = 1.0,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    dtype=jnp.float64,
) -> WalkerInit:
    """Initial walkers for systems without nuclei: every electron ~ N(center, width^2)."""
    n_elec = n_up + n_down
    c = np.asarray(center, dtype=np.float64).reshape(3)

    def init(key: jax.Array, n_walkers: int) -> jax.Array:
        noise = jax.random.normal(key, (n_walkers, n_elec, 3), dtype)
        return (jnp.asarray(c, dtype) + width * noise).astype(dtype)

    return init


def _default_walkers(hamiltonian: Hamiltonian, dtype) -> WalkerInit:
    """Around the nuclei if there are any (charge from the electron count), else a blob."""
    charges, coords = nuclei(hamiltonian)
    n_up, n_down = hamiltonian.n_up, hamiltonian.n_down
    if len(charges) == 0:
        return gaussian_walkers(n_up, n_down, dtype=dtype)
    z = np.rint(charges)
    charge = int(z.sum()) - n_up - n_down
    return lambda key, n: init_walkers(key, coords, z, charge, n_up, n_down, n, dtype)


def custom_run(
    hamiltonian: Hamiltonian,
    ansatz: Ansatz,
    config: Config | None = None,
    *,
    molecule: Molecule | None = None,
    initial_walkers: WalkerInit | None = None,
    gradient_ansatz: Ansatz | None = None,
) -> Run:
    """A :class:`~nnqmc.run_setup.Run` from objects, for :func:`nnqmc.train`/:func:`nnqmc.evaluate`.

    ``config`` (default ``settings()``) supplies the train/sampler/eval settings; its
    ``[hamiltonian]`` terms are added to ``hamiltonian``. ``initial_walkers`` defaults to
    electrons around the nuclei of ``hamiltonian`` (or ``molecule``), or to
    :func:`gaussian_walkers` of width 1 bohr at the origin for a system without nuclei.
    ``gradient_ansatz``: for ``precision = "mixed"`` (and only then), the same ansatz built
    with ``dtype=jnp.float32``, whose per-walker gradients the optimizer uses.
    """
    config = settings() if config is None else config
    if (ansatz.n_up, ansatz.n_down) != (hamiltonian.n_up, hamiltonian.n_down):
        raise ValueError(
            f"the ansatz has {ansatz.n_up} up and {ansatz.n_down} down electrons, the "
            f"Hamiltonian {hamiltonian.n_up} and {hamiltonian.n_down}"
        )
    hamiltonian = with_external(hamiltonian, external_terms(config.hamiltonian))
    dtype = precision_dtype(config.precision)
    if initial_walkers is None and molecule is None:
        initial_walkers = _default_walkers(hamiltonian, dtype)
    if gradient_ansatz is not None and config.precision != "mixed":
        raise ValueError('gradient_ansatz is only used with precision = "mixed"')
    return Run(config, molecule, None, hamiltonian, ansatz, initial_walkers, gradient_ansatz)


def default_observables(run: Run) -> dict[str, Observable]:
    """What :func:`nnqmc.evaluate` always reports: the dipole moment unless
    ``eval.dipole = false``."""
    return standard_observables(run.hamiltonian) if run.config.eval.dipole else {}
