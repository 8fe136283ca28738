"""CCSD(T)/CBS valence energies of H2O and the O atom with the ccECP pseudopotential on O.

H2O is taken at the geometry of ``systems/h2o.toml`` (O at the origin, r_OH = 1.8097 bohr,
angle HOH = 104.52 deg; the script checks that the coordinates there give these values). O
carries the ccECP (He core removed, 6 valence electrons); H is all-electron with no ECP.
Basis: ccECP-cc-pVXZ on O and cc-pVXZ on H (``--aug``: the aug- variants of both), X = T, Q, 5
by default. Nothing is frozen: with the ccECP there are no core electrons left.

* H2O: RHF, then RCCSD(T).
* O atom (3P, M_S = 1): UHF, then UCCSD(T) on the UHF orbitals. (PySCF's UCCSD(T) on ROHF
  orbitals would use non-semicanonical orbitals and drop the f_ov term of (T), so UHF is used.)

CBS: HF from the two largest X with the Karton-Martin form E(X) = E_CBS + A (X + 1) exp(-9
sqrt(X)) (the largest-basis HF is printed too); the CCSD and (T) correlation energies each from
the two largest X with E_c(X) = E_c(CBS) + A / X^3 (Helgaker et al., JCP 106, 9639 (1997)).
With three cardinal numbers the uncertainty is |CBS(X-1, X) - CBS(X-2, X-1)|, the change of the
total between the two consecutive pairs. The exact ccECP valence energy of the O atom is
-15.8844(2) Ha (Annaberdiyev et al., JCTC 16, 1482 (2020)): a check of CCSD(T)/CBS itself.

    OMP_NUM_THREADS=1 python bench/h2o_ecp_reference.py --out runs/h2o_ecp_reference.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tomllib
from pyscf import cc, gto, scf

H2O_TOML = Path(__file__).resolve().parent.parent / "systems" / "h2o.toml"
R_OH = 1.8097  # bohr
ANGLE_HOH = 104.52  # degrees
O_EXACT = -15.8844  # Ha, ccECP valence energy of the O atom (Annaberdiyev et al. 2020)
O_EXACT_ERR = 0.0002
CARDINAL = {"D": 2, "T": 3, "Q": 4, "5": 5, "6": 6}


@dataclass
class Point:
    """One basis: energies in Ha, wall time in s."""

    basis: str
    x: int
    nao: int
    e_hf: float
    ec_ccsd: float
    e_t: float
    wall_s: float

    @property
    def ec_ccsd_t(self) -> float:
        return self.ec_ccsd + self.e_t

    @property
    def e_tot(self) -> float:
        return self.e_hf + self.ec_ccsd_t


@functools.cache
def h2o_atoms() -> str:
    """The atoms of ``systems/h2o.toml`` (bohr), after checking them against r_OH and angle."""
    system = tomllib.loads(H2O_TOML.read_text())["system"]
    if system["unit"] != "bohr":
        raise ValueError(f"{H2O_TOML}: expected unit = 'bohr', got {system['unit']!r}")
    lines = [line.split() for line in system["atoms"].strip().splitlines()]
    symbols = [line[0] for line in lines]
    xyz = np.array([[float(v) for v in line[1:4]] for line in lines])
    if symbols != ["O", "H", "H"]:
        raise ValueError(f"{H2O_TOML}: expected atoms O, H, H, got {symbols}")
    d1, d2 = xyz[1] - xyz[0], xyz[2] - xyz[0]
    r1, r2 = float(np.linalg.norm(d1)), float(np.linalg.norm(d2))
    angle = math.degrees(math.acos(float(d1 @ d2) / (r1 * r2)))
    print(f"geometry from {H2O_TOML.name}: r_OH = {r1:.5f}, {r2:.5f} bohr, HOH = {angle:.3f} deg")
    if max(abs(r1 - R_OH), abs(r2 - R_OH)) > 1e-4 or abs(angle - ANGLE_HOH) > 1e-2:
        raise ValueError(f"geometry is not r_OH = {R_OH} bohr, HOH = {ANGLE_HOH} deg")
    return "; ".join(" ".join(line[:4]) for line in lines)


def basis_names(x: str, aug: bool) -> dict[str, str]:
    prefix = "aug-" if aug else ""
    return {"O": f"ccecp-{prefix}cc-pv{x.lower()}z", "H": f"{prefix}cc-pv{x.lower()}z"}


def build(system: str, x: str, aug: bool, max_memory: int, verbose: int) -> gto.Mole:
    basis = basis_names(x, aug)
    if system == "h2o":
        atom, spin = h2o_atoms(), 0
    else:
        atom, spin = "O 0 0 0", 2
        basis = {"O": basis["O"]}
    return gto.M(
        atom=atom,
        unit="bohr",
        basis=basis,
        ecp={"O": "ccecp"},
        charge=0,
        spin=spin,
        max_memory=max_memory,
        verbose=verbose,
    )


def run_point(system: str, x: str, aug: bool, max_memory: int, verbose: int) -> Point:
    """HF and CCSD(T) in one basis (RHF/RCCSD(T) for H2O, UHF/UCCSD(T) for O)."""
    start = time.perf_counter()
    mol = build(system, x, aug, max_memory, verbose)
    mf = scf.RHF(mol) if system == "h2o" else scf.UHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    if system == "o":
        # make sure the UHF solution is a minimum (not a saddle point of the orbital rotations)
        for _ in range(5):
            mo, stable = mf.stability(return_status=True)[::2]
            if stable:
                break
            mf.kernel(mf.make_rdm1(mo, mf.mo_occ))
        else:
            raise RuntimeError(f"o {x}: UHF stays internally unstable")
    if not mf.converged:
        raise RuntimeError(f"{system} {x}: SCF did not converge")
    mycc = cc.CCSD(mf)  # RCCSD for RHF, UCCSD for UHF; frozen = None: all electrons correlated
    mycc.conv_tol = 1e-8
    mycc.kernel()
    if not mycc.converged:
        raise RuntimeError(f"{system} {x}: CCSD did not converge")
    e_t = float(mycc.ccsd_t())
    name = basis_names(x, aug)["O"] + ("" if system == "o" else " / " + basis_names(x, aug)["H"])
    return Point(
        basis=name,
        x=CARDINAL[x],
        nao=mol.nao_nr(),
        e_hf=float(mf.e_tot),
        ec_ccsd=float(mycc.e_corr),
        e_t=e_t,
        wall_s=time.perf_counter() - start,
    )


def hf_cbs(a: Point, b: Point) -> float:
    """Karton-Martin two-point HF limit from a (smaller X) and b (larger X)."""

    def f(x: int) -> float:
        return (x + 1) * math.exp(-9.0 * math.sqrt(x))

    amp = (a.e_hf - b.e_hf) / (f(a.x) - f(b.x))
    return b.e_hf - amp * f(b.x)


def corr_cbs(ea: float, xa: int, eb: float, xb: int) -> float:
    """Two-point X^-3 limit of a correlation energy (Helgaker et al. 1997)."""
    return (xb**3 * eb - xa**3 * ea) / (xb**3 - xa**3)


def cbs(a: Point, b: Point) -> dict[str, float]:
    e_hf = hf_cbs(a, b)
    ec_ccsd = corr_cbs(a.ec_ccsd, a.x, b.ec_ccsd, b.x)
    e_t = corr_cbs(a.e_t, a.x, b.e_t, b.x)
    return {
        "pair": f"({a.x},{b.x})",
        "e_hf": e_hf,
        "e_hf_largest_basis": b.e_hf,
        "ec_ccsd": ec_ccsd,
        "e_t": e_t,
        "ec_ccsd_t": ec_ccsd + e_t,
        "e_tot": e_hf + ec_ccsd + e_t,
    }


def report(system: str, points: list[Point]) -> dict:
    title = {
        "h2o": "H2O (RHF / RCCSD(T)), ccECP on O, H all-electron",
        "o": "O atom 3P (UHF / UCCSD(T)), ccECP",
    }[system]
    print(f"\n{title}")
    head = f"{'basis':<40} {'nao':>4} {'E_HF':>13} {'Ec(CCSD)':>12} {'Ec(CCSD(T))':>12}"
    print(head + f" {'E_tot':>13} {'wall/s':>8}")
    for p in points:
        print(
            f"{p.basis:<40} {p.nao:>4} {p.e_hf:>13.7f} {p.ec_ccsd:>12.7f} {p.ec_ccsd_t:>12.7f}"
            f" {p.e_tot:>13.7f} {p.wall_s:>8.1f}"
        )
    out: dict = {"system": system, "method": title, "points": [], "cbs": []}
    out["points"] = [asdict(p) | {"ec_ccsd_t": p.ec_ccsd_t, "e_tot": p.e_tot} for p in points]
    if len(points) < 2:
        return out
    estimates = [cbs(a, b) for a, b in zip(points[:-1], points[1:], strict=True)]
    for c in estimates:
        print(
            f"{'CBS ' + c['pair'] + ' HF: Karton-Martin, corr: X^-3':<40} {'':>4}"
            f" {c['e_hf']:>13.7f} {c['ec_ccsd']:>12.7f} {c['ec_ccsd_t']:>12.7f}"
            f" {c['e_tot']:>13.7f}"
        )
    best = estimates[-1]
    spread = abs(estimates[-1]["e_tot"] - estimates[-2]["e_tot"]) if len(estimates) > 1 else None
    hf_shift = best["e_hf"] - best["e_hf_largest_basis"]
    print(
        f"CBS{best['pair']}: E_tot = {best['e_tot']:.6f} Ha"
        + (f" +- {spread:.6f} (|CBS{best['pair']} - CBS{estimates[-2]['pair']}|)" if spread else "")
        + f"; HF limit - largest-basis HF = {1e3 * hf_shift:+.3f} mHa"
    )
    if system == "o":
        err = best["e_tot"] - O_EXACT
        print(f"exact ccECP O: {O_EXACT} +- {O_EXACT_ERR} Ha; CBS - exact = {1e3 * err:+.2f} mHa")
        out["exact"] = {"e_tot": O_EXACT, "err": O_EXACT_ERR, "cbs_minus_exact": err}
    out["cbs"] = estimates
    out["best"] = {"e_tot": best["e_tot"], "pair": best["pair"], "uncertainty": spread}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems", nargs="+", choices=["o", "h2o"], default=["o", "h2o"], help="what to run"
    )
    parser.add_argument(
        "--cardinals",
        nargs="+",
        choices=list(CARDINAL),
        default=["T", "Q", "5"],
        help="cardinal numbers X, ascending (default T Q 5)",
    )
    parser.add_argument("--aug", action="store_true", help="aug-cc-pVXZ on both O and H")
    parser.add_argument("--max-memory", type=int, default=8000, help="PySCF max_memory in MB")
    parser.add_argument("--verbose", type=int, default=0, help="PySCF verbosity")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    xs = sorted(args.cardinals, key=CARDINAL.__getitem__)

    results = {
        "geometry_bohr": h2o_atoms(),
        "basis": basis_names("X", args.aug),
        "ecp": {"O": "ccecp"},
        "frozen_core": None,
        "systems": {},
    }
    for system in args.systems:
        points = []
        for x in xs:
            points.append(run_point(system, x, args.aug, args.max_memory, args.verbose))
            p = points[-1]
            done = f"  done {system} {p.basis}: E_tot = {p.e_tot:.7f} ({p.wall_s:.0f} s)"
            print(done, flush=True)
        results["systems"][system] = report(system, points)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
