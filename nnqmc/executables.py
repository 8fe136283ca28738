"""Traced steps kept on disk, so that a later process skips tracing them (docs/pes.md,
"Throughput"; the compilation cache, :mod:`nnqmc.compile_cache`, saves only XLA's part).

A :class:`StoredProgram` exports its step's StableHLO once with :mod:`jax.export`, under a
digest of the caller's key (``Run.program_key`` and the step's name), the arguments' tree,
shapes and dtypes, nnqmc's source byte for byte, the versions of JAX, jaxlib, folx, optax,
NumPy and PySCF, the devices, ``XLA_FLAGS`` and the settings in :data:`_SETTINGS`. Every
process runs the exported module, loaded or traced, so results are bit-identical either way.

Files live in ``executables/`` in the compilation cache directory and follow its switch;
``NNQMC_EXECUTABLES=off`` switches off this store alone (a session that monkeypatches
nnqmc's physics must: the digest sees the files as imported). At most :data:`MAX_FILES`,
least recently used first out. Several devices or processes, host callbacks and
``jax.disable_jit()`` call the step as it is. An unreadable file is traced anew and
replaced, unless JAX's serialization (``flatbuffers``) is missing: then nothing is kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import secrets
from collections.abc import Callable, Hashable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.api_util import shaped_abstractify

from .compile_cache import OFF

__all__ = ["MAX_FILES", "StoredProgram", "loaded", "store_directory"]

MAX_FILES = 64
SUFFIX = ".nnqmc-exe"
_PACKAGES = ("jax", "jaxlib", "folx", "optax", "numpy", "pyscf")
# JAX settings a trace depends on (read where this JAX has them)
_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_softmax_custom_jvp",
)
_loaded = 0


def loaded() -> int:
    """How many traced steps this process has loaded from disk (for tests and benches)."""
    return _loaded


def store_directory(
    environ: Mapping[str, str] = os.environ, cache: str | None = None
) -> Path | None:
    """``executables/`` in the compilation cache directory (``cache``, by default the one in
    use); None if the cache is off, ``NNQMC_EXECUTABLES=off`` or this is one process of
    several."""
    base = cache if cache is not None else jax.config.jax_compilation_cache_dir
    switch = environ.get("NNQMC_EXECUTABLES", "on").strip().lower()
    if not base or switch in OFF or jax.process_count() > 1:
        return None
    return Path(base) / "executables"


def _source_digest() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_SOURCE = _source_digest()  # the code this process runs: read now, not at the first step


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _environment() -> tuple[Any, ...]:
    devices = jax.local_devices()
    return (
        tuple((p, _version(p)) for p in _PACKAGES),
        tuple((d.platform, d.device_kind) for d in devices),
        os.environ.get("XLA_FLAGS", ""),
        tuple((name, str(getattr(jax.config, name, None))) for name in _SETTINGS),
        _SOURCE,
    )


def _signature(leaves: list[Any], tree: Any) -> tuple[Any, ...]:
    avals = (shaped_abstractify(x) for x in leaves)
    return (str(tree), tuple((a.shape, str(a.dtype), bool(a.weak_type)) for a in avals))


@functools.cache
def _register_linear_algebra() -> None:
    """Lower (not run) the linear algebra the steps use, so that JAX registers its lazily
    set-up LAPACK / solver kernels; a step loaded from disk lowers none of it itself, and its
    program would crash on its first factorization."""

    def kernels(a: jax.Array) -> Any:
        s = a @ a.T + jnp.eye(3, dtype=a.dtype)
        c = jnp.linalg.cholesky(s)
        return (
            c,
            jnp.linalg.eigh(s),
            jnp.linalg.slogdet(a),
            jnp.linalg.qr(a),
            jnp.linalg.svd(a),
            jax.scipy.linalg.solve_triangular(c, a, lower=True),
        )

    for dtype in (jnp.float32, jnp.float64):
        jax.jit(kernels).lower(jax.ShapeDtypeStruct((3, 3), dtype))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _prune(directory: Path, keep: int = MAX_FILES) -> None:
    files = sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    for path in files[: max(len(files) - keep, 0)]:
        path.unlink(missing_ok=True)


class StoredProgram:
    """``fn`` (a step ``jax.pmap``ped over one device), run through its exported StableHLO
    (:mod:`jax.export`): exported once per argument signature, or loaded from
    :func:`store_directory` under a digest of ``key``, the signature and the environment,
    and compiled through JAX's compilation cache. ``key=None`` keeps nothing on disk (the
    key would not say what the trace depends on).

    With several devices or processes, or where a step cannot be exported (host
    callbacks), ``fn`` is called as it is."""

    def __init__(self, fn: Callable[..., Any], key: Hashable | None) -> None:
        self.fn = fn
        self.key = key
        self._calls: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __call__(self, *args: Any) -> Any:
        if jax.local_device_count() != 1 or jax.process_count() > 1 or jax.config.jax_disable_jit:
            return self.fn(*args)
        leaves, tree = jax.tree_util.tree_flatten(args)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # inside a trace: no export
            return self.fn(*args)
        signature = _signature(leaves, tree)
        call = self._calls.get(signature)
        if call is None:
            call = self._calls[signature] = self._load_or_export(leaves, tree, signature)
        if call is self.fn:
            return call(*args)
        return call(jax.device_put(leaves, jax.local_devices()[0]))  # one placement: one program

    def _path(self, signature: tuple[Any, ...]) -> Path | None:
        directory = store_directory()
        if directory is None or self.key is None:
            return None
        digest = hashlib.sha256(repr((self.key, signature, _environment())).encode())
        return directory / f"{digest.hexdigest()}{SUFFIX}"

    def _load_or_export(
        self, leaves: list[Any], in_tree: Any, signature: tuple[Any, ...]
    ) -> Callable[..., Any]:
        """``leaves -> outputs``: the step loaded from disk, or exported (and stored); or
        ``fn`` itself where it cannot be exported."""
        global _loaded
        path = self._path(signature)
        if path is not None and path.exists():
            try:
                _register_linear_algebra()
                module, out_tree = pickle.loads(path.read_bytes())
                exported = jax.export.deserialize(bytearray(module))
                call = _flat_call(exported, out_tree, leaves)  # compiled here: a bad one fails here
            except ImportError:  # no serialization (flatbuffers) here: the file may be fine
                path = None
            except Exception:  # noqa: BLE001 - a stale or damaged file is traced anew
                with contextlib.suppress(OSError):  # a read-only store: trace, keep nothing
                    path.unlink(missing_ok=True)
            else:
                with contextlib.suppress(OSError):  # recency for pruning; read-only is fine
                    os.utime(path)
                _loaded += 1
                return call
        out_trees = []

        def flat(*leaves: Any) -> list[Any]:  # flat in and out: custom pytrees stay here
            out_leaves, out_tree = jax.tree_util.tree_flatten(
                self.fn(*jax.tree_util.tree_unflatten(in_tree, leaves))
            )
            out_trees.append(out_tree)
            return out_leaves

        try:
            exported = jax.export.export(jax.jit(flat))(*leaves)  # for the backend in use
        except Exception:  # noqa: BLE001 - not exportable (host callbacks): run it as it is
            return self.fn
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                data = pickle.dumps((bytes(exported.serialize()), out_trees[0]))
                _write_atomically(path, data)
                _prune(path.parent)
            except Exception:  # noqa: BLE001 - not storing costs the next process time only
                pass
        return _flat_call(exported, out_trees[0], leaves)  # compiled as a loaded one is


def _flat_call(
    exported: Any, out_tree: Any, example: list[Any] | None = None
) -> Callable[[list[Any]], Any]:
    """``leaves -> outputs``: ``exported`` (flat leaves in and out), compiled now for
    leaves like ``example`` (else jitted), its outputs rebuilt as ``out_tree``."""
    call = jax.jit(exported.call)
    if example is not None:  # placed as the calls' leaves are: one compilation, one cache key
        call = call.lower(*jax.device_put(example, jax.local_devices()[0])).compile()
    return lambda leaves: jax.tree_util.tree_unflatten(out_tree, call(*leaves))
