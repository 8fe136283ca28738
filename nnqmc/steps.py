"""One device's steps: sample -> local energies -> clipped gradient -> update.

:mod:`nnqmc.programs` ``pmap``s them over the devices: ``TrainState`` arrays then carry a
leading device axis; walkers are split over devices, the rest is replicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .ansatz import Ansatz
from .ecp import NONLOCAL_BLOCKS
from .hamiltonian import (
    Hamiltonian,
    batch_nonlocal_of,
    local_jet,
    nonlocal_energy,
    nonlocal_of,
)
from .optimize import AXIS, Optimizer, clip_local_energies
from .sampler import StepScale, adapt_width, sample


class WaveObservable(NamedTuple):
    """An observable of one walker that also sees the wavefunction and the local energy:
    ``fn(log_psi, r, e_local) -> array`` with ``log_psi: r -> log|psi|`` at the frozen
    parameters (e.g. for estimators built on the gradient of log|psi|, such as forces)."""

    fn: Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array], jax.Array]


class NuclearObservable(NamedTuple):
    """An observable of one walker that also sees how the wavefunction moves with the
    nuclei: ``fn(log_psi_at, coords, r, e_local) -> array`` with ``log_psi_at(c, r) ->
    log|psi|`` for nuclei (and the orbitals' centres) at ``c`` (n_atoms, 3), at frozen
    parameters, MO and cusp coefficients; ``coords`` are the run's nuclei (e.g. for the
    Pulay term d log|psi|/dR of the forces). Needs a molecular run (:mod:`nnqmc.programs`).

    With ``signed``, ``fn`` is also called with the keywords ``signed_log_psi`` (``r ->
    (sign psi, log|psi|)`` at the run's own nuclei and frozen parameters) and ``key`` (a
    random key of its own for every walker and step; e.g. for the ECP quadrature)."""

    fn: Callable[..., jax.Array]
    signed: bool = False


# ``(params, coords, r) -> log|psi|`` with the nuclei at ``coords`` (see NuclearObservable)
NucleiLogPsi = Callable[[Any, jax.Array, jax.Array], jax.Array]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    walkers: jax.Array
    width: jax.Array


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def _scale_update(new: Any, old: Any, lr_scale: jax.Array) -> Any:
    """``old + lr_scale * (new - old)`` for every float leaf; exactly ``new`` at scale 1."""

    def one(n: jax.Array, o: jax.Array) -> jax.Array:
        if not jnp.issubdtype(n.dtype, jnp.inexact):
            return n
        scale = lr_scale.astype(n.dtype)
        return jnp.where(lr_scale == 1, n, o + scale * (n - o))

    return jax.tree_util.tree_map(one, new, old)


def batch_log_psi(ansatz: Ansatz) -> Callable[[Any, jax.Array], jax.Array]:
    return jax.vmap(ansatz.log_psi, in_axes=(None, 0))


CHUNK_BYTES = 2**20
"""Target size of one chunk's largest forward-Laplacian intermediate on CPU (~L2 cache)."""


def local_energy_chunk(n_walkers: int, n_elec: int, itemsize: int, backend: str) -> int:
    """Walkers per chunk of the local-energy batch.

    On CPU the forward Laplacian is bound by memory traffic: each walker carries Jacobians
    of about 3 n^2 x 32 numbers through the embedding, and a whole batch of them falls out
    of the cache: chunks of ~1 MiB of those (``lax.map``) keep it in (docs/performance.md).
    On accelerators the batch stays whole.
    """
    if backend != "cpu":
        return n_walkers
    per_walker = 3 * n_elec**2 * 32 * itemsize
    chunk = 2 ** int(math.log2(max(CHUNK_BYTES // per_walker, 1)))
    return max(1, min(chunk, n_walkers))


ECP_STREAM = 7919
"""Folded into a step's key for the random rotations of the ECP quadrature (the sampling
keys stay as they were without ECPs)."""

OBSERVABLE_STREAM = 7927
"""Folded into an evaluation step's key for the keys of the observables that ask for one
(:class:`NuclearObservable` with ``signed``); no other stream changes."""


def walker_keys(key: jax.Array | None, n_walkers: int) -> jax.Array:
    """One key per walker, ``fold_in(key, index)`` (zeros where no key is given: runs
    without a nonlocal term draw nothing)."""
    if key is None:
        key = jax.random.PRNGKey(0)
    return jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(n_walkers))


def _keys(key: jax.Array | None, n_walkers: int) -> jax.Array:
    """One key per walker: ``key`` itself when it has one row per walker (n_walkers, 2),
    else :func:`walker_keys`."""
    return key if key is not None and key.ndim == 2 else walker_keys(key, n_walkers)


def _chunk_size(chunk: int | None, r: jax.Array) -> int:
    n_walkers, n_elec = r.shape[:2]
    return chunk or local_energy_chunk(n_walkers, n_elec, r.dtype.itemsize, jax.default_backend())


def _batched(one: Callable, chunk: int | None) -> Callable[..., Any]:
    """``one(params, r, key)`` over a batch of walkers, ``chunk`` walkers at a time
    (``None``: :func:`local_energy_chunk`); walker ``g`` gets ``fold_in(key, g)``, or its
    own row of ``key`` when given one key per walker (n_walkers, 2)."""

    def batch(params: Any, r: jax.Array, key: jax.Array | None = None) -> Any:
        n_walkers = r.shape[0]
        size = _chunk_size(chunk, r)
        keys = _keys(key, n_walkers)
        if size >= n_walkers:
            return jax.vmap(one, in_axes=(None, 0, 0))(params, r, keys)
        return jax.lax.map(lambda xk: one(params, *xk), (r, keys), batch_size=size)

    return batch


NONLOCAL_BLOCK_EVALUATIONS = 192
"""On CPU the compacted nonlocal term (:func:`nnqmc.ecp.batch_nonlocal_elements`) is
evaluated in blocks of about this many psi evaluations (16 electron–ECP pairs of the
12-point rule), each only when it holds a pair inside the cutoff; on accelerators in
:data:`nnqmc.ecp.NONLOCAL_BLOCKS` blocks (the sizes measured: docs/performance.md)."""


def nonlocal_blocks(n_walkers: int, chunk: int) -> dict[str, int]:
    """How the compacted nonlocal term cuts its pairs into blocks on this backend (see
    :data:`NONLOCAL_BLOCK_EVALUATIONS`): the keywords of
    :func:`nnqmc.ecp.batch_nonlocal_elements`. Elsewhere a block holds at most the pairs of
    ``chunk`` walkers, so the memory the local energies are chunked for still bounds it."""
    if jax.default_backend() == "cpu":
        return {"block_evaluations": NONLOCAL_BLOCK_EVALUATIONS}
    return {"blocks": max(NONLOCAL_BLOCKS, -(-n_walkers // max(1, chunk)))}


def _batch_jets(
    ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str, chunk: int | None, elements: bool
) -> Callable[..., tuple[jax.Array, ...]]:
    """``(params, r, key) -> (log|psi|, grad, E_L[, elements, moved])`` of a batch. With
    the ECP term of :func:`nnqmc.hamiltonian.batch_nonlocal_of` the kinetic and local part
    is chunked as :func:`_batched` and the nonlocal term is compacted over the whole batch
    (only pairs inside the cutoff evaluate psi); any other nonlocal term walker by walker."""
    term = batch_nonlocal_of(hamiltonian)
    if term is None:
        make = _one_local_jet_elements if elements else _one_local_jet
        return _batched(make(ansatz, hamiltonian, engine), chunk)
    base = _one_base_jet(ansatz, hamiltonian, engine)
    base_batch = _batched(lambda params, r, key: base(params, r), chunk)

    def batch(params: Any, r: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, ...]:
        n_walkers, n_elec = r.shape[:2]
        keys = _keys(key, n_walkers)
        f, g, e = base_batch(params, r, keys)
        signed = lambda x: ansatz.apply(params, x)
        size = chunk or local_energy_chunk(
            n_walkers, n_elec, r.dtype.itemsize, jax.default_backend()
        )
        values, moved = term(signed, r, keys, **nonlocal_blocks(n_walkers, size))
        values = values.reshape(n_walkers, n_elec, -1)
        e = e + jnp.sum(values, axis=(1, 2))
        if not elements:
            return f, g, e
        return f, g, e, values, moved.reshape(n_walkers, n_elec, -1, 3)

    return batch


def batch_local_energy(
    ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str, chunk: int | None = None
) -> Callable[[Any, jax.Array], jax.Array]:
    """Local energies of a batch of walkers; ``engine="forward"`` uses the ansatz's own
    structured forward Laplacian where it has one (PauliNet), folx otherwise.

    ``chunk`` walkers are evaluated at a time (``None``: :func:`local_energy_chunk`). An
    ECP's nonlocal term evaluates psi only for the electron–atom pairs inside its cutoff,
    over the whole batch (:func:`nnqmc.ecp.batch_nonlocal_elements`).
    """
    jets = _batch_jets(ansatz, hamiltonian, engine, chunk, elements=False)
    return lambda params, r, key=None: jets(params, r, key)[2]


def batch_local_jet(
    ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str, chunk: int | None = None
) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """``(log|psi|, grad log|psi|, E_L)`` of a batch of walkers from one pass of the
    kinetic-energy engine (the gradient comes with the forward Laplacian); engines and
    ``chunk`` as :func:`batch_local_energy`."""
    return _batch_jets(ansatz, hamiltonian, engine, chunk, elements=False)


def batch_local_jet_elements(
    ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str, chunk: int | None = None
) -> Callable[..., tuple[jax.Array, ...]]:
    """As :func:`batch_local_jet` for a Hamiltonian with a nonlocal term, with the
    nonlocal elements (n_walkers, n_elec, n_points) and the positions they lead to
    (n_walkers, n_elec, n_points, 3) that its local energies summed (T-moves choose
    from them)."""
    if nonlocal_of(hamiltonian) is None:
        raise ValueError("this Hamiltonian has no nonlocal term")
    return _batch_jets(ansatz, hamiltonian, engine, chunk, elements=True)


def _one_base_jet(ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str) -> Callable:
    """``(params, r) -> (log|psi|, grad, E_L without the nonlocal term)`` of one walker."""
    if engine == "forward" and ansatz.kinetic_jet is not None:
        jet = ansatz.kinetic_jet

        def base(params, r):
            f, g, t = jet(params, r)
            return f, g, t + hamiltonian.potential(r)

        return base
    return lambda params, r: local_jet(lambda x: ansatz.log_psi(params, x), hamiltonian, r, engine)


def _one_local_jet_elements(ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str) -> Callable:
    base = _one_base_jet(ansatz, hamiltonian, engine)
    term = nonlocal_of(hamiltonian)
    if term is None:
        raise ValueError("this Hamiltonian has no nonlocal term")

    def one(params, r, key):
        f, g, e = base(params, r)
        elements, moved = term(lambda x: ansatz.apply(params, x), r, key)
        n_elec = r.shape[0]
        elements, moved = elements.reshape(n_elec, -1), moved.reshape(n_elec, -1, 3)
        return f, g, e + jnp.sum(elements), elements, moved

    return one


def _one_local_jet(ansatz: Ansatz, hamiltonian: Hamiltonian, engine: str) -> Callable:
    """``(params, r, key) -> (log|psi|, grad, E_L)`` of one walker; ``key`` rotates the
    quadrature of a nonlocal term (unused without one)."""
    base = _one_base_jet(ansatz, hamiltonian, engine)
    if nonlocal_of(hamiltonian) is None:
        return lambda params, r, key: base(params, r)

    def one(params, r, key):
        f, g, e = base(params, r)
        nl = nonlocal_energy(hamiltonian, lambda x: ansatz.apply(params, x), r, key)
        return f, g, e + nl

    return one


def _energy_stats(e: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jax.lax.pmean(jnp.mean(e), AXIS)
    variance = jax.lax.pmean(jnp.mean((e - mean) ** 2), AXIS)
    return mean, variance


def train_step(
    ansatz: Ansatz,
    hamiltonian: Hamiltonian,
    optimizer: Optimizer,
    *,
    sweeps: int,
    clip_width: float,
    target_acceptance: float,
    engine: str = "exact",
    chunk: int | None = None,
    step_scale: StepScale | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One device's training step ``(state, key, lr_scale) -> (state, stats)`` (inside
    ``pmap`` over the axis :data:`AXIS`).

    The optimizer's parameter update is multiplied by ``lr_scale`` (the caller lowers it
    after rejected steps). A step whose local energies, gradient, new parameters, optimizer
    state or walkers are not finite is rejected: parameters, optimizer state, walkers and
    step width stay as they were (``stats['finite'] == 0``). A non-finite new step width
    (no Metropolis moves) keeps the old one.
    """
    log_psi = batch_log_psi(ansatz)
    energies = batch_local_energy(ansatz, hamiltonian, engine, chunk)

    def step(state: TrainState, key: jax.Array, lr_scale: jax.Array):
        params = state.params
        walkers, acceptance = metropolis(
            log_psi, params, state.walkers, state.width, key, sweeps, step_scale
        )
        e = energies(params, walkers, jax.random.fold_in(key, ECP_STREAM))
        e_clipped = clip_local_energies(e, clip_width)
        new_params, new_opt_state, grad_norm = optimizer.update(
            params, state.opt_state, walkers, e_clipped
        )
        new_params = _scale_update(new_params, params, lr_scale)
        new_width = next_width(state.width, acceptance, target_acceptance)
        finite = finite_step(e, grad_norm, (new_params, new_opt_state, walkers))
        new_state = TrainState(
            _select(finite, new_params, params),
            _select(finite, new_opt_state, state.opt_state),
            jnp.where(finite, walkers, state.walkers),
            jnp.where(finite, new_width, state.width),
        )
        stats = train_stats(*_energy_stats(e), acceptance, state.width, grad_norm, finite)
        return new_state, stats

    return step


def next_width(width: jax.Array, acceptance: jax.Array, target: float) -> jax.Array:
    """The adapted Metropolis step width; the old one where no move was made (NaN)."""
    new_width = adapt_width(width, acceptance, target)
    return jnp.where(jnp.isfinite(new_width), new_width, width)


def finite_step(e: jax.Array, grad_norm: jax.Array, tree: Any) -> jax.Array:
    """Whether a training step is finite on every device: its local energies, gradient norm
    and ``tree`` (new parameters, optimizer state, walkers)."""
    finite = jnp.all(jnp.isfinite(e)) & jnp.isfinite(grad_norm) & _tree_all_finite(tree)
    return jax.lax.pmin(finite.astype(jnp.int32), AXIS) > 0


def train_stats(
    mean: jax.Array,
    variance: jax.Array,
    acceptance: jax.Array,
    width: jax.Array,
    grad_norm: jax.Array,
    finite: jax.Array,
) -> dict[str, jax.Array]:
    """A training step's statistics as the log stores them."""
    return {
        "energy": mean,
        "variance": variance,
        "acceptance": acceptance,
        "width": width,
        "grad_norm": grad_norm,
        "finite": finite.astype(jnp.float32),
    }


def metropolis(
    log_psi: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    walkers: jax.Array,
    width: jax.Array,
    key: jax.Array,
    sweeps: int,
    step_scale: StepScale | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``sweeps`` Metropolis sweeps of one device's walkers under ``|psi(params)|^2``
    (``log_psi``: batched), and the acceptance averaged over all devices."""
    walkers, _, acceptance = sample(
        lambda r: log_psi(params, r),
        walkers,
        log_psi(params, walkers),
        key,
        width,
        sweeps,
        step_scale,
    )
    return walkers, jax.lax.pmean(acceptance, AXIS)


def sample_step(
    ansatz: Ansatz,
    *,
    sweeps: int,
    target_acceptance: float,
    step_scale: StepScale | None = None,
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """One device's burn-in step ``(params, walkers, width, key) -> (walkers, width, acc)``."""
    log_psi = batch_log_psi(ansatz)

    def step(params, walkers, width, key):
        walkers, acceptance = metropolis(log_psi, params, walkers, width, key, sweeps, step_scale)
        return walkers, adapt_width(width, acceptance, target_acceptance), acceptance

    return step


def eval_step(
    ansatz: Ansatz,
    hamiltonian: Hamiltonian,
    *,
    sweeps: int,
    engine: str = "exact",
    chunk: int | None = None,
    observables: dict[str, Callable[[jax.Array], jax.Array] | WaveObservable | NuclearObservable]
    | None = None,
    step_scale: StepScale | None = None,
    nuclei: tuple[jax.Array, NucleiLogPsi] | None = None,
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """One device's evaluation step ``(params, walkers, width, key) -> (walkers, stats)``.

    ``stats`` holds walker averages over all devices of the local energy, its square, and of
    each observable (a function of one walker's positions, a :class:`WaveObservable`, or a
    :class:`NuclearObservable`, which needs ``nuclei``: the nuclear coordinates and the
    log-amplitude as a function of them). Observable ``k`` (in the dict's order) that asks
    for keys gets ``fold_in(fold_in(key, OBSERVABLE_STREAM), k)``, one per walker.
    """
    observables = observables or {}
    for name, fn in observables.items():
        if isinstance(fn, NuclearObservable) and nuclei is None:
            raise ValueError(
                f"observable {name!r} needs the wavefunction as a function of the nuclei, "
                "which only a molecular run provides"
            )
    log_psi = batch_log_psi(ansatz)
    energies = batch_local_energy(ansatz, hamiltonian, engine, chunk)

    def step(params, walkers, width, key):
        walkers, acceptance = metropolis(log_psi, params, walkers, width, key, sweeps, step_scale)
        e = energies(params, walkers, jax.random.fold_in(key, ECP_STREAM))
        stats = {
            "energy": jax.lax.pmean(jnp.mean(e), AXIS),
            "energy_sq": jax.lax.pmean(jnp.mean(e**2), AXIS),
            "acceptance": acceptance,
            "n_nonfinite": jax.lax.psum(jnp.sum(~jnp.isfinite(e)), AXIS),
        }
        if nuclei is not None:
            log_psi_at = lambda c, y: nuclei[1](params, c, y)
        signed_log_psi = lambda y: ansatz.apply(params, y)
        for index, (name, fn) in enumerate(observables.items()):
            if isinstance(fn, WaveObservable):
                one = lambda x, e_x, fn=fn: fn.fn(lambda y: ansatz.log_psi(params, y), x, e_x)
                values = jax.vmap(one)(walkers, e)
            elif isinstance(fn, NuclearObservable) and fn.signed:
                keys = walker_keys(
                    jax.random.fold_in(jax.random.fold_in(key, OBSERVABLE_STREAM), index),
                    walkers.shape[0],
                )
                one = lambda x, e_x, k, fn=fn: fn.fn(
                    log_psi_at, nuclei[0], x, e_x, signed_log_psi=signed_log_psi, key=k
                )
                values = jax.vmap(one)(walkers, e, keys)
            elif isinstance(fn, NuclearObservable):
                one = lambda x, e_x, fn=fn: fn.fn(log_psi_at, nuclei[0], x, e_x)
                values = jax.vmap(one)(walkers, e)
            else:
                values = jax.vmap(fn)(walkers)
            stats[name] = jax.lax.pmean(jnp.mean(values, axis=0), AXIS)
        return walkers, stats

    return step
