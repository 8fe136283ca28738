"""The configuration schema: the section dataclasses with their defaults and constraints,
:class:`ConfigError`, and reading one TOML table against a dataclass (:func:`read_fields`).

The allowed keys, their types and defaults live in one place: the dataclass fields below
(``SystemInput`` for the raw ``[system]`` keys, which are turned into a ``Molecule``).
Range and choice constraints are attached to the fields as metadata: ``check`` (a rule of
:mod:`nnqmc.config_checks`), ``choices``, and ``most``, the upper bound of a size or count
(layers <= 64; embedding_dim, n_rbf, determinants, copies <= 4096; walkers <= 2**24; steps
and sweeps <= 10**9; seeds <= 2**32 - 1; scan geometries <= 10**6; |charge| <= 1000): above
it a value can only be a mistake. Loading, overrides and cross-checks are in
:mod:`nnqmc.config`, which re-exports everything public here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import (
    MAX_GEOMETRIES,
    MAX_LAYERS,
    MAX_SEED,
    MAX_STEPS,
    MAX_WALKERS,
    MAX_WIDTH,
    Check,
    active_space,
    all_positive,
    at_least_two,
    at_most,
    bounded_charge,
    cusp_radius,
    cusp_range,
    half_open_unit,
    non_empty,
    non_empty_name,
    non_negative,
    one_line,
    open_unit,
    positive,
    quadrature_points,
    safe_name,
    shown,
)
from .molecule import ATOMIC_NUMBER, Molecule

ANSATZ_KINDS = ("hf", "jastrow", "paulinet", "generalized")
OPTIMIZERS = ("adam", "spring")
LAPLACIANS = ("forward", "folx", "exact")
BACKFLOW_FORMS = ("exp", "linear", "none")
PRECISIONS = ("float32", "mixed", "float64")
PROPOSALS = ("uniform", "nucleus")
UNITS = ("bohr", "angstrom")
SCAN_TRAINING = ("independent", "shared")
SHARED_KERNELS = ("joint", "per_geometry")  # SPRING's kernel in a shared step
SCAN_KINDS = ("bond", "angle", "grid", "normal_modes", "random", "xyz", "adaptive", "thermal")
THERMAL_METHODS = ("md", "flow")  # the samplers of nnqmc.thermal
DEFAULT_BASIS = "cc-pvdz"
OVERRIDE_SOURCE = "--set"


class ConfigError(ValueError):
    """An invalid configuration; ``str()`` is ``"<file>: <key>: <message>"`` on one line."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = one_line(str(source))
        self.key = one_line(str(key))
        self.message = one_line(str(message))
        super().__init__(f"{self.source}: {self.key}: {self.message}")


def _f(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    choices=None,
    most: int | None = None,
    one_or_many: bool = False,
):
    """A dataclass field carrying its validation rule as metadata (``most``: the upper
    bound of a size or count; ``one_or_many``: a list field that also takes one value)."""
    metadata = {"check": check, "choices": choices, "most": most, "one_or_many": one_or_many}
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class SystemConfig:
    """The molecule (with its ECP atoms and core electrons), the basis (one name, or
    element -> name) and the points of the ECPs' nonlocal quadrature."""

    molecule: Molecule
    basis: str | dict[str, str] = DEFAULT_BASIS
    ecp_points: int = 12

    @property
    def basis_label(self) -> str:
        """The basis as one string (``"O: ccecp-cc-pvdz, H: cc-pvdz"`` for a table)."""
        if isinstance(self.basis, str):
            return self.basis
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.basis.items()))


@dataclass(frozen=True)
class AnsatzConfig:
    kind: str = _f("paulinet", choices=ANSATZ_KINDS)  # "hf" = bare determinants
    cusp_correction: bool = True  # nuclear cusp of the HF orbitals
    # ... corrected within cusp_radius / Z of each nucleus (nnqmc.orbitals.cusp_radii)
    cusp_radius: float = _f(0.5, check=cusp_radius)
    ee_cusp: bool = True  # the fixed electron-electron cusp factor gamma
    # gamma's range L in bohr: -c L / (1 + r_ij / L) per pair (docs/generalized.md)
    ee_cusp_range: float = _f(1.0, check=cusp_range)
    embedding_dim: int = _f(32, check=positive, most=MAX_WIDTH)
    layers: int = _f(3, check=non_negative, most=MAX_LAYERS)
    n_rbf: int = _f(16, check=positive, most=MAX_WIDTH)
    cutoff: float = _f(10.0, check=positive)
    jastrow_layers: int = _f(3, check=non_negative, most=MAX_LAYERS)
    backflow_layers: int = _f(3, check=non_negative, most=MAX_LAYERS)
    backflow: str = _f("exp", choices=BACKFLOW_FORMS)  # f = exp(g) | 1 + g | none (f = 1)
    cas: tuple[int, int] | None = _f(None, check=active_space)  # [n_orbitals, n_electrons]
    determinants: int = _f(1, check=positive, most=MAX_WIDTH)
    # kind = "generalized" only (see nnqmc.ansatz.generalized):
    # one n x n determinant over both spins; off by default: started block-diagonal (as the
    # exact HF start needs) its cross blocks get no gradient (docs/generalized.md)
    full_determinant: bool = False
    envelopes: bool = True  # learned orbital corrections with exponential envelopes
    en_vectors: bool = True  # r_i - R_I as embedding inputs
    core_inputs: bool = False  # the same again at each nucleus's 1/Z scale (its core)
    copies: int = _f(1, check=positive, most=MAX_WIDTH)  # learned copies of each determinant


@dataclass(frozen=True)
class SamplerConfig:
    initial_width: float = _f(0.3, check=positive)
    target_acceptance: float = _f(0.5, check=open_unit)
    burn_in: int = _f(200, check=non_negative, most=MAX_STEPS)
    decorrelation: int = _f(10, check=positive, most=MAX_STEPS)
    # step width per electron: the same for all, or growing with the distance to the
    # nearest nucleus (core electrons small steps, valence large; nnqmc.sampler)
    proposal: str = _f("uniform", choices=PROPOSALS)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(2000, check=positive, most=MAX_STEPS)
    walkers: int = _f(1024, check=positive, most=MAX_WALKERS)
    seed: int = _f(0, check=non_negative, most=MAX_SEED)
    optimizer: str = _f("spring", choices=OPTIMIZERS)
    learning_rate: float | None = _f(None, check=positive)  # None: the optimizer's default
    lr_decay_steps: float = _f(1000.0, check=positive)
    clip_width: float = _f(5.0, check=positive)
    max_grad_norm: float | None = _f(None, check=positive)  # None: the optimizer's default
    laplacian: str = _f("forward", choices=LAPLACIANS)
    # walkers per local-energy chunk; None: automatic (CPU ~1 MiB of Jacobians, GPU all)
    local_energy_chunk: int | None = _f(None, check=positive, most=MAX_WALKERS)
    checkpoint_every: int = _f(100, check=positive, most=MAX_STEPS)
    max_bad_steps: int = _f(10, check=positive, most=MAX_STEPS)
    damping: float = _f(1e-3, check=non_negative)
    momentum: float = _f(0.9, check=half_open_unit)
    # points of the ECP quadrature while training (0: the system's ecp_points); any rule is
    # unbiased under the random rotation, fewer points only add variance (docs/ecp.md)
    ecp_points: int = _f(6, check=lambda v: None if v == 0 else quadrature_points(v))


@dataclass(frozen=True)
class EvalConfig:
    steps: int = _f(2000, check=at_least_two, most=MAX_STEPS)
    decorrelation: int = _f(10, check=positive, most=MAX_STEPS)
    dipole: bool = True  # report the dipole moment (with error bars) in result.json


@dataclass(frozen=True)
class DMCConfig:
    """``[dmc]``: fixed-node diffusion Monte Carlo after the evaluation (its presence in the
    input asks for it; :mod:`nnqmc.diffusion`). ``timestep``: one τ (Ha⁻¹) or several, run
    one after the other from the largest, for the τ -> 0 extrapolation; ``steps`` and
    ``equilibration``: per time step; ``walkers``: the fixed population (0: the training
    walkers); ``max_bad_steps``: non-finite steps in a row that stop it."""

    steps: int = _f(2000, check=at_least_two, most=MAX_STEPS)
    timestep: tuple[float, ...] = _f((0.01,), check=all_positive, one_or_many=True)
    walkers: int = _f(0, check=non_negative, most=MAX_WALKERS)
    equilibration: int = _f(500, check=non_negative, most=MAX_STEPS)
    # with an ECP: size-consistent T-moves, or the locality approximation
    nonlocal_scheme: str = _f("tmoves", choices=("tmoves", "locality"))
    # points of the ECP quadrature in DMC (0: the system's ecp_points); fewer points halve
    # the nonlocal term's cost and add variance to the local energies (docs/ecp.md)
    ecp_points: int = _f(0, check=lambda v: None if v == 0 else quadrature_points(v))
    # non-finite steps in a row (each retried with a new key) that stop the DMC
    max_bad_steps: int = _f(10, check=positive, most=MAX_STEPS)


@dataclass(frozen=True)
class HamiltonianConfig:
    """External potentials added to the molecular Hamiltonian (and to its SCF), a.u./bohr.

    ``field``: uniform electric field F, V = F . (sum_i r_i - sum_I Z_I R_I);
    ``point_charges``: rows [q, x, y, z]; ``harmonic``: omega of 1/2 omega^2 sum_i |r_i - c|^2
    with c = ``harmonic_center``. See :mod:`nnqmc.external`.
    """

    field: tuple[float, float, float] | None = None
    point_charges: tuple[tuple[float, float, float, float], ...] = ()
    harmonic: float | None = _f(None, check=positive)
    harmonic_center: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ScanConfig:
    """``[scan]`` of ``nnqmc scan``: how to generate geometries (see :mod:`nnqmc.pes`).

    Atom indices count from 0; distances and displacements are in ``unit``, angles in
    degrees. ``steps``: training steps of each warm-started geometry (the first geometry,
    and every one with ``--cold``, trains ``train.steps``).
    """

    kind: str | None = _f(None, choices=SCAN_KINDS)
    atoms: tuple[int, ...] | None = None  # bond: [i, j] (j moves); angle: [i, j, k] (k moves)
    values: tuple[float, ...] | None = None  # bond lengths or angles
    linspace: tuple[float, float, int] | None = None  # [start, stop, count] instead of values
    grid_atoms: tuple[tuple[int, ...], ...] | None = None  # grid: one bond/angle per entry
    grid_values: tuple[tuple[float, ...], ...] | None = None  # grid: the values of each
    unit: str = _f("bohr", choices=UNITS)
    modes: tuple[int, ...] | None = None  # normal_modes: which (0 = softest), default all
    amplitudes: tuple[float, ...] | None = None  # normal_modes: displacements along each mode
    count: int = _f(10, check=positive, most=MAX_GEOMETRIES)  # random: number of geometries
    amplitude: float = _f(0.05, check=positive)  # random: std of each coordinate's shift
    seed: int = _f(0, check=non_negative, most=MAX_SEED)  # random
    xyz: str | None = _f(None, check=non_empty)  # xyz: multi-frame file (angstrom)
    # adaptive: the candidates are the grid of grid_atoms over ranges ([start, stop, count]
    # per coordinate); the first `initial` spread out, then each next one where the fitted
    # force field is least certain, until its predictive std < target (Ha) or `budget` runs
    ranges: tuple[tuple[float, float, int], ...] | None = None
    initial: int = _f(3, check=positive, most=MAX_GEOMETRIES)
    target: float = _f(5e-4, check=positive)
    budget: int = _f(20, check=positive, most=MAX_GEOMETRIES)
    # thermal: the first `initial` geometries are the input one and draws of its HF
    # Hessian's harmonic distribution at `temperature` (K; seed), or the frames of xyz; then
    # each round fits a force field, draws `candidates` geometries of exp(-E/kT) by `method`
    # and runs the one of largest weight x predictive variance, until `budget` geometries
    # have run or the largest predictive std among the candidates (times sqrt(weight x
    # candidates) for the flow) is below `target` (Ha)
    temperature: float | None = _f(None, check=positive)
    method: str = _f("md", choices=THERMAL_METHODS)
    candidates: int = _f(200, check=positive, most=MAX_GEOMETRIES)
    # thermal: geometries chosen per round, each the largest w x variance given the round's
    # earlier choices (the fit's posterior conditioned on their energies): spread out
    batch: int = _f(1, check=positive, most=MAX_GEOMETRIES)
    equilibration: int = _f(2000, check=non_negative, most=MAX_STEPS)  # md: steps dropped
    stride: int = _f(60, check=positive, most=MAX_STEPS)  # md: steps between candidates
    flow_steps: int = _f(1500, check=positive, most=MAX_STEPS)  # flow: training steps
    steps: int | None = _f(None, check=positive, most=MAX_STEPS)
    forces: bool = False  # Hellmann-Feynman forces (zero-variance estimator)
    zero_bias: bool = True  # with the zero-bias (Pulay) term, exact d log|psi|/dR
    ccsd_t: bool = False  # CCSD(T) baseline in the same basis
    reference: tuple[float, ...] | None = None  # exact energies (Ha), one per geometry
    # "shared": one network trained on all geometries at once (train.steps shared steps of
    # geometries_per_step geometries, default all), then fine_tune_steps per geometry;
    # fine_tune_steps also with any train and nnqmc scan --from SHARED_DIR (each geometry
    # from a trained shared model; refused at run time without --from)
    train: str = _f("independent", choices=SCAN_TRAINING)
    geometries_per_step: int | None = _f(None, check=positive, most=MAX_GEOMETRIES)
    # SPRING's kernel in a shared step: over all rows ("joint"), or one per geometry and
    # the mean of their directions ("per_geometry", G times cheaper; docs/pes.md)
    shared_kernel: str = _f("joint", choices=SHARED_KERNELS)
    fine_tune_steps: int = _f(0, check=non_negative, most=MAX_STEPS)


# Keys of [scan] that each kind reads (the others are always allowed).
SCAN_KIND_KEYS = {
    "bond": ("atoms", "values", "linspace", "unit"),
    "angle": ("atoms", "values", "linspace"),
    "grid": ("grid_atoms", "grid_values", "unit"),
    "normal_modes": ("modes", "amplitudes", "unit"),
    "random": ("count", "amplitude", "seed", "unit"),
    "xyz": ("xyz",),
    "adaptive": ("grid_atoms", "ranges", "unit", "initial", "target", "budget"),
    "thermal": (
        "temperature",
        "method",
        "initial",
        "seed",
        "xyz",
        "budget",
        "target",
        "candidates",
        "batch",
        "equilibration",
        "stride",
        "flow_steps",
    ),
}
THERMAL_MD_KEYS = ("equilibration", "stride")  # thermal: method = "md" only
THERMAL_FLOW_KEYS = ("flow_steps",)  # thermal: method = "flow" only
SCAN_COMMON = ("kind", "steps", "forces", "zero_bias", "ccsd_t", "reference", "train")
SCAN_SHARED_KEYS = (
    "geometries_per_step",
    "shared_kernel",
    "fine_tune_steps",
)  # train = "shared" (or --from)


@dataclass(frozen=True, kw_only=True)
class Config:
    name: str = _f(check=safe_name)
    reference_energy: float | None = None
    precision: str = _f("mixed", choices=PRECISIONS)
    system: SystemConfig | None = None  # None only for Python-API runs without a molecule
    hamiltonian: HamiltonianConfig = field(default_factory=HamiltonianConfig)
    ansatz: AnsatzConfig = field(default_factory=AnsatzConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dmc: DMCConfig = field(default_factory=DMCConfig)  # run only if [dmc] is in the input
    scan: ScanConfig = field(default_factory=ScanConfig)  # kind None: no [scan]
    source: Path | None = None
    data: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SystemInput:
    """The raw keys of ``[system]``; validated, then turned into ``SystemConfig``."""

    atoms: str | None = _f(None, check=non_empty)  # lines "SYMBOL x y z"
    xyz: str | None = _f(None, check=non_empty)  # path relative to the TOML file
    unit: str | None = _f(None, choices=UNITS)  # required with atoms
    charge: int = _f(0, check=bounded_charge)
    spin: int = 0  # n_up - n_down
    basis: str | dict[str, str] = _f(DEFAULT_BASIS, check=non_empty_name)
    # effective core potentials: a family for every element that has one ("ccecp", "bfd"),
    # element -> name (or NWChem file) for those elements only, or none (all-electron)
    ecp: str | dict[str, str] | None = _f(None, check=non_empty_name)
    ecp_points: int = _f(12, check=quadrature_points)  # points of the nonlocal quadrature


# Top-level bookkeeping fields that are not read from the document.
_NOT_IN_DOCUMENT = ("source", "data")
# Section name -> dataclass describing the keys allowed in the TOML table.
_SECTION_INPUT: dict[str, type] = {"system": SystemInput}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_class(tp: Any) -> type | None:
    """The dataclass of a section field's type (``X`` or ``X | None``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def section_classes() -> dict[str, type]:
    """Section name -> dataclass of its TOML keys, derived from ``Config``'s fields."""
    hints = _hints(Config)
    out = {}
    for f in dataclasses.fields(Config):
        cls = _section_class(hints[f.name])
        if cls is not None:
            out[f.name] = _SECTION_INPUT.get(f.name, cls)
    return out


def _top_level_fields() -> list[dataclasses.Field]:
    hints = _hints(Config)
    return [
        f
        for f in dataclasses.fields(Config)
        if f.name not in _NOT_IN_DOCUMENT and _section_class(hints[f.name]) is None
    ]


def allowed_keys() -> dict[str | None, list[str]]:
    """``None`` -> top-level scalar keys; section -> its keys."""
    allowed: dict[str | None, list[str]] = {None: [f.name for f in _top_level_fields()]}
    for name, cls in section_classes().items():
        allowed[name] = [f.name for f in dataclasses.fields(cls)]
    return allowed


def suggest(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match, else `` (valid: ...)``."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if match:
        return f" (did you mean {match[0]!r}?)"
    return f" (valid: {', '.join(options)})"


# --------------------------------------------------------------------------- type checks
def describe(value: Any) -> str:
    """``type repr`` of a value for messages, a long repr cut (:func:`shown`)."""
    return f"{type(value).__name__} {shown(value)}"


def _convert(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError`` with a message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args == [str, dict[str, str]]:  # one name, or element -> name
            return value if isinstance(value, str) else _convert(value, args[1])
        if len(args) != 1:  # pragma: no cover - no such field
            raise TypeError(f"unsupported field type {tp}")
        return _convert(value, args[0])
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise TypeError(
                f"expected a string or a table of element = name, got {describe(value)}"
            )
        out = {}
        for k, v in value.items():
            if not isinstance(v, str) or not v.strip():
                raise TypeError(f"{k}: expected a non-empty string, got {describe(v)}")
            symbol = str(k).capitalize()
            if symbol not in ATOMIC_NUMBER:
                raise TypeError(f"{k!r} is not an element")
            out[symbol] = v
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"expected an integer, got {describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:  # an integer beyond the float range: OverflowError
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise TypeError(f"expected a finite number, got {shown(value)}")
            return number
        raise TypeError(f"expected a number, got {describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {describe(value)}")
    if origin is tuple and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {describe(value)}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item) for v in value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"expected a list of {len(args)} items, got {describe(value)}")
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    raise TypeError(f"unsupported field type {tp}")  # pragma: no cover


def read_fields(
    cls: type,
    table: dict,
    prefix: str,
    fail: Callable[[str, str], ConfigError],
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Validate ``table`` against the fields of ``cls``; return field name -> value."""
    fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in fields:
        key = f"{prefix}{f.name}"
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise fail(key, "missing required key")
            continue
        raw = table[f.name]
        if f.metadata.get("one_or_many") and not isinstance(raw, (list, tuple, dict)):
            raw = [raw]
        try:
            value = _convert(raw, hints[f.name])
        except TypeError as exc:
            raise fail(key, str(exc)) from None
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise fail(key, f"must be one of {', '.join(choices)}; got {shown(value)}")
        check = f.metadata.get("check")
        if check is not None and value is not None:
            message = check(value)
            if message:
                raise fail(key, message)
        most = f.metadata.get("most")
        if most is not None and value is not None:
            message = at_most(value, most)
            if message:
                raise fail(key, message)
        out[f.name] = value
    return out
