"""Geometries of a fitted force field's Boltzmann distribution exp(-E/kT): ``nnqmc.sample``.

``md``: Langevin dynamics through ``nnqmc.ForceField`` (:mod:`.md`), frames of equal weight.
``flow``: a Boltzmann generator (:mod:`.flow`) over the Z-matrix coordinates q of the
molecule (:mod:`.zmatrix`), target log p(q) = -(E(x(q)) - E_ref)/kT + log J(q), trained
by reverse KL on the force field's JAX energy, its samples importance-weighted back to
exp(-E/kT) (:mod:`.weights`). Both report the force field's energy and its predictive
standard deviation σ at every geometry; energies hartree, positions bohr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..estimate import estimate
from ..fit.model import Model, energy_function, predict
from .flow import Flow, FlowOptions, defensive_sample, make_flow, train_flow
from .md import MDOptions, langevin_frames
from .weights import (
    Average,
    effective_sample_size,
    nan_count,
    normalised_weights,
    weighted_mean,
)
from .zmatrix import (
    ZMatrix,
    cartesian,
    check_not_linear,
    internal,
    log_jacobian,
    wrap,
    zmatrix,
)

BOLTZMANN = 3.166811563455546e-06  # k_B in hartree per kelvin (CODATA 2018)
METHODS = ("md", "flow")


@dataclass(frozen=True)
class ThermalSample:
    """Geometries ``positions`` (n, n_atoms, 3) bohr with normalised ``weights`` (n,) (equal
    for MD), the force field's ``energy`` and ``energy_std`` (n,) hartree, the Z-matrix
    ``coordinates`` (n, d) named by ``labels``; ``ess`` (1 for MD frames: their
    correlation shows in the errors of :meth:`averages` instead); ``evaluations``: energy
    evaluations spent (training included); ``settings``: the method's options;
    ``diagnostics``: the box checks of :func:`box_report` (and, for the flow, the example
    frames dropped outside the box)."""

    method: str
    temperature: float
    atomic_numbers: np.ndarray
    positions: np.ndarray
    weights: np.ndarray
    energy: np.ndarray
    energy_std: np.ndarray
    coordinates: np.ndarray
    labels: list[str]
    ess: float
    evaluations: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    flow: Flow | None = None
    diagnostics: dict[str, float | int] = field(default_factory=dict)

    def averages(self) -> dict[str, Average]:
        """⟨q_i⟩ per coordinate (bohr, degrees for angles): reweighted with delta-method
        errors for the flow, blocking errors of the correlated series for MD frames.
        Dihedrals by their circular mean atan2(⟨sin φ⟩, ⟨cos φ⟩) in (-180°, 180°] (a trans
        dihedral averages to ±180°, not 0°), its error that of the mean of
        sin(φ - ⟨φ⟩)/R, R = |⟨e^{iφ}⟩| (the delta method)."""
        out = {}
        for i, label in enumerate(self.labels):
            values = self.coordinates[:, i]
            if label.startswith("φ("):
                out[label] = self._circular(values)
                continue
            values = values * (1.0 if label.startswith("r(") else 180 / np.pi)
            out[label] = self._mean(values)
        return out

    def _mean(self, values: np.ndarray) -> Average:
        if self.method == "md":
            return correlated_mean(values)
        return weighted_mean(values, self.weights)

    def _circular(self, phi: np.ndarray) -> Average:
        w = self.weights / self.weights.sum()
        c, s = float(w @ np.cos(phi)), float(w @ np.sin(phi))
        mean, length = np.arctan2(s, c), np.hypot(c, s)
        if length == 0.0:
            return Average(float("nan"), float("nan"))
        spread = self._mean(np.sin(phi - mean) / length)
        return Average(float(np.degrees(mean)), float(np.degrees(spread.error)))


def correlated_mean(values: np.ndarray) -> Average:
    """The mean of a correlated series (MD frames) with the larger of its blocking error
    and √(var τ/n), τ the integrated autocorrelation time (:mod:`nnqmc.estimate`): blocking
    alone can come out low on a few hundred frames."""
    e = estimate(values)
    return Average(e.mean, max(e.error, float(np.sqrt(e.variance * max(e.tau, 1.0) / e.n))))


def reference_geometry(model: Model) -> np.ndarray:
    """The training geometry of lowest fitted energy (n_atoms, 3), bohr."""
    candidates = np.concatenate([model.energy_positions, model.force_positions])
    return candidates[int(np.argmin(predict(model, candidates)[0]))]


def log_target(model: Model, z: ZMatrix, kt: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """q ↦ -(E(x(q)) - E_ref)/kT + log J(q), one point (JAX)."""
    energy = energy_function(model)
    e_ref = float(energy(jnp.asarray(cartesian(z, jnp.asarray(z.reference)))))
    return lambda q: -(energy(cartesian(z, q)) - e_ref) / kt + log_jacobian(z, q)


SCAN_POINTS = 72  # a dihedral's 1-D scan that places its box's cut (every 5°)


def dihedral_centres(target, z: ZMatrix) -> tuple[np.ndarray, int]:
    """Where each dihedral's box (one turn) is centred: opposite its cut, the cut placed at
    the least probable point of a 1-D scan of ``target`` along that dihedral (the others at
    the reference), i.e. on the torsional barrier, so that no well is split by the box's
    edges; the centre (d,) (other entries the reference's) and the target evaluations."""
    centre = np.array(z.reference, np.float64)
    grid = np.linspace(-np.pi, np.pi, SCAN_POINTS, endpoint=False)
    evaluations = 0
    for i in np.flatnonzero(np.array(z.kinds()) == "dihedral"):
        q = np.repeat(z.reference[None], SCAN_POINTS, axis=0)
        q[:, i] = grid
        log_p = np.nan_to_num(np.asarray(jax.vmap(target)(jnp.asarray(q))), nan=-np.inf)
        evaluations += SCAN_POINTS
        if log_p.max() - log_p.min() > 1e-6:  # flat: keep the reference in the middle
            centre[i] = grid[int(np.argmin(log_p))] + np.pi
    return centre, evaluations


def _widths(target, z: ZMatrix, lower: np.ndarray, upper: np.ndarray) -> tuple:
    """loc and width of y = logit((q - lower)/(upper - lower)): the reference, and
    1/√(curvature of -log p in y), clipped to [0.02, 2], for bonds and angles; width 1 for
    dihedrals (broad: the flow starts spread over the turn, so that reverse KL finds every
    torsional well). The curvature by central differences of the gradient: the kernel's
    third derivative, which a Hessian would need at a training geometry, is not defined
    (:mod:`nnqmc.fit.kernel`)."""
    t = (np.asarray(wrap(z, z.reference, lower)) - lower) / (upper - lower)
    loc = jnp.asarray(np.log(t / (1 - t)))

    def log_p_y(y):
        s = jax.nn.sigmoid(y)
        q = lower + (upper - lower) * s
        return target(q) + jnp.sum(jnp.log((upper - lower) * s * (1 - s)))

    grad, eps = jax.grad(log_p_y), 1e-3
    step = eps * jnp.eye(len(loc))
    curvature = [-(grad(loc + e)[i] - grad(loc - e)[i]) / (2 * eps) for i, e in enumerate(step)]
    width = np.clip(1.0 / np.sqrt(np.maximum(np.asarray(curvature), 0.25)), 0.02, 2.0)
    width = np.where(np.array(z.kinds()) == "dihedral", 1.0, width)
    return np.asarray(loc), width


@dataclass(frozen=True)
class FlowDraw:
    """The flow's samples ``q`` (n, d) in the box (``lower``, ``upper``), their log-weights
    ``log_w`` (n,) against the defensive mixture, the trained ``flow``, ``losses`` per step,
    ``evaluations`` of the target (training, scan and samples), ``dropped`` example frames
    outside the box (their log p_flow is not defined: left out of maximum likelihood)."""

    q: np.ndarray
    log_w: np.ndarray
    flow: Flow
    losses: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    evaluations: int
    dropped: int = 0


def boltzmann_generator(
    target: Callable[[jnp.ndarray], jnp.ndarray],
    z: ZMatrix,
    n: int,
    options: FlowOptions,
    data: np.ndarray | None = None,
) -> FlowDraw:
    """Train a flow on ``target`` (q (d,) -> log p(q) up to a constant, e.g.
    :func:`log_target`) over the Z-matrix box of ``z`` (dihedrals cut at their barriers,
    :func:`dihedral_centres`), plus maximum likelihood on ``data`` (m, d) coordinates, and
    draw n samples of the defensive mixture (:func:`.flow.defensive_sample`)."""
    centre, scanned = dihedral_centres(target, z)
    lower, upper = z.bounds(centre)
    loc, width = _widths(target, z, lower, upper)
    flow = make_flow(z.dim, loc, width, lower, upper, options)
    dropped = 0
    if data is not None:
        data = np.asarray(wrap(z, jnp.asarray(data), lower))
        inside = np.all((data > lower) & (data < upper), axis=1)
        dropped = int(np.sum(~inside))
        data = data[inside]
        if not len(data) and options.data_weight > 0:
            raise ValueError(f"none of the {dropped} example frames is inside the flow's box")
    flow, losses = train_flow(flow, target, options, data)
    key = jax.random.key(options.seed + 2)
    q, log_q = defensive_sample(flow, key, n, lower, upper, options.defensive)
    log_w = np.asarray(jax.vmap(target)(q)) - np.asarray(log_q)
    evaluations = options.steps * options.batch + scanned + n
    return FlowDraw(np.asarray(q), log_w, flow, losses, lower, upper, evaluations, dropped)


EDGE = 0.05  # a bond within this fraction of its box's width from an edge is "at the edge"


def box_report(z: ZMatrix, coordinates: np.ndarray, weights: np.ndarray) -> dict[str, float | int]:
    """Where the samples lie against the flow's box (bonds (0, 3 r_ref); angles and
    dihedrals cannot leave theirs): ``outside_box``, the fraction of samples with a bond
    outside it (MD frames, which do not see the box), and ``edge_weight``, the weight of
    samples with a bond within 5 % of the box's width of an edge (mass the box cuts off or
    nearly does, for the flow)."""
    bond = np.array(z.kinds()) == "bond"
    r = np.asarray(coordinates)[:, bond]
    top = 3.0 * z.reference[bond]
    outside = np.any((r <= 0) | (r >= top), axis=1)
    edge = np.any((r < EDGE * top) | (r > (1 - EDGE) * top), axis=1)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return {"outside_box": float(np.mean(outside)), "edge_weight": float(w @ edge)}


def _internal(z: ZMatrix, positions: np.ndarray) -> np.ndarray:
    return np.asarray(jax.vmap(lambda x: internal(z, x))(jnp.asarray(positions)))


def _check(model: Model, temperature: float, method: str, n: int) -> None:
    if temperature <= 0 or not np.isfinite(temperature):
        raise ValueError(f"the temperature must be positive, got {temperature:g} K")
    if n <= 0:
        raise ValueError(f"the number of samples must be positive, got {n}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (valid: {', '.join(METHODS)})")
    if model.n_atoms < 2:
        raise ValueError("sampling needs a molecule of at least two atoms")


def _by_md(model: Model, start: np.ndarray, temperature: float, n: int, options: MDOptions):
    from ase import Atoms

    from ..fit.calculator import ForceField
    from ..pes.export import BOHR_ANGSTROM

    atoms = Atoms(numbers=model.atomic_numbers, positions=start * BOHR_ANGSTROM)
    atoms.calc = ForceField(model)
    frames = langevin_frames(atoms, n, temperature, options) / BOHR_ANGSTROM
    return frames, np.full(n, 1.0 / n), options.evaluations(n), options.settings()


def _by_flow(model, z, temperature, n, options: FlowOptions, examples):
    check_not_linear(z, cartesian(z, jnp.asarray(z.reference)))
    target = log_target(model, z, BOLTZMANN * temperature)
    data = None if examples is None else _internal(z, examples)
    draw = boltzmann_generator(target, z, n, options, data)
    positions = np.asarray(jax.vmap(lambda v: cartesian(z, v))(jnp.asarray(draw.q)))
    settings = {**asdict(options), "final_loss": float(np.mean(draw.losses[-50:]))}
    diagnostics = {"nan_weights": nan_count(draw.log_w)}
    if data is not None:
        diagnostics["examples"] = len(data) - draw.dropped
        diagnostics["examples_dropped"] = draw.dropped
    weights = normalised_weights(draw.log_w)
    return positions, weights, draw.evaluations, settings, draw.flow, diagnostics


def sample(
    model: Model | str | Path,
    temperature: float,
    method: str = "md",
    n: int = 1000,
    md: MDOptions | None = None,
    flow: FlowOptions | None = None,
    examples: np.ndarray | None = None,
) -> ThermalSample:
    """n geometries of exp(-E_FF/kT) at ``temperature`` (K) by ``method`` (``"md"`` or
    ``"flow"``), starting from (MD) or centred on (flow) the lowest-energy training geometry;
    ``examples`` (m, n_atoms, 3) bohr: geometries for the flow's maximum-likelihood term
    (with ``flow.data_weight`` > 0). ``model``: a :class:`Model` or the path of a model
    file written by ``nnqmc fit``. ValueError (FitError for the model file) for bad input."""
    if not isinstance(model, Model):
        from ..fit.store import load_model

        model = load_model(model)
    _check(model, temperature, method, n)
    start = reference_geometry(model)
    z = zmatrix(start)
    t0 = time.perf_counter()
    trained, diagnostics = None, {}
    if method == "md":
        positions, weights, evaluations, settings = _by_md(
            model, start, temperature, n, md or MDOptions()
        )
    else:
        if examples is not None and np.shape(examples)[1:] != (model.n_atoms, 3):
            raise ValueError(
                f"the example geometries are {np.shape(examples)[1:]}, not the model's "
                f"({model.n_atoms}, 3)"
            )
        positions, weights, evaluations, settings, trained, diagnostics = _by_flow(
            model, z, temperature, n, flow or FlowOptions(), examples
        )
    energy, _, std = predict(model, positions)
    coordinates = _internal(z, positions)
    return ThermalSample(
        method,
        float(temperature),
        np.asarray(model.atomic_numbers),
        positions,
        weights,
        energy,
        std,
        coordinates,
        z.labels(),
        effective_sample_size(weights),
        int(evaluations),
        time.perf_counter() - t0,
        settings,
        trained,
        {**box_report(z, coordinates, weights), **diagnostics},
    )
