"""XLA's CPU compiler: one setting nnqmc changes before JAX's backend starts.

Recent jaxlibs hand fusions of elementwise operations, reductions and dots on CPU to
YNNPACK (``xla_cpu_experimental_ynn_fusion_type``). For what nnqmc computes, many small
products of a few electrons by an embedding of 32–64 features per walker, that is several
times slower than XLA's own code; for the one large product of a step (SPRING's Gram
matrix) YNNPACK is faster. So nnqmc keeps YNNPACK for individual dots only. Medians of
alternated calls, LiH, 256 walkers, 2 cores (another job running), milliseconds with
jaxlib's default / no YNNPACK fusions / individual dots only:

| part | float32 | float64 |
|---|---|---|
| local energies (forward Laplacian) | 52 / 25 / 26 | 57 / 53 / 44 |
| per-walker parameter gradients | 47 / 20 / 19 | 33 / 39 / 39 |
| SPRING solve | 54 / 64 / 50 | 85 / 107 / 84 |
| 10 Metropolis steps | 58 / 24 / 27 | 54 / 68 / 50 |

The setting only applies if no JAX backend has started in this process yet; a user's own
``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is kept.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import MutableMapping
from pathlib import Path

YNN_FUSION = "xla_cpu_experimental_ynn_fusion_type"
INDIVIDUAL_DOTS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def jaxlib_knows_flag(name: str) -> bool:
    """Whether a shared library of the installed jaxlib holds the string ``name`` (an XLA
    flag or one of its values).

    XLA aborts the process on an unknown flag or value in ``XLA_FLAGS``, so a setting is only
    made when this jaxlib has it (looked up in its binaries, without loading them)."""
    try:
        import jaxlib
    except ImportError:
        return False
    needle = name.encode()
    for library in sorted(Path(jaxlib.__file__).parent.glob("*.so")):
        try:
            with library.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def ynn_individual_dots_only(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Add ``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` to
    ``XLA_FLAGS`` unless it names that flag already or jaxlib lacks the flag or the value.
    Returns whether it was added."""
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION in flags or not all(map(jaxlib_knows_flag, (YNN_FUSION, INDIVIDUAL_DOTS))):
        return False
    environ["XLA_FLAGS"] = f"{flags} --{YNN_FUSION}={INDIVIDUAL_DOTS}".strip()
    return True
