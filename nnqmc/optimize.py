"""Clipped VMC gradient and the optimizers (optax Adam and the SPRING natural gradient).

Every function here is written for one device's share of the walkers and reduces over the
named pmap axis, so one device is just the case n = 1 of the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .parallel import AXIS

Params = Any
BatchLogPsi = Callable[[Params, jax.Array], jax.Array]


def gather_devices(x: jax.Array, axis: int = 0) -> jax.Array:
    """``x`` of every device stacked along ``axis`` (``all_gather(tiled=True)``); on one
    device ``x`` itself, since XLA's one-device all-gather still copies."""
    if jax.lax.axis_size(AXIS) == 1:
        return x
    return jax.lax.all_gather(x, AXIS, axis=axis, tiled=True)


def all_walkers(x: jax.Array) -> jax.Array:
    """Values of every walker on every device, flattened (n_devices * n_local,)."""
    return gather_devices(x.reshape(-1))


def clip_local_energies(e: jax.Array, width: float) -> jax.Array:
    """Clip to median ± width * mean absolute deviation from the median (over all devices)."""
    everything = all_walkers(e)
    median = jnp.median(everything)
    spread = jnp.mean(jnp.abs(everything - median))
    return jnp.clip(e, median - width * spread, median + width * spread)


def vmc_gradient(
    log_psi: BatchLogPsi, params: Params, walkers: jax.Array, e_clipped: jax.Array
) -> Params:
    """grad E = 2 < (E_L - <E_L>) grad log|psi| > with clipped local energies."""
    center = jax.lax.pmean(jnp.mean(e_clipped), AXIS)
    weights = jax.lax.stop_gradient(e_clipped - center)

    def surrogate(p):
        return 2.0 * jnp.mean(weights * log_psi(p, walkers))

    return jax.lax.pmean(jax.grad(surrogate)(params), AXIS)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves in ``dtype`` (integer leaves as they are)."""

    def one(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(one, tree)


def _in_dtype(params: Params, walkers: jax.Array, dtype: Any) -> tuple[Params, jax.Array]:
    """Parameters and walkers cast to ``dtype`` (as they are for None)."""
    if dtype is None:
        return params, walkers
    return cast_floats(params, dtype), walkers.astype(dtype)


def learning_rate_schedule(lr: float, decay_steps: float) -> optax.Schedule:
    """lr / (1 + step / decay_steps)."""
    return lambda step: lr / (1.0 + step / decay_steps)


@dataclass(frozen=True)
class Optimizer:
    """``update(params, state, walkers, e_clipped) -> (params, state, grad_norm)``."""

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, jax.Array, jax.Array], tuple[Params, Any, jax.Array]]


def adam(
    log_psi: BatchLogPsi,
    learning_rate: float,
    decay_steps: float,
    max_grad_norm: float,
    gradient_dtype: Any = None,
) -> Optimizer:
    """optax Adam on the clipped VMC gradient, with a global norm clip and a 1/(1 + k/K)
    learning rate. ``gradient_dtype`` (e.g. float32 with float64 parameters): parameters
    and walkers are cast to it before ``log_psi`` is differentiated."""
    tx = optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adam(learning_rate_schedule(learning_rate, decay_steps)),
    )

    def update(params, state, walkers, e_clipped):
        p, r = _in_dtype(params, walkers, gradient_dtype)
        grads = vmc_gradient(log_psi, p, r, e_clipped)
        grads = jax.tree_util.tree_map(lambda g, q: g.astype(q.dtype), grads, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, optax.tree_utils.tree_norm(grads)

    return Optimizer(tx.init, update)


class SpringState(NamedTuple):
    """Replicated SPRING state: the previous direction delta_{k-1} (flat) and the step k."""

    direction: jax.Array  # (P,) unconstrained delta_{k-1}, before lr and norm constraint
    count: jax.Array  # () int32, number of updates taken


# Leaves of at least this many parameters get a Jacobian block of their own; runs of
# smaller neighbouring leaves share one, so that there are few N x N Gram products.
MIN_BLOCK = 1024


def leaf_groups(sizes: Sequence[int], min_block: int = MIN_BLOCK) -> list[tuple[int, int]]:
    """Contiguous ranges ``[start, stop)`` of leaves: a leaf of ``>= min_block`` entries on
    its own, each run of smaller neighbours together. Their concatenation is ravel order."""
    groups: list[tuple[int, int]] = []
    start = None
    for i, size in enumerate(sizes):
        if size >= min_block:
            if start is not None:
                groups.append((start, i))
                start = None
            groups.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        groups.append((start, len(sizes)))
    return groups


def jacobian_blocks(
    log_psi: BatchLogPsi, params: Params, walkers: jax.Array, min_block: int = MIN_BLOCK
) -> list[jax.Array]:
    """O[i, :] = d log|psi(walker_i)| / d theta for the local walkers, as column blocks
    ``[O_1, ..., O_B]`` (each ``(n_local, P_b)``) whose concatenation is the flat
    (``ravel_pytree``) order. Blocks follow :func:`leaf_groups`: concatenating all leaves
    into one ``(n, P)`` matrix costs a full extra pass over O."""
    n = walkers.shape[0]

    def one(p, walker):
        return log_psi(p, walker[None])[0]

    grads = jax.vmap(jax.grad(one), in_axes=(None, 0))(params, walkers)
    leaves = [x.reshape(n, -1) for x in jax.tree_util.tree_leaves(grads)]
    if not leaves:  # nothing to train (e.g. the bare HF ansatz): one empty block
        return [jnp.zeros((n, 0), walkers.dtype)]
    groups = leaf_groups([x.shape[1] for x in leaves], min_block)
    return [jnp.concatenate(leaves[a:b], axis=1) if b - a > 1 else leaves[a] for a, b in groups]


def _centre(x: jax.Array) -> jax.Array:
    """Subtract the mean over the last axis: ``x P`` with ``P = I - 11^T / N``."""
    return x - jnp.mean(x, axis=-1, keepdims=True)


def _solve_float64(matrix: jax.Array, rhs: jax.Array, floor: float) -> jax.Array:
    """``matrix^{-1} rhs`` for a symmetric N x N matrix whose eigenvalues are ``>= floor``
    in exact arithmetic, in float64 (nnqmc enables x64): with float32 walkers only the
    N^2 P Gram product is float32, not the N^3 / 3 factorisation of the damped, possibly
    ill-conditioned N x N matrix.

    Cholesky first. A float32 Gram product rounds its entries by about
    ``eps_32 * max_i |O_i|^2``; one walker with a large gradient row (near a node) can push
    the smallest eigenvalues below zero, and then the factorisation fails (NaN). Only then
    the solve goes through ``matrix = V diag(w) V^T`` and adds ``s = 2 (floor - min w)`` to
    every eigenvalue: rounding has moved the spectrum by about ``floor - min w`` either way,
    so this step gets that much more damping than asked, which keeps the rounding noise
    from being amplified (clamping only the negative eigenvalues at ``floor`` gave a
    direction off by more than its own size in the test). The step stays finite instead of
    being rejected step after step while the same walker is in the batch."""
    m = matrix.astype(jnp.float64)
    b = rhs.astype(jnp.float64)
    x = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(m, lower=True), b)

    def eigen_solve(_):
        w, v = jnp.linalg.eigh(m)
        shift = 2.0 * jnp.maximum(floor - w[0], 0.0)
        return v @ ((v.T @ b) / (w + shift))

    return jax.lax.cond(jnp.all(jnp.isfinite(x)), lambda _: x, eigen_solve, None)


def spring_direction(
    blocks: Sequence[jax.Array],
    e: jax.Array,
    previous: jax.Array,
    damping: float,
    momentum: float,
) -> tuple[jax.Array, jax.Array]:
    """The SPRING direction from the column blocks of ALL walkers' O (N, P) (see
    :func:`jacobian_blocks`; ``[O]`` is one block) and clipped local energies e (N,).

    With O_bar = (O - mean_i O) / sqrt(N) and eps = -2 (e - mean e) / sqrt(N) (so that
    O_bar^T eps = -grad E, the clipped VMC energy gradient):

        delta = O_bar^T (O_bar O_bar^T + damping I)^{-1} (eps - mu O_bar previous)
                + mu previous

    The N x N matrix gets ``11^T / N`` added as in the SPRING paper's implementation: 1 is
    an eigenvector of O_bar O_bar^T with eigenvalue 0 and both eps and O_bar @ previous are
    orthogonal to it (they are centred), so this changes nothing in exact arithmetic but lifts
    the smallest eigenvalue from ``damping`` to ``1 + damping`` for a better-conditioned
    Cholesky. Returns ``(delta, -grad E)``.

    In float64, O is never centred: with ``P = I - 11^T / N``, O_bar = P O / sqrt(N), so
    ``O_bar O_bar^T = P (O O^T) P / N``, ``O_bar v = P (O v) / sqrt(N)`` and
    ``O_bar^T z = O^T (P z) / sqrt(N)``: only the Gram product, one matrix-vector product
    and one back-projection read O. Rounding in ``O O^T`` is about ``eps_mach * sum_p
    mean(O_p)^2`` (~1e-10 for LiH) against ``damping``; in float32 that bound is too loose,
    so there the blocks are centred as they enter the Gram product (XLA fuses it) but not
    for the two products with vectors, where rounding only scales with
    ``eps_mach * |mean(O_p)| / std(O_p)`` per parameter (centred copies of O for those
    would cost another pass; docs/performance.md).
    """
    n = blocks[0].shape[0]
    dtype = blocks[0].dtype
    eps = (-2.0 * _centre(e) / jnp.sqrt(jnp.asarray(n, e.dtype))).astype(dtype)
    gram_blocks = blocks
    if jnp.finfo(dtype).bits < 64:
        gram_blocks = [b - jnp.ones((n,), dtype) @ b / n for b in blocks]
    scale = jnp.sqrt(jnp.asarray(n, dtype))
    offsets = np.cumsum([b.shape[1] for b in blocks])[:-1]
    previous_blocks = jnp.split(previous, offsets)
    gram = sum(b @ b.T for b in gram_blocks)
    o_previous = sum(b @ q for b, q in zip(blocks, previous_blocks, strict=True))
    residual = eps - momentum * _centre(o_previous) / scale
    t = _centre(_centre(gram).T) / n
    t = 0.5 * (t + t.T) + damping * jnp.eye(n, dtype=dtype) + 1.0 / n
    zeta = _solve_float64(t, residual, max(damping, 1e-12)).astype(dtype)
    weights = _centre(jnp.stack([zeta, eps])) / scale
    back = jnp.concatenate([weights @ b for b in blocks], axis=1)
    return back[0] + momentum * previous, back[1]


def per_group_direction(
    blocks: Sequence[jax.Array],
    e: jax.Array,
    previous: jax.Array,
    damping: float,
    momentum: float,
    groups: int,
) -> tuple[jax.Array, jax.Array]:
    """SPRING's direction from one kernel per group of rows (``groups`` equal, consecutive
    groups: a shared training's geometries) and the mean of the groups' own directions
    (:func:`spring_direction` of each group's n = N / G rows, centred and scaled over them),

        delta = (1/G) sum_g [O_bar_g^T (O_bar_g O_bar_g^T + damping I)^{-1}
                             (eps_g - mu O_bar_g previous)] + mu previous.

    Where the groups ask the same of the parameters this is the joint step; where they ask
    different things each moves by about 1/G of its own step (the joint kernel, with its
    cross-group blocks, solves for all rows at once; keeping only its diagonal blocks
    would be the sum, G times this where the groups agree). The G kernels cost N^2 P / G
    to form, against N^2 P for the joint one; under ``vmap`` each group's solve also runs
    its eigendecomposition fallback (n^3 each). ``-grad E`` is the mean of the groups'
    (the joint one's, for groups of equal size). With one group it is
    :func:`spring_direction`."""
    if groups == 1:
        return spring_direction(blocks, e, previous, damping, momentum)
    split = lambda x: x.reshape(groups, -1, *x.shape[1:])  # noqa: E731
    one = lambda b, eg: spring_direction(b, eg, previous, damping, momentum)  # noqa: E731
    deltas, minus_grads = jax.vmap(one)([split(b) for b in blocks], split(e))
    return jnp.mean(deltas, axis=0), jnp.mean(minus_grads, axis=0)


def spring(
    log_psi: BatchLogPsi,
    learning_rate: float,
    decay_steps: float,
    damping: float,
    momentum: float,
    max_norm: float,
    gradient_dtype: Any = None,
) -> Optimizer:
    """SPRING (Goldshlager, Abrahamsen & Lin 2024): MinSR with damping and momentum.

    Each device computes the per-walker gradients O of log|psi| for its walkers; O and the
    clipped local energies are all-gathered, so every device solves the same N x N system
    (N = walkers on all devices) and takes the same step (the state stays replicated).
    See :func:`spring_direction` for the direction delta_k. The step is

        theta_{k+1} = theta_k + c_k eta_k delta_k,   eta_k = lr / (1 + k / decay_steps),
        c_k = min(1, max_norm / ||eta_k delta_k||)   (Euclidean norm over all parameters),

    i.e. ``||theta_{k+1} - theta_k|| <= max_norm``. (The paper's constraint
    ``||eta delta||^2 <= C`` is ``max_norm = sqrt(C)``.) The momentum state keeps the
    unconstrained delta_k.

    ``update`` returns as ``grad_norm`` the norm of the clipped VMC energy gradient
    ``||grad E|| = ||O_bar^T eps||`` (the same quantity Adam reports), not of the step.

    Memory: every device holds the N x P matrix O of all walkers; cost O(N^2 P + N^3).

    ``gradient_dtype`` (``precision = "mixed"``: float32 with float64 parameters and
    walkers): O, its Gram product and the direction are computed in that dtype from
    parameters and walkers cast to it (``log_psi`` must then be the ansatz built in it);
    the local energies are centred before the cast, the N x N Cholesky stays float64, and
    the step is added to the parameters in their own dtype.
    """
    if momentum < 0.0 or momentum >= 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    if damping < 0.0:
        raise ValueError(f"damping must be >= 0, got {damping}")

    def init(params):
        flat, _ = ravel_pytree(params)
        return SpringState(jnp.zeros_like(flat), jnp.zeros((), jnp.int32))

    def update(params, state, walkers, e_clipped):
        cast, walkers = _in_dtype(params, walkers, gradient_dtype)
        blocks = [gather_devices(b) for b in jacobian_blocks(log_psi, cast, walkers)]
        e = gather_devices(e_clipped)
        settings = (learning_rate, decay_steps, damping, momentum, max_norm)
        return spring_step(params, state, blocks, e, *settings)

    return Optimizer(init, update)


def spring_step(
    params: Params,
    state: SpringState,
    blocks: Sequence[jax.Array],
    e: jax.Array,
    learning_rate: float,
    decay_steps: float,
    damping: float,
    momentum: float,
    max_norm: float,
    groups: int = 1,
) -> tuple[Params, SpringState, jax.Array]:
    """One SPRING update (see :func:`spring`) from the Jacobian column blocks and clipped
    local energies of ALL walkers (as :func:`spring_direction` takes them): ``(params,
    state, ||grad E||)``. The blocks' dtype is the one the direction is computed in.
    ``groups > 1``: one kernel per group of that many equal, consecutive groups of rows
    and the mean of their directions (:func:`per_group_direction`)."""
    flat, unravel = ravel_pytree(params)
    dtype = blocks[0].dtype
    previous = state.direction.astype(dtype)
    delta, minus_grad = per_group_direction(blocks, e, previous, damping, momentum, groups)
    eta = learning_rate / (1.0 + state.count.astype(dtype) / decay_steps)
    step = eta * delta
    norm = jnp.linalg.norm(step)
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(dtype).tiny))
    new_params = unravel(flat + (factor * step).astype(flat.dtype))
    new_state = SpringState(delta.astype(state.direction.dtype), state.count + 1)
    return new_params, new_state, jnp.linalg.norm(minus_grad)


# Per optimizer: (learning rate, max norm) used when the config leaves them unset.
DEFAULTS = {"adam": (0.01, 1.0), "spring": (0.02, 0.1)}


def make_optimizer(
    name: str, log_psi: BatchLogPsi, train_config, gradient_dtype: Any = None
) -> Optimizer:
    """The optimizer named in the config; unset learning rate / norm take ``DEFAULTS``.
    ``gradient_dtype``: the dtype ``log_psi`` is differentiated in, if not the parameters'."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}")
    lr, max_norm = DEFAULTS[name]
    lr = train_config.learning_rate or lr
    max_norm = train_config.max_grad_norm or max_norm
    if name == "adam":
        return adam(log_psi, lr, train_config.lr_decay_steps, max_norm, gradient_dtype)
    return spring(log_psi, *spring_settings(train_config), gradient_dtype)


def spring_settings(train_config) -> tuple[float, float, float, float, float]:
    """``(learning_rate, decay_steps, damping, momentum, max_norm)`` of SPRING for a
    ``[train]`` section (unset ones: :data:`DEFAULTS`), in :func:`spring`'s order."""
    lr, max_norm = DEFAULTS["spring"]
    return (
        train_config.learning_rate or lr,
        train_config.lr_decay_steps,
        train_config.damping,
        train_config.momentum,
        train_config.max_grad_norm or max_norm,
    )
