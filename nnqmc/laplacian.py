"""Kinetic-energy engines for a log-amplitude ``f(r) = log|psi(r)|`` of one walker.

The local kinetic energy is ``T = -1/2 (nabla^2 f + |nabla f|^2)``. Each engine also has
a "jet" form that returns ``(f, nabla f, T)``: the forward Laplacian computes the value and
gradient on the way, which diffusion Monte Carlo needs for its drift.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

LogPsi = Callable[[jax.Array], jax.Array]
KineticJet = tuple[jax.Array, jax.Array, jax.Array]
"""``(f, nabla f, T)`` of one walker; the gradient has the shape of ``r``."""


def kinetic_jet_exact(log_psi: LogPsi, r: jax.Array) -> KineticJet:
    """Exact Laplacian as 3N Hessian-vector products (jvp of grad) over the unit vectors."""
    shape = r.shape
    x = r.reshape(-1)
    grad_f = jax.grad(lambda x: log_psi(x.reshape(shape)))

    def second_derivative(v: jax.Array) -> jax.Array:
        return jnp.vdot(jax.jvp(grad_f, (x,), (v,))[1], v)

    eye = jnp.eye(x.size, dtype=x.dtype)
    laplacian = jnp.sum(jax.vmap(second_derivative)(eye))
    f, g = jax.value_and_grad(lambda x: log_psi(x.reshape(shape)))(x)
    return f, g.reshape(shape), -0.5 * (laplacian + jnp.vdot(g, g))


def kinetic_energy_exact(log_psi: LogPsi, r: jax.Array) -> jax.Array:
    """The kinetic energy of :func:`kinetic_jet_exact`."""
    return kinetic_jet_exact(log_psi, r)[2]


SPARSITY = 0.4
"""Default fraction of the electrons whose coordinates folx may carry as a sparse Jacobian."""


def sparsity_threshold(n_electrons: int, fraction: float = SPARSITY) -> int:
    """folx's ``sparsity_threshold`` for ``fraction`` of the electrons, in whole electrons.

    Each electron's embedding depends on all electrons only after the first message
    passing, so the Jacobian of the early intermediates with respect to the 3N coordinates
    is sparse; folx propagates it as sparse while it has at most this many non-zero
    columns. ``3 * floor(0.4 N)`` was the fastest measured for LiH and H2O
    (docs/performance.md).
    """
    return 3 * math.floor(fraction * n_electrons)


class _DropDenseFallbackWarning(logging.Filter):
    """folx logs a warning (on the root logger) each time it falls back to dense
    propagation at a data-dependent select (our cutoffs: ``jnp.where(r < rc, ...)``).
    That fallback is expected and correct; the warning is noise at every compilation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Could not perform index operation")


def kinetic_jet_forward(log_psi: LogPsi, r: jax.Array, sparsity: float = SPARSITY) -> KineticJet:
    """Forward Laplacian (folx): value, gradient and Laplacian in one forward pass, with
    sparse Jacobians up to :func:`sparsity_threshold` (``sparsity = 0``: all dense)."""
    import folx

    shape = r.shape
    laplacian = folx.forward_laplacian(
        lambda x: log_psi(x.reshape(shape)),
        sparsity_threshold=sparsity_threshold(shape[0], sparsity),
    )
    return _jet_from_folx(laplacian, shape, r.reshape(-1))


def kinetic_energy_forward(log_psi: LogPsi, r: jax.Array, sparsity: float = SPARSITY) -> jax.Array:
    """The kinetic energy of :func:`kinetic_jet_forward`."""
    return kinetic_jet_forward(log_psi, r, sparsity)[2]


def _jet_from_folx(laplacian: Callable, shape: tuple[int, ...], *args) -> KineticJet:
    """``(f, grad f, -1/2 (lap f + |grad f|^2))`` from a folx-transformed f, with folx's
    expected dense-fallback warning filtered."""
    quiet = _DropDenseFallbackWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        result = laplacian(*args)
    finally:
        root.removeFilter(quiet)
    g = result.jacobian.dense_array
    return result.x, g.reshape(shape), -0.5 * (result.laplacian + jnp.vdot(g, g))


def kinetic_jet_forward_with_features(
    log_psi: Callable[[jax.Array, jax.Array], jax.Array],
    r: jax.Array,
    features: tuple[jax.Array, jax.Array, jax.Array],
    sparsity: float = SPARSITY,
) -> KineticJet:
    """Forward Laplacian of ``log_psi(r, y(r))`` when the jet of ``y`` is known already:
    ``features = (y, dy/dr, lap y)`` with the Jacobian of shape ``(3N,) + y.shape``.

    folx then only propagates through what follows ``y`` (and through ``r`` directly), which
    lets an ansatz compute the jet of its expensive part by hand (see
    :mod:`nnqmc.ansatz.embedding_laplacian`). folx takes inputs that are already
    ``FwdLaplArray`` as they are (since 0.2.30 at least; the tests compare with the exact
    Laplacian)."""
    import folx
    from folx.api import FwdJacobian, FwdLaplArray

    n_coords = r.size
    threshold = sparsity_threshold(r.shape[0], sparsity)
    if threshold:
        identity = FwdJacobian(
            jnp.ones((1, *r.shape), r.dtype), np.arange(n_coords).reshape(1, *r.shape)
        )
    else:
        identity = FwdJacobian.from_dense(jnp.eye(n_coords, dtype=r.dtype).reshape(-1, *r.shape))
    y, y_jac, y_lap = features
    r_in = FwdLaplArray(r, identity, jnp.zeros_like(r))
    y_in = FwdLaplArray(y, FwdJacobian.from_dense(y_jac), y_lap)
    laplacian = folx.forward_laplacian(log_psi, sparsity_threshold=threshold, disable_jit=True)
    return _jet_from_folx(laplacian, r.shape, r_in, y_in)


KINETIC_ENGINES = {
    "exact": kinetic_energy_exact,
    "forward": kinetic_energy_forward,
    "folx": kinetic_energy_forward,
}
KINETIC_JETS = {
    "exact": kinetic_jet_exact,
    "forward": kinetic_jet_forward,
    "folx": kinetic_jet_forward,
}
"""For a bare ``log_psi`` "forward" and "folx" are the same; given an ansatz,
:func:`nnqmc.steps.batch_local_energy` lets "forward" use the ansatz's own kinetic energy."""
