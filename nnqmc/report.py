"""The printed summary of a finished run: its result.json as a few lines of text."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["basis_label", "ecp_line", "format_result"]


def basis_label(basis: Any) -> str:
    """One basis name, or ``"H: cc-pvdz, O: ccecp-cc-pvdz"`` for element -> name."""
    if isinstance(basis, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(basis.items()))
    return str(basis)


def ecp_line(symbols: list[str], ecp: list[str | None], core: list[int]) -> str | None:
    """Which atoms have which ECP and how many electrons it removes, which stay
    all-electron, and that energies are then valence totals; None without ECPs."""
    if not any(name is not None for name in ecp):
        return None
    with_ecp: dict[str, tuple[str, int]] = {}
    plain: list[str] = []
    for symbol, name, n in zip(symbols, ecp, core, strict=True):
        if name is None:
            if symbol not in plain:
                plain.append(symbol)
        else:
            with_ecp[symbol] = (name, n)
    parts = [f"{s} {name} ({n} core electrons)" for s, (name, n) in with_ecp.items()]
    text = "ECP: " + ", ".join(parts)
    text += f"; all-electron: {', '.join(plain)}" if plain else ""
    return text + "; energies are valence totals"


def format_result(result: dict[str, Any]) -> str:
    e, err = result["energy"], result["energy_err"]
    lines = [
        f"{result['name']}: E = {e:.6f} ± {err:.6f} Ha  (variance {result['variance']:.4f}, "
        f"{result['steps']} steps, {result['walkers']} walkers, {result['wall_seconds']:.0f} s)",
        f"  {result['hf_method']}/{basis_label(result['basis'])}: {result['hf_energy']:.6f} Ha",
    ]
    if result.get("ecp") is not None:
        line = ecp_line(result["atoms"], result["ecp"], result["core_electrons"])
        if line:
            lines.append(f"  {line} ({result['electrons']} valence electrons)")
    if result.get("cas_energy") is not None:
        lines.append(f"  CASSCF/{basis_label(result['basis'])}: {result['cas_energy']:.6f} Ha")
    ref = result["reference_energy"]
    if ref is not None:
        diff = (e - ref) * 1000
        lines.append(f"  reference: {ref:.6f} Ha   E - E_ref = {diff:+.2f} ± {err * 1000:.2f} mHa")
        if result["correlation_fraction"] is not None:
            lines.append(
                f"  correlation energy recovered: {100 * result['correlation_fraction']:.1f} %"
            )
    if result.get("training_slope") is not None:
        lines.append(_format_slope(result))
    if result.get("dmc_energy") is not None:
        lines.extend(_format_dmc(result))
    return "\n".join(lines)


UNDETERMINED_MHA = 1.6
"""A flat slope whose 2σ bound still allows a fall of more than this (mHa, chemical
accuracy) over another window of the same length is reported as too noisy to tell."""


def _format_slope(result: dict[str, Any]) -> str:
    """The training energy's slope at the end of training (mHa per 1000 steps) and what it
    says about training longer."""
    slope, err = 1000 * result["training_slope"], 1000 * result["training_slope_err"]
    digits = max(0, 1 - math.floor(math.log10(err))) if err > 0 else 2
    window = result["training_slope_steps"]
    possible = -(slope - 2 * err) * window / 1000  # mHa within 2σ over another window
    if result["still_improving"]:
        verdict = "still falling: more steps would pay"
    elif slope > 2 * err:
        verdict = "rising: the energy went up at the end; see energy.png"
    elif possible > UNDETERMINED_MHA:
        verdict = (
            f"too noisy to tell: within 2σ it could fall {possible:.{digits}f} mHa over "
            f"another {window} steps; more steps may pay"
        )
    else:
        verdict = "flat: more steps would not pay at this learning rate"
    return (
        f"  training slope over the last {result['training_slope_steps']} steps: "
        f"{slope:+.{digits}f} ± {err:.{digits}f} mHa per 1000 steps ({verdict})"
    )


def _format_dmc(result: dict[str, Any]) -> list[str]:
    """VMC and DMC side by side, then E(τ) per time step."""
    ref = result["reference_energy"]
    rows = [("VMC", result["energy"], result["energy_err"])]
    several = len(result["dmc"]) > 1
    rows.append(("DMC τ->0" if several else "DMC", result["dmc_energy"], result["dmc_energy_err"]))
    lines = [f"  {'':9s}{'E (Ha)':>24s}" + ("   E - E_ref (mHa)" if ref is not None else "")]
    for name, e, err in rows:
        line = f"  {name:9s}{e:14.6f} ± {err:.6f}"
        if ref is not None:
            line += f"   {(e - ref) * 1000:+8.2f} ± {err * 1000:.2f}"
        lines.append(line)
    for row in result["dmc"]:
        lines.append(
            f"    τ = {row['timestep']:<8g} E = {row['energy']:.6f} ± {row['energy_err']:.6f}"
            f"  acceptance {row['acceptance']:.4f}  {row['steps']} steps"
        )
    tail = f"  DMC: {result['dmc_walkers']} walkers, {result['dmc_seconds']:.0f} s"
    nonlocal_term = result.get("dmc_nonlocal")
    if nonlocal_term is not None:
        scheme = {"tmoves": "T-moves", "locality": "locality approximation"}
        tail += f", {scheme[nonlocal_term['scheme']]}"
        if nonlocal_term["ecp_points"] is not None:
            tail += f", {nonlocal_term['ecp_points']}-point quadrature"
    if result.get("dmc_timestep_chi2_per_dof") is not None:
        tail += f"; χ²/dof of the line through E(τ): {result['dmc_timestep_chi2_per_dof']:.2f}"
    lines.append(tail)
    return lines
