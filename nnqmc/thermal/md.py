"""Langevin molecular dynamics with ASE (``ase.md.langevin.Langevin``, needs ASE): frames
of exp(-E/kT) from any ASE calculator, e.g. ``nnqmc.ForceField``.

Velocities start from a Maxwell–Boltzmann distribution at T; ``equilibration`` steps are
discarded, then a frame is kept every ``stride`` steps. Each step costs one force (and
energy) evaluation. The friction γ sets how fast the thermostat forgets: the energy of an
underdamped mode relaxes as exp(-γt), so frames ``stride`` steps apart are nearly
independent only when stride·dt ≫ 1/γ (and ≫ the molecule's own vibration period). The
defaults, γ = 0.05/fs and a frame every 60 steps of 0.5 fs (30 fs = 1.5/γ, 60 force
evaluations a frame), leave a correlation ≈ exp(-1.5) ≈ 0.2 between neighbouring frames;
the errors of averages come from blocking the series (with the integrated
autocorrelation time as a floor, :meth:`.sample.ThermalSample.averages`), not from
assuming independence. (The former 0.01/fs with 20 steps, 10 fs = 0.1/γ, gave ~10
correlated frames per relaxation time.) A strong friction overdamps soft modes
(torsions, γ > 2ω), slowing their diffusion as γ/ω²: raise ``stride`` rather than γ.

Atomic positions in Å (ASE's units). The centre of mass diffuses freely
(``fixcm=False``): ASE's ``fixcm=True`` does not sample NVT exactly for small molecules (a
diatomic's bond variance came out twice too large with it), and the energy ignores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms


@dataclass(frozen=True)
class MDOptions:
    """Time step (fs), friction (1/fs), equilibration steps, steps between frames, seed."""

    timestep: float = 0.5
    friction: float = 0.05
    equilibration: int = 2000
    stride: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        if self.timestep <= 0 or self.friction <= 0:
            raise ValueError(
                f"MD time step and friction must be positive, got {self.timestep:g} fs "
                f"and {self.friction:g}/fs"
            )
        if self.equilibration < 0 or self.stride <= 0:
            raise ValueError("MD equilibration must be >= 0 and the stride positive")

    def settings(self) -> dict[str, float | int]:
        """The options with their units in the names, for output files."""
        d = asdict(self)
        return {
            "timestep_fs": d["timestep"],
            "friction_per_fs": d["friction"],
            "equilibration_steps": d["equilibration"],
            "stride_steps": d["stride"],
            "seed": d["seed"],
        }

    def evaluations(self, n: int) -> int:
        """Force evaluations for n frames: the first forces, then one per step."""
        return 1 + self.equilibration + n * self.stride


def _thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta: ``thermalize_momenta`` (ASE ≥ 3.29, which deprecates
    ``MaxwellBoltzmannDistribution``), else the older name."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        return
    thermalize_momenta(atoms, temperature, rng=rng)


def langevin_frames(atoms: Atoms, n: int, temperature: float, options: MDOptions) -> np.ndarray:
    """n frames (n, n_atoms, 3), Å, of Langevin dynamics at ``temperature`` (K) of ``atoms``
    (an ``ase.Atoms`` with its calculator attached; moved in place)."""
    from ase import units
    from ase.md.langevin import Langevin

    rng = np.random.default_rng(options.seed)
    _thermalize(atoms, temperature, rng)
    dyn = Langevin(
        atoms,
        options.timestep * units.fs,
        temperature_K=temperature,
        friction=options.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    if options.equilibration:
        dyn.run(options.equilibration)
    frames = np.empty((n, len(atoms), 3))
    for k in range(n):
        dyn.run(options.stride)
        frames[k] = atoms.positions
    return frames
