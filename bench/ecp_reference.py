"""CCSD(T)/CBS valence energies with the ccECP pseudopotential: H2O, the O atom and HCl.

ECP atoms carry the ccECP (O: He core removed, 6 valence electrons; Cl: Ne core removed, 7
valence electrons); H is all-electron with no ECP. Basis: ccECP-cc-pVXZ on O / Cl and cc-pVXZ
on H (``--aug``: the aug- variants of both), X = T, Q, 5 by default. Nothing is frozen: with the
ccECP there are no core electrons left.

* H2O at the geometry of ``systems/h2o.toml`` (O at the origin, r_OH = 1.8097 bohr, angle HOH =
  104.52 deg; the script checks that the coordinates there give these values): RHF, RCCSD(T).
* O atom (3P, M_S = 1): UHF, then UCCSD(T) on the UHF orbitals. (PySCF's UCCSD(T) on ROHF
  orbitals would use non-semicanonical orbitals and drop the f_ov term of (T), so UHF is used.)
* HCl (1Sigma+): Cl at the origin, H at (0, 0, r) bohr; RHF, RCCSD(T). At the experimental
  bond length r_e = 1.2746 A = 2.4087 bohr all of ``--cardinals`` (default T Q 5); at the other
  ``--hcl-bonds`` (default 2.2 and 2.6 bohr) ``--scan-cardinals`` (default T Q), so that the
  scan of ``systems/hcl_ecp_scan.toml`` has a CCSD(T)/CBS(T,Q) reference curve.

CBS: HF from the two largest X with the Karton-Martin form E(X) = E_CBS + A (X + 1) exp(-9
sqrt(X)) (the largest-basis HF is printed too); the CCSD and (T) correlation energies each from
the two largest X with E_c(X) = E_c(CBS) + A / X^3 (Helgaker et al., JCP 106, 9639 (1997)).
Uncertainty: with three cardinal numbers |CBS(X-1, X) - CBS(X-2, X-1)|, the change of the
total between the two consecutive pairs; with two, 0.5 |CBS(X-1, X) - E(X)|, half the
extrapolation step (the HCl curve uses this rule at every bond length, r_e included, and the
r_e entry prints both rules for comparison). The exact ccECP valence energy of the O atom is
-15.8844(2) Ha (Annaberdiyev et al., JCTC 16, 1482 (2020)): a check of CCSD(T)/CBS itself.

    OMP_NUM_THREADS=1 python bench/ecp_reference.py --out runs/ecp_reference.json
    OMP_NUM_THREADS=1 python bench/ecp_reference.py --systems hcl --out runs/hcl_ecp_reference.json

``bench/h2o_ecp_reference.py`` runs this script with ``--systems o h2o`` as its default.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pyscf import cc, gto, scf

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "systems"
H2O_TOML = SYSTEMS_DIR / "h2o.toml"
R_OH = 1.8097  # bohr
ANGLE_HOH = 104.52  # degrees
R_HCL = 2.4087  # bohr: 1.2746 A, experimental r_e of HCl
HCL_BONDS = (2.2, R_HCL, 2.6)  # bohr
O_EXACT = -15.8844  # Ha, ccECP valence energy of the O atom (Annaberdiyev et al. 2020)
O_EXACT_ERR = 0.0002
CARDINAL = {"D": 2, "T": 3, "Q": 4, "5": 5, "6": 6}
ECP = {"O": "ccecp", "Cl": "ccecp"}


@dataclass(frozen=True)
class Target:
    """One molecule or atom at one geometry (bohr)."""

    system: str  # "o", "h2o" or "hcl"
    atom: str
    spin: int
    heavy: str  # the ECP element
    title: str
    r_bohr: float | None = None

    @property
    def unrestricted(self) -> bool:
        return self.spin != 0

    @property
    def elements(self) -> list[str]:
        return sorted({line.split()[0] for line in self.atom.split(";")}, key=self.atom.index)


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


def hcl_atoms(r: float) -> str:
    return f"Cl 0.0 0.0 0.0; H 0.0 0.0 {r:.6f}"


def check_hcl_toml() -> None:
    """Warn (only) if ``systems/hcl_ecp.toml`` is not HCl at r_e = 2.4087 bohr along z."""
    path = SYSTEMS_DIR / "hcl_ecp.toml"
    if not path.exists():
        return
    system = tomllib.loads(path.read_text())["system"]
    lines = [line.split() for line in system["atoms"].strip().splitlines()]
    xyz = np.array([[float(v) for v in line[1:4]] for line in lines])
    ok = (
        system.get("unit") == "bohr"
        and [line[0] for line in lines] == ["Cl", "H"]
        and abs(float(np.linalg.norm(xyz[1] - xyz[0])) - R_HCL) < 1e-4
    )
    print(f"geometry of {path.name}: " + ("matches" if ok else "DIFFERS FROM") + f" r = {R_HCL}")


def targets(system: str, bonds: Sequence[float]) -> list[Target]:
    if system == "h2o":
        title = "H2O (RHF / RCCSD(T)), ccECP on O, H all-electron"
        return [Target("h2o", h2o_atoms(), 0, "O", title)]
    if system == "o":
        return [Target("o", "O 0 0 0", 2, "O", "O atom 3P (UHF / UCCSD(T)), ccECP")]
    title = "HCl (RHF / RCCSD(T)), ccECP on Cl, H all-electron, Cl at 0, H at (0, 0, {r}) bohr"
    return [Target("hcl", hcl_atoms(r), 0, "Cl", title.format(r=r), r) for r in bonds]


def basis_names(target: Target, x: str, aug: bool) -> dict[str, str]:
    prefix = "aug-" if aug else ""
    names = {target.heavy: f"ccecp-{prefix}cc-pv{x.lower()}z", "H": f"{prefix}cc-pv{x.lower()}z"}
    return {el: names[el] for el in target.elements}


def run_point(target: Target, x: str, aug: bool, max_memory: int, verbose: int) -> Point:
    """HF and CCSD(T) in one basis (RHF/RCCSD(T) or UHF/UCCSD(T))."""
    start = time.perf_counter()
    basis = basis_names(target, x, aug)
    mol = gto.M(
        atom=target.atom,
        unit="bohr",
        basis=basis,
        ecp={target.heavy: ECP[target.heavy]},
        charge=0,
        spin=target.spin,
        max_memory=max_memory,
        verbose=verbose,
    )
    mf = scf.UHF(mol) if target.unrestricted else scf.RHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    # make sure the HF solution is a minimum (not a saddle point of the orbital rotations)
    for _ in range(5):
        mo, stable = mf.stability(return_status=True)[::2]
        if stable:
            break
        mf.kernel(mf.make_rdm1(mo, mf.mo_occ))
    else:
        raise RuntimeError(f"{target.system} {x}: HF stays internally unstable")
    if not mf.converged:
        raise RuntimeError(f"{target.system} {x}: SCF did not converge")
    mycc = cc.CCSD(mf)  # RCCSD for RHF, UCCSD for UHF; frozen = None: all electrons correlated
    mycc.conv_tol = 1e-8
    mycc.kernel()
    if not mycc.converged:
        raise RuntimeError(f"{target.system} {x}: CCSD did not converge")
    e_t = float(mycc.ccsd_t())
    return Point(
        basis=" / ".join(basis.values()),
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
    e_tot = e_hf + ec_ccsd + e_t
    return {
        "pair": f"({a.x},{b.x})",
        "e_hf": e_hf,
        "e_hf_largest_basis": b.e_hf,
        "ec_ccsd": ec_ccsd,
        "e_t": e_t,
        "ec_ccsd_t": ec_ccsd + e_t,
        "e_tot": e_tot,
        # half the extrapolation step: the uncertainty when only two cardinal numbers exist
        "half_step": 0.5 * abs(e_tot - b.e_tot),
    }


def report(target: Target, points: list[Point]) -> dict:
    print(f"\n{target.title}")
    head = f"{'basis':<40} {'nao':>4} {'E_HF':>13} {'Ec(CCSD)':>12} {'Ec(CCSD(T))':>12}"
    print(head + f" {'E_tot':>13} {'wall/s':>8}")
    for p in points:
        print(
            f"{p.basis:<40} {p.nao:>4} {p.e_hf:>13.7f} {p.ec_ccsd:>12.7f} {p.ec_ccsd_t:>12.7f}"
            f" {p.e_tot:>13.7f} {p.wall_s:>8.1f}"
        )
    out: dict = {
        "system": target.system,
        "method": target.title,
        "geometry_bohr": target.atom,
        "basis": basis_names(target, "X", False),
        "ecp": {target.heavy: ECP[target.heavy]},
        "points": [asdict(p) | {"ec_ccsd_t": p.ec_ccsd_t, "e_tot": p.e_tot} for p in points],
        "cbs": [],
    }
    if target.r_bohr is not None:
        out["r_bohr"] = target.r_bohr
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
    if len(estimates) > 1:
        spread = abs(estimates[-1]["e_tot"] - estimates[-2]["e_tot"])
        rule = f"|CBS{best['pair']} - CBS{estimates[-2]['pair']}|"
    else:
        spread = best["half_step"]
        rule = f"0.5 |CBS{best['pair']} - E(X={points[-1].x})|"
    hf_shift = best["e_hf"] - best["e_hf_largest_basis"]
    print(
        f"CBS{best['pair']}: E_tot = {best['e_tot']:.6f} +- {spread:.6f} Ha ({rule})"
        f"; HF limit - largest-basis HF = {1e3 * hf_shift:+.3f} mHa"
    )
    if len(estimates) > 1:
        print(
            f"  (0.5 |CBS{best['pair']} - E(X={points[-1].x})| = {best['half_step']:.6f};"
            f" 0.5 |CBS{estimates[-2]['pair']} - E(X={points[-2].x})| ="
            f" {estimates[-2]['half_step']:.6f})"
        )
    if target.system == "o":
        err = best["e_tot"] - O_EXACT
        print(f"exact ccECP O: {O_EXACT} +- {O_EXACT_ERR} Ha; CBS - exact = {1e3 * err:+.2f} mHa")
        out["exact"] = {"e_tot": O_EXACT, "err": O_EXACT_ERR, "cbs_minus_exact": err}
    out["cbs"] = estimates
    out["best"] = {
        "e_tot": best["e_tot"],
        "pair": best["pair"],
        "uncertainty": spread,
        "rule": rule,
    }
    return out


def curve(entries: list[dict], pair: str) -> list[dict]:
    """The CBS(pair) energy at every bond length, uncertainty 0.5 |CBS - E(largest X)|."""
    rows = []
    for entry in entries:
        (c,) = [c for c in entry["cbs"] if c["pair"] == pair]
        rows.append({"r_bohr": entry["r_bohr"], "e_tot": c["e_tot"], "uncertainty": c["half_step"]})
    e_min = min(row["e_tot"] for row in rows)
    print(f"\nHCl CCSD(T)/CBS{pair} curve (uncertainty 0.5 |CBS{pair} - E(largest X)|)")
    print(f"{'r/bohr':>8} {'E_CBS/Ha':>13} {'+-/mHa':>8} {'E - E_min/mHa':>14}")
    for row in rows:
        row["e_rel"] = row["e_tot"] - e_min
        print(
            f"{row['r_bohr']:>8.4f} {row['e_tot']:>13.6f} {1e3 * row['uncertainty']:>8.2f}"
            f" {1e3 * row['e_rel']:>14.3f}"
        )
    return rows


def main(default_systems: Sequence[str] = ("o", "h2o", "hcl")) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=["o", "h2o", "hcl"],
        default=list(default_systems),
        help=f"what to run (default {' '.join(default_systems)})",
    )
    parser.add_argument(
        "--cardinals",
        nargs="+",
        choices=list(CARDINAL),
        default=["T", "Q", "5"],
        help="cardinal numbers X (default T Q 5); for HCl at r_e only",
    )
    parser.add_argument(
        "--hcl-bonds",
        nargs="*",
        type=float,
        default=list(HCL_BONDS),
        help=f"HCl bond lengths in bohr (default {' '.join(map(str, HCL_BONDS))})",
    )
    parser.add_argument(
        "--scan-cardinals",
        nargs="+",
        choices=list(CARDINAL),
        default=["T", "Q"],
        help=f"cardinal numbers for HCl away from r_e = {R_HCL} bohr (default T Q)",
    )
    parser.add_argument("--aug", action="store_true", help="aug-cc-pVXZ on all atoms")
    parser.add_argument("--max-memory", type=int, default=8000, help="PySCF max_memory in MB")
    parser.add_argument("--verbose", type=int, default=0, help="PySCF verbosity")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    xs = sorted(args.cardinals, key=CARDINAL.__getitem__)
    scan_xs = sorted(args.scan_cardinals, key=CARDINAL.__getitem__)

    results: dict = {"aug": args.aug, "frozen_core": None, "systems": {}}
    if "hcl" in args.systems:
        check_hcl_toml()
    for system in args.systems:
        entries = []
        for target in targets(system, args.hcl_bonds):
            at_re = target.r_bohr is None or abs(target.r_bohr - R_HCL) < 1e-6
            points = []
            for x in xs if at_re else scan_xs:
                points.append(run_point(target, x, args.aug, args.max_memory, args.verbose))
                p = points[-1]
                where = "" if target.r_bohr is None else f" r = {target.r_bohr}"
                done = f"  done {system}{where} {p.basis}: E_tot = {p.e_tot:.7f} ({p.wall_s:.0f} s)"
                print(done, flush=True)
            entries.append(report(target, points))
        if system != "hcl":
            results["systems"][system] = entries[0]
            continue
        results["systems"]["hcl"] = {"geometries": entries}
        pairs = [{c["pair"] for c in entry["cbs"]} for entry in entries]
        common = set.intersection(*pairs) if pairs else set()
        if len(entries) > 1 and common:
            pair = max(common, key=lambda p: [int(v) for v in p.strip("()").split(",")])
            results["systems"]["hcl"]["curve"] = {"pair": pair, "rows": curve(entries, pair)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
