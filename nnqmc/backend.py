"""Which JAX backend a process will use, decided before JAX starts one.

The CPU-only process tweaks (huge pages for XLA's buffers, no YNNPACK fusions, LAPACK on
one thread) help the CPU backend and have no business on a GPU or TPU run. JAX picks an
accelerator when its plugin is installed (``pip install -e ".[cuda12]"`` brings
``jax-cuda12-plugin``) unless ``JAX_PLATFORMS`` says otherwise; that is what
:func:`cpu_backend_expected` reads, without importing JAX.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib import metadata

ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def _installed_distributions() -> Iterable[str]:
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") or ""
        yield name.lower()


def cpu_backend_expected(
    environ: Mapping[str, str] = os.environ, installed: Iterable[str] | None = None
) -> bool:
    """True when JAX will run on its CPU backend: ``JAX_PLATFORMS`` names only ``cpu``, or
    it is unset and no accelerator plugin (CUDA, ROCm, TPU) is installed."""
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")]
    platforms = [p for p in platforms if p]
    if platforms:
        return platforms[0] == "cpu"
    names = _installed_distributions() if installed is None else installed
    return not any(name.startswith(ACCELERATOR_PLUGINS) for name in names)
