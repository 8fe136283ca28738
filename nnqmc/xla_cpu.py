"""XLA's CPU compiler: one setting nnqmc changes before JAX's backend starts.

Recent jaxlibs hand elementwise, reduce and dot fusions on CPU to YNNPACK
(``xla_cpu_experimental_ynn_fusion_type``). For what nnqmc computes, many small products of
a few electrons by an embedding of 32–64 features per walker, that is several times slower
than XLA's own code, so nnqmc turns all of them off (the measurements are in
docs/performance.md, "Measurements behind choices in the code").

The setting only applies if no JAX backend has started in this process yet; a user's own
``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is kept.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import MutableMapping
from pathlib import Path

YNN_FUSION = "xla_cpu_experimental_ynn_fusion_type"


def jaxlib_knows_flag(name: str) -> bool:
    """Whether a shared library of the installed jaxlib defines the XLA flag ``name``.

    XLA aborts the process on an unknown flag in ``XLA_FLAGS``, so a flag is only set when
    this jaxlib has it (the name is looked up in its binaries, without loading them)."""
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


def disable_ynn_fusion(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Add ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions) to ``XLA_FLAGS``
    unless it names that flag already or jaxlib lacks it. Returns whether it was added."""
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION in flags or not jaxlib_knows_flag(YNN_FUSION):
        return False
    environ["XLA_FLAGS"] = f"{flags} --{YNN_FUSION}=".strip()
    return True
