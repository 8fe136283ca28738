"""Reliability: kill -9 and resume, signals, NaN steps, corrupt checkpoints, locks, full or
read-only disks. Tiny runs (H2, STO-3G, Jastrow, Adam, 16 walkers); kills in subprocesses."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc import api, io, run_setup
from nnqmc.cli import main
from nnqmc.config import load_config
from nnqmc.scf import run_hf

steps_module = importlib.import_module("nnqmc.steps")
H2 = str(Path(__file__).parent.parent / "systems" / "h2.toml")
STEPS, EVAL_STEPS, EVERY = 12, 8, 4
TINY = [
    "system.basis=sto-3g",
    "ansatz.kind=jastrow",
    "train.optimizer=adam",
    "train.walkers=16",
    "sampler.burn_in=4",
    "sampler.decorrelation=2",
    f"train.steps={STEPS}",
    f"train.checkpoint_every={EVERY}",
    f"eval.steps={EVAL_STEPS}",
    "eval.decorrelation=2",
]
TIMEOUT = 240

# Runs the CLI and kills itself (or holds, or signals itself) at a chosen point:
#   argv: MODE AT CLI-ARGS...; MODE "train"/"eval" acts after that progress step, "replace"
#   at the AT-th os.replace (mid checkpoint rotation); ACTION from $NNQMC_TEST_ACTION.
KILLER = textwrap.dedent(
    """
    import os, signal, sys, time
    import nnqmc.cli as cli

    mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    action = os.environ.get("NNQMC_TEST_ACTION", "kill")

    def act():
        if action == "hold":
            open(os.environ["NNQMC_TEST_MARKER"], "w").close()
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGKILL)

    if mode == "replace":
        real_replace, calls = os.replace, [0]

        def replace(a, b):
            calls[0] += 1
            if calls[0] == at:
                act()
            real_replace(a, b)

        os.replace = replace
    else:
        real_call = cli.ProgressPrinter.__call__

        def call(self, phase, step, total, stats):
            real_call(self, phase, step, total, stats)
            if phase == mode and step == at:
                act()

        cli.ProgressPrinter.__call__ = call
    sys.exit(cli.main(argv))
    """
)


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NNQMC_", "SLURM_")) or k == "NNQMC_COMPILATION_CACHE"
    }
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _spawn(mode: str, at: int, args: list[str], cwd: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", KILLER, mode, str(at), *args],
        env=_env() | extra,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def _run_args(out: Path, *extra: str) -> list[str]:
    return ["run", H2, "--out", str(out), *extra, "--set", *TINY]


def _tables(run: Path) -> dict[str, dict[str, np.ndarray]]:
    return {
        name: {k: v for k, v in io.read_table(run / name).items() if k != "wall_time"}
        for name in (io.TRAIN_LOG, io.EVAL_LOG)
    }


# Resume promises the last bit: a run killed and resumed in fresh processes ends with the
# rows of one uninterrupted fresh process (the SCF runs on one thread,
# nnqmc.scf.one_thread). A run inside the test process, after the rest of the suite has
# compiled its own programs, may round its first row 1 ulp apart; resumes made in-process
# are compared to float64 rounding, RTOL: a resume that went wrong differs by far more.
RTOL = 1e-12


def _assert_same_run(run: Path, ref: Path, exact: bool = False) -> None:
    """The same result, training log (but wall times) and evaluation log, to the last bit
    (``exact``) or to float64 rounding; the same step counts exactly."""
    ta, tb = _tables(run), _tables(ref)
    for name in ta:
        assert sorted(ta[name]) == sorted(tb[name])
        for column in ta[name]:
            a, b = ta[name][column], tb[name][column]
            if exact:
                np.testing.assert_array_equal(a, b, err_msg=f"{name}: {column}")
            else:
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=0, err_msg=f"{name}: {column}")
    a, b = json.loads((run / io.RESULT).read_text()), json.loads((ref / io.RESULT).read_text())
    for key in ("steps", "eval_steps", "rejected_steps"):
        assert a[key] == b[key], key
    for key in ("energy", "energy_err", "variance"):
        assert a[key] == (b[key] if exact else pytest.approx(b[key], rel=RTOL, abs=0)), key


def _assert_finite_checkpoint(path: Path) -> int:
    with h5py.File(path) as f:
        for group in ("params", "opt_state"):
            for leaf in f[group].values():
                assert np.all(np.isfinite(leaf[()])), leaf.name
        assert np.all(np.isfinite(f["walkers"][()])) and np.isfinite(f.attrs["width"])
        return int(f.attrs["step"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run, for comparisons and as a finished run to copy."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_run_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def fresh_reference(tmp_path_factory) -> Path:
    """The same run in a fresh process, as the killed and resumed ones are."""
    base = tmp_path_factory.mktemp("fresh_reference")
    out = base / "run"
    rc, err = _wait(_spawn("train", 10**9, _run_args(out), base))
    assert rc == 0, err[-2000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


# --------------------------------------------------------------------------- 2, 3, 5, 6
@pytest.mark.parametrize("seed", [0, 1])
def test_kills_signals_and_a_second_process_leave_the_same_result(
    fresh_reference, tmp_path, capsys, seed
):
    rng = random.Random(seed)  # the kill points: two fixed sets of four
    out = tmp_path / "run"
    marker = tmp_path / "holding"
    k1 = rng.randint(1, STEPS - 3)
    # 1. hold after a random training step; a second run on the directory is refused;
    #    then kill -9 from outside
    proc = _spawn(
        "train",
        k1,
        _run_args(out),
        tmp_path,
        NNQMC_TEST_ACTION="hold",
        NNQMC_TEST_MARKER=str(marker),
    )
    try:
        t0 = time.time()
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() - t0 < TIMEOUT
            time.sleep(0.2)
        assert main(_run_args(out, "--resume")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by process {proc.pid}" in err
    finally:
        proc.send_signal(signal.SIGKILL)
        rc, _ = _wait(proc)
    assert rc == -signal.SIGKILL
    assert (out / io.LOCK).exists()  # stale, taken over below

    # 2. resume; SIGTERM at a later random step: finishes the step, checkpoints, exit 143
    k2 = rng.randint(k1 + 1, STEPS - 1)
    rc, err = _wait(
        _spawn("train", k2, _run_args(out, "--resume"), tmp_path, NNQMC_TEST_ACTION="term")
    )
    assert rc == 143, err[-2000:]
    assert "taking over the stale lock" in err
    assert f"stopped by SIGTERM after step {k2} of {STEPS}" in err
    assert "continue with: nnqmc run" in err and "--resume" in err
    assert _assert_finite_checkpoint(out / io.CHECKPOINT) == k2
    assert not (out / io.LOCK).exists()

    # 3. resume; kill -9 in the middle of some atomic write or checkpoint rotation
    rc, err = _wait(_spawn("replace", rng.randint(1, 8), _run_args(out, "--resume"), tmp_path))
    assert rc in (-signal.SIGKILL, 0), err[-2000:]

    # 4. resume; kill -9 after a random evaluation step (eval.h5 keeps the rows measured)
    k3 = rng.randint(1, EVAL_STEPS - 1)
    rc, err = _wait(_spawn("eval", k3, _run_args(out, "--resume"), tmp_path))
    assert rc in (-signal.SIGKILL, 0), err[-2000:]
    if rc != 0:
        with h5py.File(out / io.EVAL_LOG) as f:
            assert len(f["energy"]) >= k3

    # 5. `nnqmc eval RUN_DIR` continues the evaluation; everything as if never
    #    interrupted, to the last bit
    rc, err = _wait(_spawn("eval", 10**9, ["eval", str(out)], tmp_path))
    assert rc == 0, err[-2000:]
    _assert_same_run(out, fresh_reference, exact=True)
    assert not (out / io.LOCK).exists()


def test_mean_field_orbitals_are_the_same_in_every_call():
    """Threaded, PySCF's orbitals changed in their last bits from call to call and process
    to process (H2, cc-pVTZ: 4 different energies in 8 processes), and with them every
    energy of a run: a resumed one ended 1 ulp off the uninterrupted one."""
    from pyscf import lib

    molecule = load_config(H2).system.molecule
    with lib.with_omp_threads(4):  # the caller's threads do not matter
        threads = lib.num_threads()  # 1 where PySCF was built without OpenMP
        results = [run_hf(molecule, "cc-pvtz") for _ in range(10)]
        assert lib.num_threads() == threads  # and are given back
    assert len({r.mo_up.tobytes() for r in results}) == 1
    assert len({r.energy for r in results}) == 1


def test_sigint_checkpoints_and_exits_130(tmp_path, monkeypatch, capsys):
    plain_run = api.run

    def run(*args, **kwargs):
        def hook(step, params):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

        return plain_run(*args, **kwargs, on_step=hook)

    monkeypatch.setattr(api, "run", run)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job without job control
    assert main(_run_args(out)) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 3" in err and "--resume" in err
    assert _assert_finite_checkpoint(out / io.CHECKPOINT) == 3
    assert not (out / io.RESULT).exists() and not (out / io.LOCK).exists()
    assert signal.getsignal(signal.SIGINT) is before  # restored


# --------------------------------------------------------------------------- 1: checkpoints
def test_corrupt_newest_checkpoint_falls_back_to_previous(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    path = run / io.CHECKPOINT
    data = bytearray(path.read_bytes())
    with h5py.File(path) as f:
        offset = f["walkers"].id.get_offset()
    data[offset + 5] ^= 0xFF  # one flipped byte inside the walkers
    path.write_bytes(bytes(data))
    with pytest.raises(io.CheckpointError, match="checksum"):
        io.read_checked(path, lambda f: None)
    assert main(_run_args(run, "--resume")) == 0
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and io.PREVIOUS_CHECKPOINT in err
    assert (run / (io.CHECKPOINT + ".corrupt")).exists()
    _assert_same_run(run, reference)  # retrained from step 8: the same steps again


def test_truncated_or_missing_checkpoints(reference, tmp_path):
    run = _copy(reference, tmp_path)
    load = lambda p: io.read_checked(p, lambda f: int(f.attrs["step"]))  # noqa: E731
    path, previous = run / io.CHECKPOINT, run / io.PREVIOUS_CHECKPOINT
    assert io.read_newest(path, previous, load)[0] == STEPS
    path.write_bytes(path.read_bytes()[:1000])
    step, warnings = io.read_newest(path, previous, load)
    assert step == STEPS - EVERY and "unreadable" in warnings[0]
    previous.write_bytes(b"")
    with pytest.raises(io.CheckpointError):
        io.read_newest(path, previous, load)
    assert io.read_newest(tmp_path / "a.h5", tmp_path / "b.h5", load) == (None, [])


def test_checkpoints_are_atomic_and_the_last_two_kept(reference):
    with h5py.File(reference / io.CHECKPOINT) as f:
        assert f.attrs["step"] == STEPS and len(f.attrs[io.DIGEST]) == 64
    with h5py.File(reference / io.PREVIOUS_CHECKPOINT) as f:
        assert f.attrs["step"] == STEPS - EVERY
    assert not list(reference.glob(".*tmp"))
    assert not io.all_finite({"a": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match="non-finite"):
        io.save_checkpoint(
            reference / "x.h5",
            step=1,
            params={"a": np.array([np.nan])},
            opt_state=(),
            walkers=np.zeros((1, 1, 3)),
            width=0.1,
            key=np.zeros(2),
            history={},
        )
    assert not (reference / "x.h5").exists()


# --------------------------------------------------------------------------- 4: NaN guard
def _poison_local_energies(monkeypatch, bad: set[int] | int) -> None:
    """The n-th call of the local energies (one per step) is NaN for n in ``bad`` (or >= it)."""
    real = steps_module.batch_local_energy
    calls = [0]

    def poison(_):
        calls[0] += 1
        hit = calls[0] >= bad if isinstance(bad, int) else calls[0] in bad
        return np.float64(np.nan if hit else 0.0)

    def batch_local_energy(ansatz, hamiltonian, engine, chunk=None):
        energies = real(ansatz, hamiltonian, engine, chunk)

        def fn(params, walkers, key=None):
            e = energies(params, walkers, key)
            shape = jax.ShapeDtypeStruct((), e.dtype)
            return e + jax.pure_callback(poison, shape, jnp.sum(e))

        return fn

    monkeypatch.setattr(steps_module, "batch_local_energy", batch_local_energy)


def _same_leaves(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_nan_steps_are_rejected_counted_and_lower_the_learning_rate(tmp_path, monkeypatch):
    _poison_local_energies(monkeypatch, {3, 4, 7})
    seen = []
    out = tmp_path / "run"
    config = load_config(H2, TINY)
    result = api.run(config, out, on_step=lambda s, p: seen.append(jax.tree.map(np.copy, p)))
    result = result.summary()
    assert result["rejected_steps"] == 3 and np.isfinite(result["energy"])
    log = io.read_table(out / io.TRAIN_LOG)
    np.testing.assert_array_equal(np.flatnonzero(log["finite"] == 0), [2, 3, 6])
    np.testing.assert_array_equal(log["lr_scale"][:8], [1, 1, 1, 0.5, 0.25, 0.25, 0.25, 0.125])
    with h5py.File(out / io.TRAIN_LOG) as f:
        assert f.attrs["rejected_steps"] == 3
    for rejected in (2, 6):  # parameters unchanged by a rejected step
        _same_leaves(seen[rejected], seen[rejected - 1])
    # the second in a row (step 4, itself on the checkpoint grid) returns to the state of
    # the last checkpoint step before the rejections, 0: the parameters the run started from
    from nnqmc.phases.training import initial_parameters
    from nnqmc.run_setup import prepare

    _same_leaves(seen[3], initial_parameters(prepare(config))[1])
    assert any(np.any(a != b) for a, b in zip(*map(jax.tree.leaves, seen[2:4]), strict=True))
    assert _assert_finite_checkpoint(out / io.CHECKPOINT) == STEPS
    assert _assert_finite_checkpoint(out / io.PREVIOUS_CHECKPOINT) == STEPS - EVERY


def _stop_at(monkeypatch, step: int) -> None:
    """``api.run`` with a SIGINT to itself after training step ``step``."""
    plain_run = api.run

    def run(*args, **kwargs):
        def hook(done, params):
            if done == step:
                os.kill(os.getpid(), signal.SIGINT)

        return plain_run(*args, **kwargs, on_step=hook)

    monkeypatch.setattr(api, "run", run)


def test_two_rejected_steps_in_a_row_return_to_the_last_checkpoint_step(
    tmp_path, monkeypatch, capsys
):
    """Steps 6 and 7 non-finite: after step 7 parameters, optimizer and walkers are those of
    step 4 (the checkpoint grid's last), and the run goes on from there at a quarter of the
    learning rate; interrupted at step 5 (off the grid: the checkpoint keeps the anchor)
    and resumed, interrupted again at step 6 (between the two) and resumed, the same rows
    to the last bit."""
    seen = []
    _poison_local_energies(monkeypatch, {6, 7})
    config = load_config(H2, TINY)
    whole = tmp_path / "whole"
    api.run(config, whole, on_step=lambda s, p: seen.append(jax.tree.map(np.copy, p)))
    assert "7: 2 rejected steps in a row; the state" in capsys.readouterr().err
    _same_leaves(seen[6], seen[3])  # after step 7: step 4's parameters
    _same_leaves(seen[5], seen[4])  # after step 6: rejected, unchanged
    log = io.read_table(whole / io.TRAIN_LOG)
    np.testing.assert_array_equal(log["lr_scale"][4:9], [1, 1, 0.5, 0.25, 0.25])
    np.testing.assert_array_equal(np.flatnonzero(~np.isfinite(log["energy"])), [5, 6])

    cut = tmp_path / "cut"
    monkeypatch.undo()
    _stop_at(monkeypatch, 5)
    assert main(_run_args(cut)) == 130
    monkeypatch.undo()
    _poison_local_energies(monkeypatch, {1})  # step 6, then stop
    _stop_at(monkeypatch, 6)
    assert main(_run_args(cut, "--resume")) == 130
    monkeypatch.undo()
    _poison_local_energies(monkeypatch, {1})  # step 7: the second in a row
    assert main(_run_args(cut, "--resume")) == 0
    assert "back to that of step 4" in capsys.readouterr().err
    a, b = io.read_table(cut / io.TRAIN_LOG), log
    for column in a:
        if column != "wall_time":
            np.testing.assert_array_equal(a[column], b[column], err_msg=column)


def test_max_bad_steps_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_local_energies(monkeypatch, 3)
    out = tmp_path / "run"
    assert main(_run_args(out) + ["train.max_bad_steps=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "4 non-finite steps in a row" in err[-1] and err[-1].startswith("nnqmc: error:")
    assert str(out / io.CHECKPOINT) in err[-1]
    assert _assert_finite_checkpoint(out / io.CHECKPOINT) == 6
    log = io.read_table(out / io.TRAIN_LOG)
    np.testing.assert_array_equal(log["finite"], [1, 1, 0, 0, 0, 0])
    assert not (out / io.RESULT).exists() and not (out / io.LOCK).exists()


# --------------------------------------------------------------------------- 5: locks, --force
def test_live_lock_refused_stale_lock_taken_over(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / io.LOCK).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        assert main(_run_args(run)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by process {sleeper.pid}" in err
        with pytest.raises(io.LockedError):
            io.acquire_lock(run)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "stale lock" in io.acquire_lock(run)[0]  # its owner is gone now
    assert io.live_lock_owner(run) == (os.getpid(), os.uname().nodename)
    io.release_lock(run)
    assert not (run / io.LOCK).exists()


def test_finished_run_is_not_overwritten_without_force(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    before = (run / io.RESULT).read_text()
    assert main(_run_args(run)) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert (run / io.RESULT).read_text() == before
    assert main(["run", H2, "--out", str(run), "--force", "--set", *TINY, "train.steps=2"]) == 0
    assert json.loads((run / io.RESULT).read_text())["steps"] == 2
    assert len(io.read_table(run / io.TRAIN_LOG)["step"]) == 2
    assert (
        not (run / io.PREVIOUS_CHECKPOINT).exists()
        or _assert_finite_checkpoint(run / io.PREVIOUS_CHECKPOINT) == 0
    )


# --------------------------------------------------------------------------- 6: evaluation
def test_eval_extends_an_evaluation(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    first = io.read_table(reference / io.EVAL_LOG)["energy"]
    assert main(["eval", str(run), "--steps", str(EVAL_STEPS + 4)]) == 0
    result = json.loads((run / io.RESULT).read_text())
    assert result["eval_steps"] == EVAL_STEPS + 4 and result["steps"] == STEPS
    energies = io.read_table(run / io.EVAL_LOG)["energy"]
    assert len(energies) == EVAL_STEPS + 4
    np.testing.assert_array_equal(energies[:EVAL_STEPS], first)
    assert "E = " in capsys.readouterr().out


def _another_scf_solution(monkeypatch) -> None:
    """Every fresh SCF lands on another solution: its two orbitals rotated into each other."""
    real = run_setup.run_scf

    def rotated(*args, **kwargs):
        scf = real(*args, **kwargs)
        c, s = np.cos(0.3), np.sin(0.3)
        mo = scf.mo_up @ np.array([[c, -s], [s, c]])
        return dataclasses.replace(scf, mo_up=mo, mo_down=mo.copy())

    monkeypatch.setattr(run_setup, "run_scf", rotated)


def test_a_continued_run_keeps_the_reference_it_was_trained_on(
    reference, tmp_path, monkeypatch, capsys
):
    stored = io.load_reference(reference / io.REFERENCE)
    fresh = api.prepare(load_config(reference / io.CONFIG_COPY)).scf
    np.testing.assert_array_equal(stored["mo_up"], fresh.mo_up)
    np.testing.assert_array_equal(stored["ci"], fresh.ci)
    extend = lambda run: main(["eval", str(run), "--steps", str(EVAL_STEPS + 4)])
    as_trained = _copy(reference, tmp_path / "a")
    assert extend(as_trained) == 0
    _another_scf_solution(monkeypatch)
    pinned, unpinned = _copy(reference, tmp_path / "b"), _copy(reference, tmp_path / "c")
    (unpinned / io.REFERENCE).unlink()
    capsys.readouterr()
    assert extend(pinned) == 0
    assert "differs from the reference stored" not in capsys.readouterr().err  # no new SCF
    assert extend(unpinned) == 0
    assert f"holds no {io.REFERENCE}" in capsys.readouterr().err
    energy = lambda run: io.read_table(run / io.EVAL_LOG)["energy"][EVAL_STEPS:]
    np.testing.assert_array_equal(energy(pinned), energy(as_trained))
    assert not np.allclose(energy(unpinned), energy(as_trained))


def test_a_continued_run_solves_no_scf(reference, tmp_path, monkeypatch, capsys):
    """With reference.h5 in the directory, an evaluation and a resume build the reference
    from it: PySCF's SCF solver is never called."""
    from pyscf.scf import hf

    def no_solver(*args, **kwargs):
        raise AssertionError("an SCF was solved")

    monkeypatch.setattr(run_setup, "run_scf", no_solver)
    monkeypatch.setattr(hf.SCF, "kernel", no_solver)
    run = _copy(reference, tmp_path)
    resumed = api.run(load_config(H2, TINY), run, resume=True)
    assert resumed.run.scf.method == "RHF" and resumed.evaluated.steps == EVAL_STEPS
    np.testing.assert_array_equal(
        resumed.run.scf.mo_up, io.load_reference(reference / io.REFERENCE)["mo_up"]
    )
    assert main(["eval", str(run), "--steps", str(EVAL_STEPS + 2)]) == 0
    assert "holds no" not in capsys.readouterr().err


def test_every_process_builds_the_stored_reference(reference, monkeypatch):
    """Process 0 reads reference.h5 and sends it; another process, which sees no file,
    receives it into arrays of the same shapes and dtypes and builds the same reference."""
    from nnqmc import reference_file

    config, path = load_config(reference / io.CONFIG_COPY), reference / io.REFERENCE
    sent: list = []
    monkeypatch.setattr(reference_file, "broadcast_from_main", lambda t: sent.append(t) or t)
    on_main, _ = reference_file.read_reference(config, path)
    received = iter(sent)

    def receive(template):
        value = next(received)
        like = lambda a, b: (np.shape(a), np.asarray(a).dtype) == (np.shape(b), np.asarray(b).dtype)
        assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(like, template, value)))
        return value

    monkeypatch.setattr(reference_file, "broadcast_from_main", receive)
    monkeypatch.setattr(reference_file, "is_main_process", lambda: False)
    elsewhere, aligned = reference_file.read_reference(config, path)
    assert len(sent) == 2 and not aligned
    for name in ("mo_up", "mo_down", "occ_up", "occ_down", "ci"):
        np.testing.assert_array_equal(getattr(elsewhere, name), getattr(on_main, name))
    assert (elsewhere.energy, elsewhere.method) == (on_main.energy, on_main.method)


def test_any_error_of_process_0_building_the_reference_reaches_every_process(
    reference, monkeypatch
):
    """Whatever fails while process 0 builds the stored reference (here PySCF) is sent to
    the others, which would otherwise wait in the broadcast, and raised as one line."""
    from nnqmc import reference_file

    def broken(*args, **kwargs):
        raise RuntimeError("PySCF failed\nin two lines")

    sent: list = []
    monkeypatch.setattr(reference_file, "stored_scf", broken)
    monkeypatch.setattr(reference_file, "broadcast_from_main", lambda t: sent.append(t) or t)
    config = load_config(reference / io.CONFIG_COPY)
    with pytest.raises(api.RunError) as raised:
        reference_file.read_reference(config, reference / io.REFERENCE)
    assert "(RuntimeError: PySCF failed in two lines)" in str(raised.value)
    assert len(sent) == 1 and sent[0][1]  # the flags, with the error's


def test_an_input_edited_since_the_reference_was_solved_is_refused(reference, tmp_path, capsys):
    """reference.h5 records what its SCF depended on: a resume with another field or
    active space, and an eval or dmc of a config.toml edited so, are refused in one line
    naming the setting (the directory left as it was), instead of going on with the old
    orbitals and HF energy."""
    run = _copy(reference, tmp_path)
    before = {name: (run / name).read_bytes() for name in (io.CONFIG_COPY, io.RESULT)}
    for setting, key in [
        ("hamiltonian.field=[0.0, 0.0, 0.01]", "hamiltonian.field"),
        ("ansatz.cas=[2, 2]", "ansatz.cas"),
        ("hamiltonian.harmonic=0.5", "hamiltonian.harmonic"),
    ]:
        assert main([*_run_args(run, "--resume"), setting]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"solved with another {key}" in err and "a new run" in err, err
        assert {name: (run / name).read_bytes() for name in before} == before
    edited = before[io.CONFIG_COPY].decode() + "\n[hamiltonian]\nfield = [0.0, 0.0, 0.01]\n"
    (run / io.CONFIG_COPY).write_text(edited)
    for argv in (["eval", str(run), "--steps", str(EVAL_STEPS + 2)], ["dmc", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "solved with another hamiltonian.field" in err
    assert (run / io.RESULT).read_bytes() == before[io.RESULT]


def test_a_resume_with_another_ansatz_is_refused(reference, tmp_path, capsys):
    """reference.h5 records the ansatz its parameters were trained with: a resume with
    another nuclear-cusp radius or electron-electron cusp range (same parameter shapes,
    another wavefunction) or without the cusp correction is refused in one line naming the
    setting, the directory left as it was, and so is an evaluation of a config.toml edited
    so; a warm start (``same_ansatz=False``) and a file without the record read it."""
    from nnqmc import reference_file

    run = _copy(reference, tmp_path)
    before = {name: (run / name).read_bytes() for name in (io.CONFIG_COPY, io.RESULT)}
    for setting, key in [
        ("ansatz.cusp_radius=1.0", "ansatz.cusp_radius (0.5 there, 1.0 here)"),
        ("ansatz.ee_cusp_range=0.5", "ansatz.ee_cusp_range"),
        ("ansatz.cusp_correction=false", "ansatz.cusp_correction"),
    ]:
        assert main([*_run_args(run, "--resume"), setting]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"trained with another {key}" in err and "a new run" in err, err
        assert {name: (run / name).read_bytes() for name in before} == before
    edited = before[io.CONFIG_COPY].decode().replace("[ansatz]", "[ansatz]\ncusp_radius = 1.0")
    assert edited != before[io.CONFIG_COPY].decode()
    (run / io.CONFIG_COPY).write_text(edited)
    assert main(["eval", str(run), "--steps", str(EVAL_STEPS + 2)]) == 2
    assert "trained with another ansatz.cusp_radius" in capsys.readouterr().err
    assert (run / io.RESULT).read_bytes() == before[io.RESULT]
    config = load_config(reference / io.CONFIG_COPY)
    assert reference_file.read_reference(config, run / io.REFERENCE) is not None
    radius = np.float32(1.0)  # as the API may be given it
    other = dataclasses.replace(
        config, ansatz=dataclasses.replace(config.ansatz, cusp_radius=radius)
    )
    with pytest.raises(api.RunError, match="trained with another ansatz.cusp_radius "):
        reference_file.read_reference(other, run / io.REFERENCE)
    assert reference_file.read_reference(other, run / io.REFERENCE, same_ansatz=False)
    attrs = io.reference_attrs(run / io.REFERENCE)
    del attrs[reference_file.ANSATZ_INPUTS]
    io.save_reference(run / io.REFERENCE, io.load_reference(run / io.REFERENCE), **attrs)
    assert reference_file.read_reference(other, run / io.REFERENCE) is not None


def test_a_reference_without_its_inputs_is_read_as_before(reference, tmp_path):
    """A reference.h5 written before the inputs were recorded (no ``scf_inputs``
    attribute) is read without the check; with the record, another input is refused."""
    from nnqmc import reference_file

    path = _copy(reference, tmp_path) / io.REFERENCE
    config = load_config(reference / io.CONFIG_COPY)
    assert io.reference_attrs(path)[reference_file.SCF_INPUTS]
    assert reference_file.read_reference(config, path) is not None
    other = dataclasses.replace(
        config, hamiltonian=dataclasses.replace(config.hamiltonian, harmonic=0.5)
    )
    with pytest.raises(api.RunError, match="solved with another hamiltonian.harmonic "):
        reference_file.read_reference(other, path)
    io.save_reference(path, io.load_reference(path))  # as written before the record
    scf, _ = reference_file.read_reference(other, path)
    np.testing.assert_array_equal(scf.mo_up, io.load_reference(reference / io.REFERENCE)["mo_up"])


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse
        return exit.code


def test_eval_and_flag_errors_are_one_line(tmp_path, reference, capsys):
    cases = [
        (["eval", str(tmp_path / "none")], "holds no run"),
        (["eval", str(reference), "--steps", "0"], "--steps must be >= 2"),
        (["eval", str(reference), "--steps", "1"], "--steps must be >= 2"),
        (["eval", str(reference), "--steps", "many"], "invalid int value"),
        (["run", H2, "--resume", "--force"], "not allowed with argument"),
        (["run"], "required: file"),
    ]
    for argv, text in cases:
        assert _exit_code(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err and err.startswith("nnqmc: error:")


# --------------------------------------------------------------------------- 7: disks
def _deny_writes_under(monkeypatch, directory: Path, code: int = errno.EACCES) -> None:
    """What a read-only directory does, for root too: creating files in it fails."""
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(directory.resolve())

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_read_only_output_directory(tmp_path, monkeypatch, capsys, how):
    parent = tmp_path / "ro"
    parent.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        parent.chmod(0o555)
    else:
        _deny_writes_under(monkeypatch, parent)
    try:
        for out in (parent, parent / "run"):
            assert main(_run_args(out)) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "cannot write" in err, err
            assert "Permission denied" in err
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint.h5." in name:
            synced.append(name)
            if len(synced) > 2:  # the checkpoints of steps 0 and 4 fit, step 8 does not
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(_run_args(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and "checkpoint.h5 still holds step 4" in err
    assert _assert_finite_checkpoint(out / io.CHECKPOINT) == EVERY
    assert _assert_finite_checkpoint(out / io.PREVIOUS_CHECKPOINT) == 0
    assert not list(out.glob(".*tmp")) and not (out / io.LOCK).exists()


def test_resume_with_force_starts_over_and_stores_its_reference(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    api.run(load_config(H2, TINY), run, resume=True, force=True)
    assert f"holds no {io.REFERENCE}" not in capsys.readouterr().err
    stored = io.load_reference(run / io.REFERENCE)
    np.testing.assert_array_equal(
        stored["mo_up"], io.load_reference(reference / io.REFERENCE)["mo_up"]
    )
