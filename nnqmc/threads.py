"""CPU threads: keep LAPACK from competing with XLA's own thread pool.

On the CPU backend XLA runs every jitted program on its own thread pool, one thread per
core. The LAPACK routines that jaxlib calls for factorisations inside those programs
(Cholesky in SPRING, LU in the determinants) come from SciPy's OpenBLAS, which starts its
own threads, one per core, that spin while they wait. The two pools then fight over the
cores (docs/performance.md has the measurement). The matrices LAPACK sees here are small
(at most walkers x walkers, factorised once a step, against the walkers^2 x parameters
Gram product XLA computes), so one LAPACK thread is enough.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS, so the limit below finds it)
from threadpoolctl import threadpool_limits

F = TypeVar("F", bound=Callable[..., Any])


def single_threaded_blas(fn: F) -> F:
    """Decorator: on the CPU backend, every loaded BLAS/LAPACK library on one thread while
    ``fn`` runs (restored afterwards, so PySCF's mean-field runs outside keep their
    threads); on an accelerator nothing changes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import jax

        if jax.default_backend() != "cpu":
            return fn(*args, **kwargs)
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
