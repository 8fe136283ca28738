"""The persistent compilation cache: compiled steps kept on disk between processes.

A second ``nnqmc run`` (or ``nnqmc scan``, ``nnqmc dmc``, a Python session) with the same
shapes and settings loads its compiled programs from disk instead of compiling them again.
On by default, in ``$XDG_CACHE_HOME/nnqmc/jax`` (``~/.cache/nnqmc/jax``), at most
:data:`MAX_BYTES` (least recently used entries go first).

``NNQMC_COMPILATION_CACHE=DIR`` moves it, ``NNQMC_COMPILATION_CACHE=off`` switches it off;
a cache directory the user set (``JAX_COMPILATION_CACHE_DIR``, or
``jax_compilation_cache_dir`` before importing nnqmc) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax

__all__ = ["MAX_BYTES", "cache_directory", "enable_compilation_cache"]

MAX_BYTES = 2 * 2**30
OFF = ("off", "0", "false", "no", "none", "")


def cache_directory(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the cache lives for this environment; None if it is switched off or left to
    ``JAX_COMPILATION_CACHE_DIR``."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    setting = environ.get("NNQMC_COMPILATION_CACHE")
    if setting is not None:
        return None if setting.strip().lower() in OFF else Path(setting).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnqmc" / "jax"


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Point JAX's persistent compilation cache at :func:`cache_directory` (created if
    missing; an unwritable place leaves the cache off). Returns the directory in use."""
    path = cache_directory(environ)
    if path is None or jax.config.jax_compilation_cache_dir:  # the user's own setting
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
