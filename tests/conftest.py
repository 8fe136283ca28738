import os
import tempfile
from pathlib import Path

import jax

# The suite's compiled programs go to a cache of its own in the temporary directory, not
# into the user's (~/.cache/nnqmc/jax, 2 GiB, least recently used out), which thousands of
# test programs would flush; kept between runs on this machine like pytest's cache, in a
# directory only this user can write (else a fresh one).
if not {"NNQMC_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"} & set(os.environ):
    _cache = Path(tempfile.gettempdir()) / f"nnqmc-test-jax-cache-{os.getuid()}"
    _cache.mkdir(mode=0o700, exist_ok=True)
    _stat = _cache.stat()
    if _stat.st_uid != os.getuid() or _stat.st_mode & 0o022:
        _cache = Path(tempfile.mkdtemp(prefix="nnqmc-test-jax-cache-"))
    os.environ["NNQMC_COMPILATION_CACHE"] = str(_cache)

jax.config.update("jax_enable_x64", True)
# Tests monkeypatch the physics; traced steps stored on disk would not see it
# (nnqmc.executables). The tests of the store switch it on in their own processes.
os.environ["NNQMC_EXECUTABLES"] = "off"


import pytest  # noqa: E402

from nnqmc.molecule import Molecule  # noqa: E402
from nnqmc.scf import run_hf  # noqa: E402

# Small molecules with their Hartree-Fock solutions, shared by the ansatz tests.


@pytest.fixture(scope="module")
def lih():
    mol = Molecule(("Li", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 3.015]])
    return mol, run_hf(mol, "cc-pvdz")


@pytest.fixture(scope="module")
def be_triplet():
    """Four electrons, open shell: n_up = 3, n_down = 1 (UHF)."""
    mol = Molecule(("Be",), [[0.0, 0.0, 0.0]], spin=2)
    return mol, run_hf(mol, "6-31g")


@pytest.fixture(scope="module")
def h_atom():
    mol = Molecule(("H",), [[0.0, 0.0, 0.0]], spin=1)
    return mol, run_hf(mol, "6-31g")
