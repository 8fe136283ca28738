"""Transparent huge pages for glibc's large allocations, for the ``nnqmc`` command on Linux.

Each training step of XLA's CPU runtime allocates its temporary buffers afresh (LiH, 256
walkers, float32: one 74.5 MB block). It is allocated on one of XLA's worker threads, in
a glibc thread arena, and blocks over a thread heap's 64 MB are always mmapped and
unmapped again, whatever ``M_MMAP_MAX`` says. So every step page-faults all of it in
again. With glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc >= 2.35) such blocks are
advised to use transparent huge pages, and the faults almost end (measured in
docs/performance.md; one arena for all threads, ``MALLOC_ARENA_MAX=1``, was slower).

Tunables are read when a process starts, so the ``nnqmc`` command re-executes itself once
with the tunable added to ``GLIBC_TUNABLES`` (same PID, arguments and open files). Nothing
changes when the kernel's THP mode is ``never``, the C library is not glibc >= 2.35, the
user's ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb``, or ``NNQMC_NO_HUGEPAGES``
is set, or JAX will run on an accelerator (:mod:`nnqmc.backend`). Python API users can
set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
OPT_OUT = "NNQMC_NO_HUGEPAGES"


def thp_mode(path: Path = THP_MODE) -> str | None:
    """The kernel's selected THP mode (``always``, ``madvise``, ``never``), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, stop = text.find("["), text.find("]")
    return text[start + 1 : stop] if 0 <= start < stop else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the running glibc, None for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def hugepage_environment(
    environ: Mapping[str, str], mode: str | None, libc: tuple[int, ...] | None
) -> dict[str, str] | None:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, or None when
    the process should run as it is."""
    if OPT_OUT in environ or mode not in ("always", "madvise"):
        return None
    if libc is None or libc < (2, 35):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"
    return env


def reexec_with_hugepages(argv: Sequence[str]) -> None:
    """Replace this process by ``python -m nnqmc argv`` with the tunable set, if it applies
    (see the module docstring); return otherwise."""
    from .backend import cpu_backend_expected

    if not sys.platform.startswith("linux") or not cpu_backend_expected():
        return
    env = hugepage_environment(os.environ, thp_mode(), glibc_version())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "nnqmc", *argv], env)
