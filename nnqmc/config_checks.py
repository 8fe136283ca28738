"""The value rules that :mod:`nnqmc.config_schema` attaches to its fields, the upper bounds
of sizes and counts, and the shortening of what an error message echoes.

Upper bounds: a size or count above these can only be a mistake (a typo, a stray digit, a
value meant for another key); without them it passes the checks and ends the run in the
compiler. No real input comes near them:

============================  ==============================================================
``MAX_LAYERS`` = 64           ``ansatz.layers``, ``jastrow_layers``, ``backflow_layers``
``MAX_WIDTH`` = 4096          ``ansatz.embedding_dim``, ``n_rbf``, ``determinants``,
                              ``copies``, the orbitals of ``ansatz.cas``
``MAX_WALKERS`` = 2**24       ``train.walkers``, ``train.local_energy_chunk``, ``dmc.walkers``
``MAX_STEPS`` = 10**9         steps and sweeps: ``train.steps``, ``checkpoint_every``,
                              ``max_bad_steps``, ``sampler.burn_in``, ``decorrelation``,
                              ``eval.steps``, ``dmc.steps``, ``equilibration``, ``scan.steps``
``MAX_SEED`` = 2**32 - 1      ``train.seed``, ``scan.seed``
``MAX_GEOMETRIES`` = 10**6    the geometries of a ``[scan]`` (``count``, ``budget``, a grid)
``MAX_CHARGE`` = 1000         ``system.charge`` in magnitude
``MAX_NESTING`` = 8           arrays and tables inside one another, the document included
============================  ==============================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

MAX_LAYERS = 64
MAX_WIDTH = 4096
MAX_WALKERS = 2**24
MAX_STEPS = 10**9
MAX_SEED = 2**32 - 1
MAX_GEOMETRIES = 10**6
MAX_CHARGE = 1000
MAX_NESTING = 8

ECP_POINTS = (6, 12, 18, 26, 32)  # the rules of nnqmc.ecp.QUADRATURES

SHOWN = 60  # characters of a value an error message echoes
LONG_WORD = 200  # a word of a message longer than this is cut to SHOWN characters
LONG_LINE = 400  # a message longer than this keeps its start and its end

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

Check = Callable[[Any], "str | None"]


# --------------------------------------------------------------------------- echoes
def shown(value: Any) -> str:
    """``repr(value)`` for a message: a long string as its first characters, ``…`` and its
    length; any other long repr cut after :data:`SHOWN` characters."""
    if isinstance(value, str) and len(value) > SHOWN:
        return f"{value[:SHOWN]!r}… ({len(value)} characters)"
    if isinstance(value, int) and value.bit_length() > 128:  # repr may refuse (4300 digits)
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def one_line(text: str) -> str:
    """``text`` on one short line: whitespace runs become one space, a word over
    :data:`LONG_WORD` characters keeps its first :data:`SHOWN`, and a line over
    :data:`LONG_LINE` characters its start and its end."""
    words = [
        f"{w[:SHOWN]}… ({len(w)} characters)" if len(w) > LONG_WORD else w for w in text.split()
    ]
    line = " ".join(words)
    if len(line) <= LONG_LINE:
        return line
    head, tail = LONG_LINE * 2 // 3, LONG_LINE // 4
    return f"{line[:head]} … ({len(line)} characters) … {line[-tail:]}"


def nesting(data: Any) -> int:
    """How deep lists and tables nest in ``data`` (a scalar: 0), counted without recursion
    and only to one level past :data:`MAX_NESTING`."""
    deepest, stack = 0, [(data, 0)]
    while stack and deepest <= MAX_NESTING:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in value)
    return deepest


# --------------------------------------------------------------------------- rules
def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {shown(v)}"


def at_least_two(v: Any) -> str | None:
    return None if v >= 2 else f"must be >= 2 (an error bar needs two samples), got {shown(v)}"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {shown(v)}"


def open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must lie strictly between 0 and 1, got {shown(v)}"


def half_open_unit(v: Any) -> str | None:
    return None if 0 <= v < 1 else f"must satisfy 0 <= value < 1, got {shown(v)}"


def between(low: float, high: float, unit: str) -> Check:
    """The rule ``low <= value <= high`` for a quantity measured in ``unit``."""

    def check(v: Any) -> str | None:
        return (
            None
            if low <= v <= high
            else f"must lie between {low} and {high} {unit}, got {shown(v)}"
        )

    return check


# below 0.1/Z the cusp fit is singular, beyond 1.5/Z it reaches the 2s node of first-row
# atoms (docs/generalized.md)
cusp_radius = between(0.1, 1.5, "(units of 1/Z)")
cusp_range = between(0.01, 100, "bohr")


def non_empty(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def non_empty_name(v: Any) -> str | None:
    return non_empty(v) if isinstance(v, str) else None


def quadrature_points(v: Any) -> str | None:
    return None if v in ECP_POINTS else f"must be one of {', '.join(map(str, ECP_POINTS))}"


def bounded_charge(v: Any) -> str | None:
    if abs(v) <= MAX_CHARGE:
        return None
    return f"must lie in -{MAX_CHARGE}..{MAX_CHARGE}, got {shown(v)}"


def safe_name(v: Any) -> str | None:
    if _SAFE_NAME.fullmatch(v):
        return None
    return (
        f"{shown(v)} is not a safe file name (letters, digits, '.', '_', '+', '-'; "
        "starting with a letter or digit; at most 100 characters)"
    )


def active_space(v: Any) -> str | None:
    n_orb, n_elec = v
    if n_orb <= 0 or n_elec <= 0:
        return f"[n_orbitals, n_electrons] must both be > 0, got {shown(list(v))}"
    if n_orb > MAX_WIDTH:
        return f"at most {MAX_WIDTH} active orbitals, got {shown(n_orb)}"
    if n_elec > 2 * n_orb:
        return f"{n_elec} electrons do not fit in {n_orb} orbitals"
    return None


def all_positive(v: Any) -> str | None:
    if not v:
        return "must hold at least one value"
    return None if all(x > 0 for x in v) else f"must all be > 0, got {shown(list(v))}"


def at_most(v: Any, limit: int) -> str | None:
    """The message of a value over its field's upper bound, else None."""
    if v <= limit:
        return None
    return f"must be <= {limit} (a larger value can only be a mistake), got {shown(v)}"
