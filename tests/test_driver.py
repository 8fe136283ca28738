"""The one loop (nnqmc.driver) around a cheap fake step: bytes written grow linearly with the
steps (a checkpoint holds the state, not the log), a killed run resumes to the same rows, a
stop request checkpoints, non-finite steps are logged or retried, and a checkpoint of an
older format is refused in one line. Real phases: test_reliability, test_dmc_phase."""

from __future__ import annotations

import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from nnqmc import io
from nnqmc.driver import Driver, NanGuard
from nnqmc.errors import Interrupted, RunError


def fake_step(state: dict, k: int) -> tuple[dict, dict]:
    x = state["x"] * 0.99 + np.sin(k)
    return {"x": x}, {"energy": float(x.sum()), "acceptance": 0.5}


class Killed(Exception):
    """What kill -9 would do after a step: the loop stops where it is."""


def run(run_dir: Path | None, steps: int, every: int = 100, **options) -> dict:
    """The fake phase from its checkpoint in ``run_dir`` (if any) to ``steps``; its rows."""
    step, guard = options.pop("step", fake_step), options.pop("guard", None)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    drive = Driver(run_dir, "eval", guard=guard)
    saved = drive.resume({"x": np.zeros(4)}, restart="from the first step")
    start = {"x": saved["x"] if saved else np.ones(4)}
    drive.run(start, step, dict, total=steps, every=every, label="step", **options)
    return drive.rows()


def bytes_written() -> int:
    """Bytes this process has written (Linux)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")
def test_bytes_written_grow_linearly_with_the_steps(tmp_path):
    written = []
    for steps in (200, 2000):
        before = bytes_written()
        run(tmp_path / str(steps), steps, every=10)
        written.append(bytes_written() - before)
    assert written[1] <= 12 * written[0], written


def test_a_killed_run_resumes_to_the_same_rows(tmp_path):
    reference = run(None, 250)

    def kill(done: int, state: dict) -> None:
        if done == 130:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path, 250, after=kill)
    assert len(io.read_table(tmp_path / io.EVAL_LOG)["energy"]) == 130  # rows past step 100
    with h5py.File(tmp_path / io.EVAL_CHECKPOINT) as f:
        assert f.attrs["step"] == f.attrs["rows"] == 100 and "energy" not in f
    rows = run(tmp_path, 250)
    log = io.read_table(tmp_path / io.EVAL_LOG)
    for name in reference:
        np.testing.assert_array_equal(rows[name], reference[name])
        np.testing.assert_array_equal(log[name], reference[name])  # cut back, then appended


def test_a_stop_request_checkpoints_and_raises_interrupted(tmp_path):
    asked = iter([0, 0, 0, signal.SIGTERM])
    with pytest.raises(Interrupted, match="stopped by SIGTERM after step 3 of 10; checkpoint"):
        run(tmp_path, 10, stop=lambda: next(asked))
    with h5py.File(tmp_path / io.EVAL_CHECKPOINT) as f:
        assert f.attrs["step"] == 3
    assert len(run(tmp_path, 10)["energy"]) == 10


def _guard(retry: bool, limit: int = 3) -> NanGuard:
    finite = lambda row: np.isfinite(row["energy"])  # noqa: E731
    return NanGuard(limit, "x.max_bad_steps", "fake", "NaN", "x", finite, retry=retry)


def test_non_finite_steps_are_logged_or_retried(tmp_path):
    tried = []

    def step(state: dict, k: int) -> tuple[dict, dict]:
        tried.append((k, guard.in_row, guard.scale))
        new, row = fake_step(state, k)
        return new, {**row, "energy": np.nan} if k == 4 and guard.in_row < 2 else row

    guard = _guard(retry=True)
    rows = run(tmp_path / "retried", 6, step=step, guard=guard)
    assert [t[:2] for t in tried[4:7]] == [(4, 0), (4, 1), (4, 2)]  # the attempt in the key
    assert len(rows["energy"]) == 6 and np.all(np.isfinite(rows["energy"]))
    tried.clear()
    guard = _guard(retry=False)
    rows = run(tmp_path / "logged", 6, step=step, guard=guard)
    assert np.isnan(rows["energy"][4]) and len(rows["energy"]) == 6
    assert [t[2] for t in tried] == [1, 1, 1, 1, 1, 0.5]  # each rejected step halves the scale


def test_too_many_non_finite_steps_stop_with_a_checkpoint(tmp_path):
    def step(state: dict, k: int) -> tuple[dict, dict]:
        new, row = fake_step(state, k)
        return new, {**row, "energy": np.nan} if k >= 3 else row

    with pytest.raises(RunError, match="fake stopped at step 3: 3 non-finite steps in a row"):
        run(tmp_path, 10, step=step, guard=_guard(retry=True))
    with h5py.File(tmp_path / io.EVAL_CHECKPOINT) as f:
        assert f.attrs["step"] == 3 and f.attrs["bad_in_row"] == 3


def test_a_checkpoint_of_an_older_format_is_one_line(tmp_path, capsys):
    def fill(f: h5py.File) -> None:  # format 1: no format attribute, the log inside
        f.attrs["step"] = 4
        f.create_dataset("walkers", data=np.zeros((2, 1, 3)))
        f.create_group("records").create_dataset("energy", data=np.zeros(4))

    io.write_checked(tmp_path / io.EVAL_CHECKPOINT, fill)
    with pytest.raises(RunError) as err:  # a phase that cannot start over (training)
        Driver(tmp_path, "eval").resume({"x": np.zeros(4)})
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "older nnqmc (format 1)" in message
    assert len(run(tmp_path, 10)["energy"]) == 10  # one that can starts over, and says so
    assert "older nnqmc" in capsys.readouterr().err


def test_a_log_short_of_its_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    run(tmp_path, 10, every=4)  # checkpoints after 8 (previous) and 10 steps
    io.AppendLog(tmp_path / io.EVAL_LOG, 9).close()  # the last row never reached the disk
    rows = run(tmp_path, 12, every=4)
    warned = capsys.readouterr().err
    assert "fewer rows than its checkpoint" in warned
    assert f"using {io.PREVIOUS_EVAL_CHECKPOINT} instead" in warned
    for name, column in run(None, 12).items():
        np.testing.assert_array_equal(rows[name], column)
