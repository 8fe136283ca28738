"""Device layout over all devices of all processes.

Walkers are split evenly over every device of every process (the global pmap axis); the
parameters, optimizer state and step width are replicated. Process ``p`` with ``L`` local
devices holds the walkers of global device slots ``p * L ... p * L + L - 1``, in the order in
which the full walker array is stored in a checkpoint, so a run can resume on any number of
devices or processes that divides the walker count. One device in one process is the case
n = 1 of the same code.

Several processes (hosts) are joined by :func:`initialize_distributed` before any JAX
computation; with one process every collective helper here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "devices"  # the pmap axis of every step

ENV_COORDINATOR = "NNQMC_COORDINATOR"
ENV_NUM_PROCESSES = "NNQMC_NUM_PROCESSES"
ENV_PROCESS_ID = "NNQMC_PROCESS_ID"


def device_count() -> int:
    """Devices of this process."""
    return jax.local_device_count()


def global_device_count() -> int:
    """Devices of all processes: the size of the pmap axis."""
    return jax.device_count()


def process_count() -> int:
    return jax.process_count()


def process_index() -> int:
    return jax.process_index()


def is_main_process() -> bool:
    """Process 0, the only one that writes files."""
    return jax.process_index() == 0


def _same(tree: Any) -> Any:
    return tree


_place = jax.pmap(_same, axis_name=AXIS)


def on_devices(tree: Any) -> Any:
    """A pytree with a leading device axis placed exactly as a pmapped step places its
    outputs. A step called first with host-placed inputs and then with its own outputs sees
    two placements and compiles twice; placed like this, it compiles once."""
    return _place(tree) if jax.tree_util.tree_leaves(tree) else tree


def split_walkers(x: jax.Array | np.ndarray, n_devices: int) -> jax.Array:
    """(n_walkers, ...) -> (n_devices, n_walkers / n_devices, ...), placed on the devices."""
    x = jnp.asarray(x)
    if x.shape[0] % n_devices:
        raise ValueError(f"{x.shape[0]} walkers cannot be split evenly over {n_devices} devices")
    return on_devices(x.reshape(n_devices, x.shape[0] // n_devices, *x.shape[1:]))


def join_walkers(x: jax.Array) -> np.ndarray:
    """(n_devices, n_local, ...) -> (n_walkers, ...) on the host."""
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])


def scatter_walkers(x: jax.Array | np.ndarray, n_devices: int | None = None) -> jax.Array:
    """All walkers (n_walkers, ...) -> this process's share, (n_local_devices, n_per_device, ...).

    ``n_devices`` (default: all local devices) devices per process; the walker count must be
    divisible by ``n_devices * process_count()``.
    """
    n_local = n_devices or device_count()
    n_total = n_local * process_count()
    if x.shape[0] % n_total:
        raise ValueError(f"{x.shape[0]} walkers cannot be split evenly over {n_total} devices")
    per_process = x.shape[0] // process_count()
    start = process_index() * per_process
    return split_walkers(x[start : start + per_process], n_local)


def gather_walkers(x: jax.Array) -> np.ndarray:
    """(n_local_devices, n_per_device, ...) on every process -> all walkers, (n_walkers, ...).

    With several processes this is a collective: every process must call it.
    """
    local = join_walkers(x)
    if process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def broadcast_from_main(tree: Any) -> Any:
    """Process 0's values of a pytree of host arrays on every process (a collective).

    The other processes pass arrays of the same shapes and dtypes (their values are ignored).
    """
    if process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(tree)
    return jax.tree_util.tree_map(np.asarray, out)


def replicate(tree: Any, n_devices: int) -> Any:
    """One copy of every leaf per device, placed on the devices (see :func:`on_devices`)."""
    return on_devices(
        jax.tree_util.tree_map(
            lambda x: jnp.broadcast_to(jnp.asarray(x), (n_devices, *jnp.shape(x))), tree
        )
    )


def first_replica(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)


@jax.jit
def _fold_keys(key: jax.Array, step: jax.Array, slots: jax.Array) -> jax.Array:
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(slots)


def device_keys(key: jax.Array, step: int, n_devices: int | None = None) -> jax.Array:
    """This process's per-device keys for one step, (n_devices, ...).

    The key of a device is a pure function of (key, step, global device slot), so the same
    seed gives the same streams on one process with two devices as on two processes with one.
    ``n_devices`` defaults to all local devices.
    """
    n = n_devices or device_count()
    first = process_index() * n
    return _fold_keys(key, jnp.asarray(step, jnp.uint32), jnp.arange(first, first + n))


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} = {value!r} is not an integer") from None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Join the processes of a multi-host run with ``jax.distributed.initialize``.

    Arguments given explicitly win over ``NNQMC_COORDINATOR`` / ``NNQMC_NUM_PROCESSES`` /
    ``NNQMC_PROCESS_ID``. Without either, a SLURM job step with more than one task (``srun``)
    is joined by JAX's own cluster detection (one process per task, one GPU per task where
    there are GPUs). Must run before any JAX computation. Returns whether it initialised.
    """
    environ = os.environ if environ is None else environ
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(environ, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(environ, ENV_PROCESS_ID)
    given = (coordinator, num_processes, process_id)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError(
                "--coordinator, --num-processes and --process-id (or "
                f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}) go together"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process id {process_id} is not in 0 .. {num_processes - 1} "
                f"(--num-processes {num_processes})"
            )
        if ":" not in coordinator:
            raise ValueError(f"coordinator {coordinator!r} is not HOST:PORT")
        if num_processes == 1:
            return False
        _use_cpu_collectives()
        jax.distributed.initialize(coordinator, num_processes, process_id)
        return True
    if (_env_int(environ, "SLURM_STEP_NUM_TASKS") or 1) > 1:
        _use_cpu_collectives()
        jax.distributed.initialize()
        return True
    return False


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU devices need gloo (the default since jax 0.4.36)."""
    name = "jax_cpu_collectives_implementation"
    if name in jax.config.values and jax.config.values[name] in (None, "none"):
        jax.config.update(name, "gloo")
