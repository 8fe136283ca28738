"""Compiled steps shared across geometries and processes (issue 20): the geometry enters
the steps as arrays, so a scan traces and compiles its programs once, and the persistent
compilation cache serves them to the next process."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring
from test_pes import TINY

from nnqmc import programs
from nnqmc.cli import main
from nnqmc.compile_cache import cache_directory
from nnqmc.config import config_from_dict
from nnqmc.io import read_table
from nnqmc.parallel import device_keys, replicate, scatter_walkers
from nnqmc.pes import read_dataset
from nnqmc.pes import scan as scan_module
from nnqmc.run_setup import prepare

H2 = (
    TINY
    + """[scan]
kind = "bond"
atoms = [0, 1]
values = [1.2, 1.6, 2.0, 2.4]
forces = true
"""
)

_BACKEND_COMPILES: list[str] = []


def _count_backend_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _BACKEND_COMPILES.append(event)


monitoring.register_event_duration_secs_listener(_count_backend_compiles)


def test_a_scan_traces_and_compiles_its_steps_once(tmp_path, monkeypatch):
    """Four geometries with warm starts and forces: the burn-in, training and evaluation
    programs are built for the first geometry only, and XLA compiles nothing after it."""
    (tmp_path / "scan.toml").write_text(H2)
    per_geometry = []
    real_run = scan_module.api.run

    def counted(*args, **kwargs):
        built, compiled = programs.compilations(), len(_BACKEND_COMPILES)
        result = real_run(*args, **kwargs)
        per_geometry.append((programs.compilations() - built, len(_BACKEND_COMPILES) - compiled))
        return result

    monkeypatch.setattr(scan_module.api, "run", counted)
    assert main(["scan", str(tmp_path / "scan.toml"), "--out", str(tmp_path / "out")]) == 0
    assert per_geometry[0][0] == 3  # burn-in, train, eval (with the forces)
    assert per_geometry[1:] == [(0, 0)] * 3
    data = read_dataset(tmp_path / "out" / "scan.h5")
    assert np.all(np.isfinite(data.columns["forces"]))
    assert list(data.columns["warm_from"]) == [-1, 0, 1, 2]


def test_a_scan_with_dmc_builds_its_dmc_programs_once(tmp_path, monkeypatch):
    """Two geometries with [dmc] at two time steps: DMC's start and step are built, with the
    other steps, for the first geometry only, and XLA compiles nothing after it."""
    dmc = "[dmc]\ntimestep = [0.04, 0.02]\nsteps = 3\nequilibration = 2\n"
    scan = '[scan]\nkind = "bond"\natoms = [0, 1]\nvalues = [1.2, 1.6]\n'
    (tmp_path / "scan.toml").write_text(TINY + dmc + scan)
    per_geometry = []
    real_run = scan_module.api.run

    def counted(*args, **kwargs):
        built, compiled = programs.compilations(), len(_BACKEND_COMPILES)
        result = real_run(*args, **kwargs)
        per_geometry.append((programs.compilations() - built, len(_BACKEND_COMPILES) - compiled))
        return result

    monkeypatch.setattr(scan_module.api, "run", counted)
    assert main(["scan", str(tmp_path / "scan.toml"), "--out", str(tmp_path / "out")]) == 0
    assert per_geometry[0][0] == 5  # burn-in, train, eval, DMC start and step
    assert per_geometry[1:] == [(0, 0)]


def _run_at(bond: float, kind: str, precision: str = "float64"):
    data = {
        "name": "h2",
        "precision": precision,
        "system": {"atoms": f"H 0 0 0\nH 0 0 {bond}", "unit": "bohr", "basis": "sto-3g"},
        "ansatz": {"kind": kind, "embedding_dim": 8, "layers": 1, "n_rbf": 4},
        "train": {"steps": 1, "walkers": 16},
        "eval": {"decorrelation": 2},
    }
    return prepare(config_from_dict(data))


@pytest.mark.parametrize("kind", ["jastrow", "paulinet", "generalized"])
def test_the_physics_from_the_geometry_arrays_is_the_run_itself(kind):
    """Ansatz and Hamiltonian rebuilt from the (traced) geometry arrays give the run's own
    log|psi|, kinetic jet and potential."""
    run = _run_at(1.7, kind)
    params = run.ansatz.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.ones_like(x), params)
    r = jax.random.normal(jax.random.PRNGKey(1), (2, 3))

    @jax.jit
    def rebuilt(geometry, params, r):
        physics = run.physics(geometry)
        return physics.ansatz.apply(params, r)[1], physics.hamiltonian.potential(r)

    geometry = jax.tree_util.tree_map(jnp.asarray, run.geometry)
    log, pot = rebuilt(geometry, params, r)
    assert float(log) == pytest.approx(float(run.ansatz.log_psi(params, r)), rel=1e-12)
    assert float(pot) == pytest.approx(float(run.hamiltonian.potential(r)), rel=1e-12)


def test_a_shared_program_gives_what_a_program_of_its_own_gives():
    """The evaluation step compiled for one bond length, run with another geometry's
    arrays, equals that geometry's own program (mixed precision, generalized ansatz)."""
    programs.clear()
    first, second = _run_at(1.4, "generalized", "mixed"), _run_at(2.0, "generalized", "mixed")
    assert first.program_key == second.program_key
    params = second.ansatz.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x + 0.03 * jnp.ones_like(x), params)
    walkers = jax.random.normal(jax.random.PRNGKey(2), (16, 2, 3))
    n = jax.local_device_count()
    args = (
        replicate(params, n),
        scatter_walkers(walkers, n),
        replicate(jnp.asarray(0.3), n),
        device_keys(jax.random.PRNGKey(3), 0, n),
    )

    built = programs.compilations()
    programs.eval_program(first)
    shared = programs.eval_program(second)
    programs.eval_program(second, {})  # no extra observables: the same program
    assert programs.compilations() == built + 1
    own = programs.eval_program(dataclasses.replace(second, program_key=None))
    assert programs.compilations() == built + 2
    (w_shared, s_shared), (w_own, s_own) = shared(*args), own(*args)
    np.testing.assert_allclose(np.asarray(w_shared), np.asarray(w_own), rtol=1e-12)
    for name in s_own:
        np.testing.assert_allclose(np.asarray(s_shared[name]), np.asarray(s_own[name]), rtol=1e-10)
    programs.clear()


def test_the_cache_directory_follows_the_environment(tmp_path):
    home = str(Path.home() / ".cache" / "nnqmc" / "jax")
    assert str(cache_directory({})) == home
    assert cache_directory({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "nnqmc" / "jax"
    assert cache_directory({"NNQMC_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    assert cache_directory({"NNQMC_COMPILATION_CACHE": "off"}) is None
    assert cache_directory({"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}) is None


def test_the_suite_keeps_its_programs_out_of_the_users_cache():
    """tests/conftest.py points the cache into the temporary directory before nnqmc is
    imported, so the suite's programs do not flush the user's."""
    used = jax.config.jax_compilation_cache_dir
    assert not used or Path(used) != Path.home() / ".cache" / "nnqmc" / "jax"
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        assert (Path(used) if used else None) == cache_directory()


def _in_two_processes(tmp_path, body: str, env: dict[str, str]) -> list[dict]:
    """Run the H2 input twice, each in a new process sharing one cache directory: ``body``
    runs it (``config``: its path, ``sys.argv[1]``: the run directory) and prints one JSON
    line last, returned per process."""
    config = tmp_path / "h2.toml"
    config.write_text(H2.split("[scan]")[0])
    script = f"import json, sys\nconfig = {str(config)!r}\n" + textwrap.dedent(body)
    env = {**os.environ, "NNQMC_COMPILATION_CACHE": str(tmp_path / "cache"), **env}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    printed = []
    for k in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"run{k}")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        printed.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return printed


def test_a_second_process_loads_its_programs_from_the_cache(tmp_path):
    """The same run in two processes: the second finds its compiled programs on disk."""
    body = """
        from jax import monitoring
        hits = []
        monitoring.register_event_listener(
            lambda event, **kw: hits.append(event)
            if event == "/jax/compilation_cache/cache_hits" else None
        )
        import nnqmc
        from nnqmc.config import load_config
        nnqmc.api.run(load_config(config), sys.argv[1])
        print(json.dumps({"hits": len(hits)}))
        """
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # these programs compile fast
    hits = [p["hits"] for p in _in_two_processes(tmp_path, body, env)]
    assert hits[1] >= hits[0] + 3, hits  # at least burn-in, training and evaluation
    assert any((tmp_path / "cache").iterdir())


def test_a_second_process_loads_its_steps_whole_and_repeats_the_run_bitwise(tmp_path):
    """With the store of traced steps on (nnqmc.executables), the second process traces none
    of burn-in, training and evaluation: it loads them, and its run is the first one's."""
    body = """
        import nnqmc
        from nnqmc import executables
        from nnqmc.config import load_config
        result = nnqmc.api.run(load_config(config), sys.argv[1]).summary()
        print(json.dumps({"loaded": executables.loaded(), "energy": result["energy"]}))
        """
    runs = _in_two_processes(tmp_path, body, {"NNQMC_EXECUTABLES": "on"})
    assert runs[0]["loaded"] == 0 and runs[1]["loaded"] >= 3, runs
    assert runs[1]["energy"] == runs[0]["energy"]
    for name in ("train.h5", "eval.h5"):
        a = np.asarray(read_table(tmp_path / "run0" / name)["energy"])
        b = np.asarray(read_table(tmp_path / "run1" / name)["energy"])
        np.testing.assert_array_equal(a, b)


def test_the_nonlocal_scheme_names_the_dmc_programs_only_with_an_ecp():
    """Two runs that differ only in dmc.nonlocal_scheme share their DMC programs without
    an ECP (the scheme changes nothing there) and build their own with one."""
    with_ecp = {"atoms": "Be 0 0 0", "basis": "ccecp-cc-pvdz", "ecp": "ccecp"}
    systems = {"h2": ({"atoms": "H 0 0 0\nH 0 0 1.4", "basis": "sto-3g"}, 0), "be": (with_ecp, 2)}
    for name, (system, built) in systems.items():
        programs.clear()
        for scheme in ("tmoves", "locality"):
            data = {
                "name": name,
                "system": {**system, "unit": "bohr"},
                "ansatz": {"kind": "jastrow"},
                "dmc": {"nonlocal_scheme": scheme},
            }
            before = programs.compilations()
            programs.dmc_program(prepare(config_from_dict(data)))
        assert programs.compilations() - before == built, name


def test_dmc_ecp_points_name_the_programs():
    """``dmc.ecp_points`` 0 means the system's points (the same programs as naming them);
    another rule builds programs of its own."""
    system = {"atoms": "Be 0 0 0", "basis": "ccecp-cc-pvdz", "ecp": "ccecp", "unit": "bohr"}
    programs.clear()
    built, points = [], []
    for n in (0, 12, 6):
        data = {"name": "be", "system": system, "ansatz": {"kind": "jastrow"}}
        run = prepare(config_from_dict({**data, "dmc": {"ecp_points": n}}))
        before = programs.compilations()
        programs.dmc_program(run)
        built.append(programs.compilations() - before)
        points.append(programs.dmc_ecp_points(run))
    assert built == [2, 0, 2] and points == [12, 12, 6]
