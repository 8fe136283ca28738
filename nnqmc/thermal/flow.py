"""A Boltzmann generator: a normalizing flow (flowjax) trained on an energy by reverse KL.

The flow's density over coordinates q ∈ R^d is that of q = G(s), s = F(z), z ~ N(0, 1):
F a masked autoregressive flow of rational-quadratic splines (trainable), G a fixed map
s ↦ y = loc + width ⊙ s and, where a box (lower, upper) is given, y ↦ lower + (upper -
lower) σ(y) (σ the logistic function). With a target p(q) ∝ exp(log_target(q)) the
reverse KL divergence, up to the unknown log Z,

    KL(p_flow ‖ p) = E_z[ -log_target(q(z)) + log p_flow(q(z)) ],
    log p_flow(q(z)) = log N(z) - log|det ∂q/∂z|,

is minimised by Adam on fresh batches of z; optionally plus ``data_weight`` times the
negative log-likelihood -E_data[log p_flow(q)] of example coordinates (maximum likelihood
on MD frames).

Samples are then reweighted exactly (:mod:`.weights`) against a defensive mixture
(:func:`defensive_sample`): q_mix = (1 - ε) p_flow + ε U, U uniform on the box, a fraction ε
(``FlowOptions.defensive``, 0.05) of the samples drawn from U, log w = log_target(q) -
log q_mix(q). A flow's density on a box goes to zero at the box's edges (the logistic map),
where the target need not (a dihedral's box is a cut circle), so p/p_flow is unbounded and
the weights' variance may be infinite; with the mixture w ≤ p/(ε U) is bounded and the
ESS loses at most the fraction ε. flowjax (a core dependency, with equinox and paramax) is
imported when a flow is first built, not with ``import nnqmc``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclass(frozen=True)
class FlowOptions:
    """The flow's shape (``layers`` autoregressive layers of splines with ``knots`` knots on
    [-``interval``, ``interval``], conditioners of one hidden layer of ``width``) and its
    training (``steps`` of Adam at ``learning_rate``, cosine-decayed, on ``batch`` samples;
    ``data_weight``: weight of maximum likelihood on example frames, 0 for none);
    ``defensive``: the uniform share ε of the proposal (:func:`defensive_sample`)."""

    layers: int = 4
    width: int = 32
    knots: int = 8
    interval: float = 5.0
    steps: int = 1500
    batch: int = 256
    learning_rate: float = 3e-3
    data_weight: float = 0.0
    seed: int = 0
    defensive: float = 0.05

    def __post_init__(self) -> None:
        for name in ("layers", "width", "knots", "steps", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"flow option {name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.interval <= 0 or self.data_weight < 0:
            raise ValueError("flow options: learning_rate and interval > 0, data_weight >= 0")
        if not 0.0 <= self.defensive < 1.0:
            raise ValueError(f"flow option defensive must be in [0, 1), got {self.defensive}")


class Flow:
    """A trained (or fresh) flow: :meth:`sample` coordinates, :meth:`log_prob` their density
    (with respect to dq), both batched over the leading axis."""

    def __init__(self, dist: Any) -> None:
        """``dist``: a flowjax distribution of shape (d,)."""
        self.dist = dist

    @property
    def dim(self) -> int:
        return int(self.dist.shape[-1])

    def sample(self, key: jax.Array, n: int) -> jnp.ndarray:
        """n samples q (n, d)."""
        return _jitted("sample")(self.dist, key, (n,))

    def log_prob(self, q: jnp.ndarray) -> jnp.ndarray:
        """log p_flow(q) of coordinates (n, d) -> (n,)."""
        return _jitted("log_prob")(self.dist, jnp.asarray(q, jnp.float64))

    def sample_and_log_prob(self, key: jax.Array, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """n samples and their log-density in one pass."""
        return _jitted("sample_and_log_prob")(self.dist, key, (n,))


@functools.cache
def _jitted(method: str):
    import equinox as eqx

    return eqx.filter_jit(lambda dist, *args: getattr(dist, method)(*args))


def _fixed_map(loc, width, lower, upper):
    from flowjax.bijections import Affine, Chain, Sigmoid

    shift = Affine(jnp.asarray(loc, jnp.float64), jnp.asarray(width, jnp.float64))
    if lower is None:
        return shift
    lo, hi = jnp.asarray(lower, jnp.float64), jnp.asarray(upper, jnp.float64)
    return Chain([shift, Sigmoid(shape=lo.shape), Affine(lo, hi - lo)])


def make_flow(
    dim: int,
    loc: np.ndarray,
    width: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    options: FlowOptions | None = None,
) -> Flow:
    """A fresh flow over R^d (or the box (lower, upper)), centred on ``loc`` with spread
    ``width`` in the unbounded coordinate y (the module docstring)."""
    import paramax
    from flowjax.bijections import Chain, RationalQuadraticSpline
    from flowjax.distributions import StandardNormal, Transformed
    from flowjax.flows import masked_autoregressive_flow

    o = options or FlowOptions()
    base = StandardNormal((dim,))
    maf = masked_autoregressive_flow(
        jax.random.key(o.seed),
        base_dist=base,
        transformer=RationalQuadraticSpline(knots=o.knots, interval=o.interval),
        flow_layers=o.layers,
        nn_width=o.width,
        invert=False,
    )
    fixed = paramax.non_trainable(_fixed_map(loc, width, lower, upper))
    return Flow(Transformed(base, Chain([maf.bijection, fixed])))


def train_flow(
    flow: Flow,
    log_target: Callable[[jnp.ndarray], jnp.ndarray],
    options: FlowOptions | None = None,
    data: np.ndarray | None = None,
) -> tuple[Flow, np.ndarray]:
    """The flow after reverse-KL training on ``log_target`` (one point q (d,) -> log p(q)
    up to a constant), plus maximum likelihood on ``data`` (n, d) where given with
    ``options.data_weight`` > 0; and the loss per step."""
    import equinox as eqx
    import paramax
    from flowjax.train import fit_to_key_based_loss

    o = options or FlowOptions()
    examples = None if data is None or o.data_weight == 0 else jnp.asarray(data, jnp.float64)

    def loss(params, static, key):
        dist = paramax.unwrap(eqx.combine(params, static))
        k_sample, k_data = jax.random.split(key)
        q, log_q = dist.sample_and_log_prob(k_sample, (o.batch,))
        kl = jnp.mean(log_q - jax.vmap(log_target)(q))
        if examples is None:
            return kl
        rows = jax.random.randint(k_data, (o.batch,), 0, examples.shape[0])
        return kl - o.data_weight * jnp.mean(dist.log_prob(examples[rows]))

    schedule = optax.cosine_decay_schedule(o.learning_rate, o.steps, alpha=0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    dist, losses = fit_to_key_based_loss(
        jax.random.key(o.seed + 1),
        flow.dist,
        loss_fn=loss,
        steps=o.steps,
        optimizer=optimizer,
        show_progress=False,
    )
    return Flow(dist), np.asarray(losses)


def defensive_sample(
    flow: Flow,
    key: jax.Array,
    n: int,
    lower: np.ndarray,
    upper: np.ndarray,
    epsilon: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """n samples q (n, d) of the mixture (1 - ε) p_flow + ε U(lower, upper) and its log
    density: round(ε n) of them uniform in the box (last), the rest from the flow; the
    weights p/q_mix of this stratified draw give a consistent self-normalised estimate."""
    lo, hi = jnp.asarray(lower, jnp.float64), jnp.asarray(upper, jnp.float64)
    n_uniform = round(epsilon * n)
    k_flow, k_uniform = jax.random.split(key)
    q = flow.sample(k_flow, n - n_uniform)
    if n_uniform:
        t = jax.random.uniform(k_uniform, (n_uniform, len(lo)), jnp.float64)
        q = jnp.concatenate([q, lo + (hi - lo) * t])
    log_flow = flow.log_prob(q)
    if epsilon == 0:
        return q, log_flow
    log_uniform = -jnp.sum(jnp.log(hi - lo))
    return q, jnp.logaddexp(np.log1p(-epsilon) + log_flow, np.log(epsilon) + log_uniform)
