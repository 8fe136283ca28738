"""The double well of docs/thermal.md: the flow (reverse KL) against ASE Langevin MD
started in one well, at an equal number of energy evaluations.

    python bench/thermal_double_well.py [--steps 1000] [--n 20000] [--stride 60]

u(x, y) = 5 (x² - 1)² + 0.5 x + y²/(2·0.5²) in kT (x, y in Å for MD, which also has a
harmonic z of the same width), wells at x ≈ ±1, barrier ≈ 5 kT; ΔF = -kT log(P(x>0)/P(x<0))."""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from nnqmc.estimate import estimate
from nnqmc.thermal.flow import FlowOptions, make_flow, train_flow
from nnqmc.thermal.md import MDOptions, langevin_frames
from nnqmc.thermal.weights import effective_sample_size, free_energy_difference, normalised_weights

H, TILT, SY, T = 5.0, 0.5, 0.5, 300.0


def u(q):
    return H * (q[0] ** 2 - 1) ** 2 + TILT * q[0] + 0.5 * (q[1] / SY) ** 2


def exact() -> float:
    x = np.linspace(-3.0, 3.0, 600_001)
    p = np.exp(-(H * (x * x - 1) ** 2 + TILT * x))
    return float(-np.log(p[x > 0].sum() / p[x < 0].sum()))


def by_flow(steps: int, n: int):
    t0 = time.perf_counter()
    o = FlowOptions(steps=steps)
    flow, _ = train_flow(make_flow(2, np.zeros(2), np.ones(2), options=o), lambda q: -u(q), o)
    q, log_q = flow.sample_and_log_prob(jax.random.key(5), n)
    w = normalised_weights(-np.asarray(jax.vmap(u)(q)) - np.asarray(log_q))
    dF = free_energy_difference(np.asarray(q[:, 0]) > 0, w)
    wall = time.perf_counter() - t0
    return dF.mean, dF.error, effective_sample_size(w), steps * o.batch + n, wall


def by_md(evaluations: int, stride: int):
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes

    kt = units.kB * T

    class DoubleWell(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            x, y, z = self.atoms.positions[0]
            e = H * (x * x - 1) ** 2 + TILT * x + 0.5 * (y * y + z * z) / SY**2
            grad = [4 * H * x * (x * x - 1) + TILT, y / SY**2, z / SY**2]
            self.results = {"energy": kt * e, "forces": -kt * np.array([grad])}

    t0 = time.perf_counter()
    atoms = Atoms("H", positions=[[-1.0, 0.0, 0.0]])
    atoms.calc = DoubleWell()
    options = MDOptions(equilibration=2000, stride=stride)
    n = (evaluations - 1 - options.equilibration) // stride
    x = langevin_frames(atoms, n, T, options)[:, 0, 0]
    right = estimate((x > 0).astype(float))
    p = right.mean
    dF = -np.log(p / (1 - p)) if 0 < p < 1 else np.inf
    crossings = int(np.sum(np.diff(np.sign(x)) != 0))
    wall = time.perf_counter() - t0
    return dF, right.error / (p * (1 - p)), options.evaluations(n), crossings, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--stride", type=int, default=MDOptions().stride)
    args = parser.parse_args()
    print(f"quadrature: ΔF = {exact():.4f} kT")
    dF, err, ess, evals, wall = by_flow(args.steps, args.n)
    print(
        f"flow: ΔF = {dF:.4f} ± {err:.4f} kT, ESS {100 * ess:.1f} %, {evals} evaluations, "
        f"{wall:.0f} s"
    )
    dF, err, evals, crossings, wall = by_md(evals, args.stride)
    print(
        f"MD:   ΔF = {dF:.4f} ± {err:.4f} kT (blocking), {crossings} well changes between "
        f"frames, {evals} evaluations ({MDOptions().friction:g}/fs, stride {args.stride}), "
        f"{wall:.0f} s"
    )


if __name__ == "__main__":
    main()
