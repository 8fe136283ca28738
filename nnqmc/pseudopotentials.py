"""Effective core potentials from PySCF (families such as ccECP and BFD, or NWChem files)
as :class:`~nnqmc.ecp.AtomECP` tables; with :mod:`nnqmc.scf` the only PySCF importers."""

from __future__ import annotations

import numpy as np

from .ecp import AtomECP
from .molecule import ATOMIC_NUMBER, Molecule

__all__ = [
    "ECPError",
    "ECPSpec",
    "atom_potentials",
    "ecp_basis_mismatch",
    "resolve_ecp",
]


class ECPError(ValueError):
    """An ECP name PySCF does not know, an element without a potential that was asked
    for, or a file that is not an NWChem-format potential."""


ECPSpec = str | dict[str, str] | None
"""One ECP family (or NWChem file) for every element that has one in it, element -> name
(or file) for the named elements only, or None (all-electron)."""


def _load_ecp(name: str, symbol: str) -> list | None:
    """PySCF's data ``[n_core, [[l, [terms by power]], ...]]`` of ``symbol`` in the family
    or NWChem file ``name``; None if it has no potential for the element; ECPError if
    ``name`` is neither a known family nor a readable file in NWChem format."""
    import os
    import warnings

    from pyscf.gto import basis as pyscf_basis
    from pyscf.gto.basis import parse_nwchem_ecp

    if os.path.isfile(name):
        try:
            with open(name) as f:
                text = f.read()
            if not parse_nwchem_ecp.ECP_DELIMITER.search("\n" + text):
                raise ValueError("no 'ECP' line")
            data = parse_nwchem_ecp.parse("\n" + text, symbol)
        except pyscf_basis.BasisNotFoundError:
            return None
        except Exception as err:
            reason = " ".join(str(err).split())
            raise ECPError(f"cannot read ECP file {name!r} (NWChem format): {reason}") from None
    else:
        known = pyscf_basis._format_basis_name(name) in pyscf_basis.ALIAS
        if not known:
            raise ECPError(f"unknown ECP {name!r}: neither a PySCF ECP name nor a file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = pyscf_basis.load_ecp(name, symbol)
        except Exception:
            return None  # the family has no (readable) potential for this element
    if not data:
        return None
    if not (isinstance(data, list | tuple) and len(data) == 2 and isinstance(data[0], int)):
        raise ECPError(f"ECP {name!r} for {symbol}: not a potential in NWChem format")
    return data


def _atom_ecp(name: str, symbol: str, data: list) -> AtomECP:
    """Our tables from PySCF's: the term ``[a, c]`` at index k of channel l is
    ``c r^(k - 2) exp(-a r^2)``; l = -1 is the local channel."""
    core, channels = data
    if core < 0 or core >= ATOMIC_NUMBER[symbol]:
        raise ECPError(f"ECP {name!r} for {symbol} removes {core} electrons")
    by_l: dict[int, list] = {}
    try:
        for l, by_power in channels:  # a spin-orbit column after (a, c) is not used
            rows = [(k - 2, t[0], t[1]) for k, terms in enumerate(by_power) for t in terms]
            by_l.setdefault(int(l), []).extend(rows)
    except (TypeError, ValueError, IndexError):
        raise ECPError(f"ECP {name!r} for {symbol}: not a potential in NWChem format") from None
    if any(l < -1 for l in by_l) or not by_l:
        raise ECPError(f"ECP {name!r} for {symbol}: no channels or a negative l")
    tables = {l: np.asarray(rows, np.float64).reshape(-1, 3) for l, rows in by_l.items()}
    if any(np.any(t[:, 1] <= 0) or np.any(t[:, 0] < -2) for t in tables.values()):
        raise ECPError(f"ECP {name!r} for {symbol}: exponents must be > 0 and powers >= -2")
    _check_bounded(name, symbol, ATOMIC_NUMBER[symbol] - core, tables)
    n_l = max(by_l) + 1
    return AtomECP(
        name=name,
        core=int(core),
        local=tables.get(-1, np.zeros((0, 3))),
        channels=tuple(tables.get(l, np.zeros((0, 3))) for l in range(n_l)),
    )


def _check_bounded(name: str, symbol: str, z_eff: float, tables: dict[int, np.ndarray]) -> None:
    """QMC needs a potential bounded at the nucleus (no cusp, finite variance): the local
    channel's r^-1 terms must cancel -Z_eff/r and no channel may have an r^-2 term, as in
    ccECP and BFD (not e.g. LANL2DZ or the Stuttgart potentials)."""
    local = tables.get(-1, np.zeros((0, 3)))
    left = z_eff - float(np.sum(local[local[:, 0] == -1, 2]))
    singular = any(np.any(t[:, 0] <= -2) for t in tables.values())
    if abs(left) > 1e-6 or singular:
        raise ECPError(
            f"ECP {name!r} for {symbol} is not bounded at the nucleus (-{left:g}/r left"
            f"{' and an r^-2 term' if singular else ''}); QMC needs a cusp-free potential "
            "such as ccecp or bfd"
        )


def resolve_ecp(spec: ECPSpec, symbols: tuple[str, ...] | list[str]) -> dict[str, AtomECP]:
    """Element -> its potential for the elements ``spec`` gives one (see :data:`ECPSpec`).

    A family name for all elements skips those it has no potential for (they stay
    all-electron); an element named in a table must have one. ECPError on an unknown name,
    a missing potential asked for by element, or a malformed file."""
    if spec is None:
        return {}
    wanted = sorted(set(symbols))
    if isinstance(spec, str):
        found = {s: _load_ecp(spec, s) for s in wanted}
        if not any(found.values()):
            raise ECPError(f"ECP {spec!r} has no potential for any of {', '.join(wanted)}")
        return {s: _atom_ecp(spec, s, d) for s, d in found.items() if d}
    out = {}
    for symbol, name in spec.items():
        data = _load_ecp(name, symbol)
        if data is None:
            raise ECPError(f"ECP {name!r} has no potential for element {symbol}")
        out[symbol] = _atom_ecp(name, symbol, data)
    return out


def atom_potentials(molecule: Molecule) -> list[AtomECP | None]:
    """Each atom's potential (None: all-electron) from the molecule's ECP names."""
    if not molecule.ecp:
        return [None] * len(molecule.symbols)
    found = resolve_ecp(dict(molecule.ecp), molecule.symbols)
    return [found.get(s) for s in molecule.symbols]


def ecp_basis_mismatch(basis: str | dict[str, str], potentials: dict[str, AtomECP]) -> list[str]:
    """One line per element whose ECP and basis do not belong together (an ECP named
    ``x`` wants a basis named ``x-...``, e.g. ccECP and ccecp-cc-pvdz), and per
    all-electron element given such an ECP basis."""
    lines = []
    symbols = set(potentials) | (set() if isinstance(basis, str) else set(basis))
    for symbol in sorted(symbols):
        name = (basis if isinstance(basis, str) else basis[symbol]).lower()
        ecp = potentials.get(symbol)
        if ecp is not None and "/" not in ecp.name and not name.startswith(ecp.name.lower()):
            lines.append(
                f"{symbol} has the {ecp.name} potential but the basis {name!r}, "
                f"not one made for it (e.g. '{ecp.name.lower()}-cc-pvdz')"
            )
    return lines
