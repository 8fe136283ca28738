"""Near-exact H2 energies on a dense grid of bond lengths, for ``systems/h2_scan_dense.toml``.

For two electrons CCSD is FCI, so the only error in the basis is the basis itself. This
script extrapolates the correlation energy from cc-pVQZ and cc-pV5Z (``E_c(X) = E_CBS +
A / X^3``; HF from cc-pV5Z), then removes what is left by comparing with the exact
energies of ``systems/h2_scan.toml`` (``REFERENCE_ENERGIES.md``, Sims & Hagstrom 2006; 1.6 bohr:
Kolos & Wolniewicz): the difference exact - CBS (between -0.23 and +0.06 mHa) is
interpolated linearly in R and added. At the tabulated lengths the result is the exact
value; in between, the uncertainty is of the order of the change of that difference
between neighbouring nodes (<= 0.1 mHa between 3 and 4 bohr, <= 0.02 mHa below 3 bohr).

    python bench/h2_reference.py 1.0 4.0 13     # start, stop, count (bohr)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tomllib
from pyscf import cc, gto, scf


def exact_energies() -> dict[float, float]:
    """bohr -> Ha: the exact energies that ``systems/h2_scan.toml`` carries."""
    path = Path(__file__).resolve().parent.parent / "systems" / "h2_scan.toml"
    scan = tomllib.loads(path.read_text())["scan"]
    return dict(zip(scan["values"], scan["reference"], strict=True))


def two_electron_energy(r: float, basis: str) -> tuple[float, float]:
    """(RHF, CCSD = FCI) energies of H2 at ``r`` bohr."""
    mol = gto.M(atom=f"H 0 0 0; H 0 0 {r}", unit="bohr", basis=basis, verbose=0)
    mf = scf.RHF(mol).run()
    return mf.e_tot, cc.CCSD(mf).run().e_tot


def cbs_energy(r: float) -> float:
    (hf4, e4), (hf5, e5) = two_electron_energy(r, "cc-pvqz"), two_electron_energy(r, "cc-pv5z")
    c4, c5 = e4 - hf4, e5 - hf5
    return hf5 + (5**3 * c5 - 4**3 * c4) / (5**3 - 4**3)


def main() -> None:
    start, stop, count = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    grid = np.round(np.linspace(start, stop, count), 6)
    exact = exact_energies()
    nodes = np.array(sorted(exact))
    correction = np.array([exact[r] - cbs_energy(r) for r in nodes])
    print("exact - CBS(Q,5) at the nodes (mHa):", np.round(1e3 * correction, 4).tolist())
    energies = [
        exact.get(float(r), cbs_energy(float(r)) + float(np.interp(r, nodes, correction)))
        for r in grid
    ]
    print("values =", grid.tolist())
    print("reference =", [round(float(e), 7) for e in energies])


if __name__ == "__main__":
    main()
