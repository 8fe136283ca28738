"""Scale-out: 1 vs 2 devices, 2 processes joined by jax.distributed, resume elsewhere.

Every multi-device case runs in a subprocess, with the device count fixed by XLA_FLAGS
before JAX is imported; systems are tiny (H2, STO-3G, Jastrow ansatz, 16 walkers).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc.cli import main
from nnqmc.parallel import device_keys, initialize_distributed

H2 = str(Path(__file__).parent.parent / "systems" / "h2.toml")
TINY = [
    "system.basis=sto-3g",
    "ansatz.kind=jastrow",
    "train.walkers=16",
    "sampler.burn_in=0",
    "sampler.decorrelation=2",
    "eval.steps=10",
    "eval.decorrelation=2",
]
STEPS = 4
TIMEOUT = 240


def _env(devices: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NNQMC_", "SLURM_")) or k == "NNQMC_COMPILATION_CACHE"
    }
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _python(script: str, args: list[str], devices: int, cwd: Path, extra_env=None):
    env = _env(devices) | (extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# 1 vs 2 devices: the same parameters and walkers give the same step, to float tolerance


STEP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.flatten_util import ravel_pytree
    import nnqmc
    from nnqmc import api
    from nnqmc.config import load_config
    from nnqmc.parallel import device_keys, first_replica, replicate, split_walkers
    from nnqmc.optimize import AXIS
    from nnqmc.steps import TrainState, eval_step, train_step

    h2, tiny = sys.argv[1], sys.argv[2:]
    flat = lambda tree: np.asarray(ravel_pytree(tree)[0]).tolist()
    same = lambda tree: all(np.array_equal(x, np.broadcast_to(x[0], x.shape), equal_nan=True)
                            for x in map(np.asarray, jax.tree_util.tree_leaves(tree)))
    out = {"n_devices": jax.device_count()}
    generalized = ["ansatz.kind=generalized", "ansatz.embedding_dim=8", "ansatz.layers=1",
                   "ansatz.n_rbf=4", "ansatz.jastrow_layers=1", "ansatz.backflow_layers=1",
                   "ansatz.copies=2"]
    cases = {"adam": ("adam", "float64", []), "spring": ("spring", "float64", []),
             "spring-mixed": ("spring", "mixed", []),
             "spring-generalized": ("spring", "float64", generalized)}
    for name, (optimizer, precision, extra) in cases.items():
        cfg = load_config(h2, [*tiny, f"train.optimizer={optimizer}",
                               f"precision={precision}", *extra])
        run = api.prepare(cfg)
        key = jax.random.PRNGKey(1)
        params = run.ansatz.init(key)
        # move away from the initial Jastrow so every parameter has a gradient
        params = jax.tree_util.tree_map(
            lambda p: p + 0.1 * jax.random.normal(key, jnp.shape(p), jnp.result_type(p)), params)
        walkers = api.initial_walkers(run, jax.random.fold_in(key, 1), 16)
        opt = run.optimizer()
        # no Metropolis sweeps: the walkers stay as given, whatever the device count
        one = train_step(run.ansatz, run.hamiltonian, opt, sweeps=0,
                         clip_width=cfg.train.clip_width, target_acceptance=0.5,
                         engine=cfg.train.laplacian)
        pmapped = jax.pmap(one, axis_name=AXIS, in_axes=(0, 0, None))
        step = lambda state, keys, p=pmapped: p(state, keys, jnp.asarray(1.0, jnp.float64))
        evaluate = jax.pmap(eval_step(run.ansatz, run.hamiltonian, sweeps=0,
                                      engine=cfg.train.laplacian), axis_name=AXIS)
        for d in (1, 2):
            state = TrainState(replicate(params, d), replicate(opt.init(params), d),
                               split_walkers(walkers, d), replicate(jnp.asarray(0.3), d))
            rec = []
            for k in range(2):
                state, stats = step(state, device_keys(key, k, d))
                s = first_replica(stats)
                rec.append({"params": flat(first_replica(state.params)),
                            "opt_state": flat(first_replica(state.opt_state)),
                            "energy": float(s["energy"]), "variance": float(s["variance"]),
                            "grad_norm": float(s["grad_norm"]), "finite": float(s["finite"]),
                            "replicated": same((state.params, state.opt_state, stats))})
            if name == "adam":
                _, stats = evaluate(state.params, state.walkers, state.width,
                                    device_keys(key, 9, d))
                s = first_replica(stats)
                rec.append({"eval_energy": float(s["energy"]),
                            "eval_energy_sq": float(s["energy_sq"])})
            out[f"{name}/{d}"] = rec
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.ci_slow  # 38 s on the 2-core CPU: the default suite stays under 20 minutes
def test_one_vs_two_devices_same_step(tmp_path):
    [(rc, out, err)] = _finish([_python(STEP_SCRIPT, [H2, *TINY], 2, tmp_path)])
    assert rc == 0, err
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[6:])
    assert result["n_devices"] == 2
    for name in ("adam", "spring", "spring-mixed", "spring-generalized"):
        one, two = result[f"{name}/1"], result[f"{name}/2"]
        # mixed: float32 per-walker gradients, vectorised over 16 or 8 walkers
        tol = 1e-5 if name.endswith("mixed") else 1e-10
        for a, b in zip(one[:2], two[:2], strict=True):
            assert a["finite"] == b["finite"] == 1.0
            assert a["replicated"] and b["replicated"]
            np.testing.assert_allclose(b["params"], a["params"], rtol=tol, atol=1e-2 * tol)
            np.testing.assert_allclose(b["opt_state"], a["opt_state"], rtol=tol, atol=1e-2 * tol)
            for key in ("energy", "variance", "grad_norm"):
                np.testing.assert_allclose(b[key], a[key], rtol=tol, err_msg=f"{name} {key}")
            assert a["grad_norm"] > 0
        assert one[0]["params"] != one[1]["params"]  # the updates moved them
    one, two = result["adam/1"][-1], result["adam/2"][-1]
    np.testing.assert_allclose(two["eval_energy"], one["eval_energy"], rtol=1e-10)
    np.testing.assert_allclose(two["eval_energy_sq"], one["eval_energy_sq"], rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Two processes (jax.distributed on localhost) and one process with two devices


RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from jax.flatten_util import ravel_pytree
    import nnqmc.api as api
    from nnqmc.cli import main

    log, argv = sys.argv[1], sys.argv[2:]
    steps = []
    plain_run = api.run

    def run(*args, **kwargs):  # test hook: record the parameters after every step
        hook = lambda step, params: steps.append(
            [step, np.asarray(ravel_pytree(params)[0]).tolist()])
        return plain_run(*args, **kwargs, on_step=hook)

    api.run = run
    code = main(argv)
    with open(log, "w") as f:
        json.dump(steps, f)
    sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process run and a 1-process 2-device run of the same input, side by side."""
    root = tmp_path_factory.mktemp("parallel")
    for sub in ("p0", "p1", "dev2"):
        (root / sub).mkdir()
    args = ["run", H2, "--out", "run", "--set", f"train.steps={STEPS}", *TINY]
    port = _free_port()
    procs = [
        # process 0 from command-line flags, process 1 from environment variables; each in
        # its own working directory so that a stray write by process 1 would show
        _python(
            RUN_SCRIPT,
            [str(root / "p0.json"), *args, "--coordinator", f"localhost:{port}"]
            + ["--num-processes", "2", "--process-id", "0"],
            1,
            root / "p0",
        ),
        _python(
            RUN_SCRIPT,
            [str(root / "p1.json"), *args],
            1,
            root / "p1",
            {
                "NNQMC_COORDINATOR": f"localhost:{port}",
                "NNQMC_NUM_PROCESSES": "2",
                "NNQMC_PROCESS_ID": "1",
            },
        ),
        _python(RUN_SCRIPT, [str(root / "dev2.json"), *args], 2, root / "dev2"),
    ]
    results = _finish(procs)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return root, results


def _steps(path: Path) -> list:
    return json.loads(path.read_text())


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_two_processes_agree_after_every_step(runs):
    root, results = runs
    p0, p1 = _steps(root / "p0.json"), _steps(root / "p1.json")
    assert [s for s, _ in p0] == [s for s, _ in p1] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(p0, p1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert p0[-1][1] != p0[0][1]
    # one process with two devices: the same keys and walkers per global device
    for (_, a), (_, b) in zip(p0, _steps(root / "dev2.json"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    # only process 0 writes, and prints
    assert not (root / "p1" / "run").exists()
    assert "E = " in results[0][1] and "E = " not in results[1][1]
    run = root / "p0" / "run"
    result = _result(run)
    assert result["devices"] == 2 and result["processes"] == 2
    with h5py.File(run / "checkpoint.h5") as f:
        assert f.attrs["step"] == STEPS and f["walkers"].shape == (16, 2, 3)
        np.testing.assert_array_equal(np.asarray(f["walkers"]).shape, (16, 2, 3))
    assert np.isfinite(result["energy"])


def _resume(run_dir: Path, steps: int) -> tuple[int, str, str]:
    args = [str(run_dir / ".." / "resume.json"), "run", H2, "--out", str(run_dir), "--resume"]
    args += ["--set", f"train.steps={steps}", *TINY]
    [res] = _finish([_python(RUN_SCRIPT, args, 1, run_dir.parent)])
    return res


def test_resume_two_process_run_on_one_process(runs):
    root, _ = runs
    run = root / "p0" / "run"
    before = _result(run)
    rc, out, err = _resume(run, STEPS + 2)
    assert rc == 0, err[-3000:]
    after = _result(run)
    assert after["steps"] == STEPS + 2 and after["devices"] == 1 and after["processes"] == 1
    with h5py.File(run / "train.h5") as f:
        assert list(f["step"][:]) == list(range(STEPS + 2))
        assert np.all(np.isfinite(f["energy"][:]))
    resumed = _steps(root / "p0" / "resume.json")
    assert [s for s, _ in resumed] == [STEPS + 1, STEPS + 2]
    assert (
        abs(after["energy"] - before["energy"])
        < 5 * np.hypot(after["energy_err"], before["energy_err"]) + 0.02
    )


def test_two_device_run_resumes_on_one_device(runs):
    root, _ = runs
    run = root / "dev2" / "run"
    before = _result(run)
    assert before["devices"] == 2 and before["processes"] == 1
    with h5py.File(run / "train.h5") as f:
        energies = np.asarray(f["energy"])
    rc, out, err = _resume(run, STEPS + 2)
    assert rc == 0, err[-3000:]
    after = _result(run)
    assert after["devices"] == 1 and after["steps"] == STEPS + 2
    with h5py.File(run / "train.h5") as f:
        assert list(f["step"][:]) == list(range(STEPS + 2))
        np.testing.assert_array_equal(f["energy"][:STEPS], energies)  # history kept
        assert np.all(np.isfinite(f["energy"][:]))
    with h5py.File(run / "checkpoint.h5") as f:
        assert f.attrs["step"] == STEPS + 2 and f["walkers"].shape == (16, 2, 3)
    for r in (before, after):
        assert np.isfinite(r["energy"]) and r["energy_err"] > 0
        assert -1.3 < r["energy"] < -0.9
    assert (
        abs(after["energy"] - before["energy"])
        < 5 * np.hypot(after["energy_err"], before["energy_err"]) + 0.02
    )


# ---------------------------------------------------------------------------------------------
# Errors and small pieces


def test_walkers_not_divisible_is_one_line_exit_2(tmp_path):
    args = ["-m", "nnqmc.cli", "run", H2, "--out", "out", "--set", "train.walkers=15"]
    proc = subprocess.run(
        [sys.executable, *args],
        env=_env(2),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "train.walkers = 15" in proc.stderr and "divisible" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_incomplete_distributed_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="go together"):
        initialize_distributed(environ={"NNQMC_COORDINATOR": "localhost:1234"})
    with pytest.raises(ValueError, match="not in 0 .. 1"):
        initialize_distributed("localhost:1", 2, 5, environ={})
    assert initialize_distributed(environ={}) is False  # nothing asked: single process
    code = main(["run", H2, "--out", str(tmp_path / "o"), "--num-processes", "2"])
    assert code == 2 and "go together" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_device_keys_depend_on_global_slot_only():
    key = jax.random.PRNGKey(3)
    one = np.asarray(device_keys(key, 7, 1))
    two = np.asarray(device_keys(key, 7, 2))
    np.testing.assert_array_equal(two[0], one[0])
    assert not np.array_equal(two[0], two[1])
    assert not np.array_equal(np.asarray(device_keys(key, 8, 1))[0], one[0])


def test_a_pmapped_step_compiles_once_from_replicated_inputs(caplog):
    """Inputs from replicate/split_walkers are placed as a step's outputs, so feeding the
    outputs back does not compile the step a second time (it did, once per run)."""
    import logging

    from nnqmc.parallel import AXIS, replicate, split_walkers

    step = jax.pmap(lambda x, w: (x + 1.0, w * 2.0), axis_name=AXIS)
    x, w = replicate(jnp.ones(3), 1), split_walkers(jnp.ones((4, 2)), 1)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                x, w = step(x, w)
            jax.block_until_ready(w)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
    assert float(x[0, 0]) == 4.0
