"""A small, self-consistent PES dataset without QMC: RHF energies and analytic forces (PySCF)
at randomly displaced geometries of H2O or H2, with synthetic error bars.

For testing exports and force-field trainers (and fits) in seconds. The labels are exact
RHF values unless ``noise`` is given, so integrated forces agree with the energies; the
error bars vary from geometry to geometry (``energy_err`` and ``force_err`` times a factor
drawn from [0.5, 2]) so that anything derived from them is not uniform.

    python -m nnqmc.pes.synthetic OUT.h5 [--molecule h2o|h2] [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from ..molecule import ELEMENTS, Molecule
from .dataset import Dataset, new_dataset, write_dataset

# Near-equilibrium geometries in bohr (RHF/STO-3G-like; the exact minimum does not matter).
MOLECULES: dict[str, tuple[tuple[int, ...], np.ndarray]] = {
    "h2o": ((8, 1, 1), np.array([[0.0, 0.0, 0.22], [0.0, 1.43, -0.89], [0.0, -1.43, -0.89]])),
    "h2": ((1, 1), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]])),
}


def rhf_energy_forces(
    atomic_numbers: Sequence[int], positions: np.ndarray, basis: str = "sto-3g"
) -> tuple[float, np.ndarray]:
    """RHF energy (hartree) and forces -dE/dR (hartree/bohr) at ``positions`` (bohr)."""
    from pyscf import lib

    from ..scf import hf_energy_forces

    molecule = Molecule(tuple(ELEMENTS[int(z) - 1] for z in atomic_numbers), positions)
    with lib.with_omp_threads(1):  # tiny molecules: threads only contend
        return hf_energy_forces(molecule, basis)


def displaced_geometries(
    reference: np.ndarray, count: int, amplitude: float, seed: int
) -> np.ndarray:
    """``count`` Gaussian displacements (std ``amplitude`` bohr) of ``reference``; the
    first geometry is the reference itself."""
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0.0, amplitude, size=(count, *reference.shape))
    shifts[0] = 0.0
    return reference[None] + shifts


def rhf_dataset(
    molecule: str = "h2o",
    count: int = 20,
    amplitude: float = 0.05,
    basis: str = "sto-3g",
    seed: int = 0,
    energy_err: float = 2e-4,
    force_err: float = 1e-3,
    noise: bool = False,
) -> Dataset:
    """A finished dataset of ``count`` displaced geometries with RHF labels (atomic units)
    and synthetic error bars around ``energy_err`` (Ha) and ``force_err`` (Ha/bohr); with
    ``noise``, Gaussian noise of those standard deviations is added to the labels."""
    if molecule not in MOLECULES:
        raise ValueError(f"unknown molecule {molecule!r} (valid: {', '.join(MOLECULES)})")
    numbers, reference = MOLECULES[molecule]
    positions = displaced_geometries(reference, count, amplitude, seed)
    labels = np.arange(count, dtype=np.float64)[:, None]
    attrs = {
        "name": f"{molecule}-rhf",
        "theory": f"RHF/{basis} (PySCF), synthetic error bars",
        "kind": "synthetic",
        "shard": "",
    }
    data = new_dataset(np.array(numbers), positions, labels, attrs, forces=True, ccsd_t=False)
    rng = np.random.default_rng(seed + 1)
    e_err = energy_err * rng.uniform(0.5, 2.0, count)
    f_err = force_err * rng.uniform(0.5, 2.0, (count, len(numbers), 3))
    for k in range(count):
        energy, forces = rhf_energy_forces(numbers, positions[k], basis)
        hf_energy = energy
        if noise:
            energy += rng.normal(0.0, e_err[k])
            forces = forces + rng.normal(0.0, f_err[k])
        data.set_row(
            k,
            energy=energy,
            energy_err=e_err[k],
            hf_energy=hf_energy,
            forces=forces,
            forces_err=f_err[k],
            status="done",
        )
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Write a synthetic dataset file (the module docstring's command line)."""
    parser = argparse.ArgumentParser(prog="python -m nnqmc.pes.synthetic", description=__doc__)
    parser.add_argument("out", metavar="OUT.h5")
    parser.add_argument("--molecule", default="h2o", choices=sorted(MOLECULES))
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", action="store_true", help="add noise of the error bars")
    args = parser.parse_args(argv)
    data = rhf_dataset(args.molecule, args.count, seed=args.seed, noise=args.noise)
    write_dataset(args.out, data)
    print(f"{args.out}: {data.n} geometries ({args.molecule}, RHF/STO-3G)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
