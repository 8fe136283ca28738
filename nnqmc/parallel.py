"""Device layout: walkers split over local devices, everything else replicated."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def device_count() -> int:
    return jax.local_device_count()


def split_walkers(x: jax.Array | np.ndarray, n_devices: int) -> jax.Array:
    """(n_walkers, ...) -> (n_devices, n_walkers / n_devices, ...)."""
    x = jnp.asarray(x)
    if x.shape[0] % n_devices:
        raise ValueError(f"{x.shape[0]} walkers cannot be split evenly over {n_devices} devices")
    return x.reshape(n_devices, x.shape[0] // n_devices, *x.shape[1:])


def join_walkers(x: jax.Array) -> np.ndarray:
    """(n_devices, n_local, ...) -> (n_walkers, ...) on the host."""
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])


def replicate(tree: Any, n_devices: int) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(jnp.asarray(x), (n_devices, *jnp.shape(x))), tree
    )


def first_replica(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)


def device_keys(key: jax.Array, step: int, n_devices: int) -> jax.Array:
    """Independent keys per device for one step, a pure function of (key, step)."""
    return jax.random.split(jax.random.fold_in(key, step), n_devices)
