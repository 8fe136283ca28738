"""Scans end to end (issue 7): exact reference curves, one process per shard, a real Ctrl-C
and its resume, a normal-mode scan, and the warm-against-cold step-budget study."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_pes import TINY

from nnqmc.api import RunError
from nnqmc.cli import main
from nnqmc.pes import read_dataset, run_scan
from nnqmc.pes.scan import Shard, geometry_config, open_dataset
from nnqmc.pes.study import cheapest, format_study, trial, warm_start_study

H2 = TINY.replace('kind = "hf"', 'kind = "jastrow"')  # with parameters to warm-start
BOND = H2 + '[scan]\nkind = "bond"\natoms = [0, 1]\nvalues = [1.2, 2.0]\n'


def _config(tmp_path, text, *overrides):
    from nnqmc.config import load_config

    path = tmp_path / "scan.toml"
    path.write_text(text)
    return load_config(path, list(overrides)), path


def test_reference_energies_become_a_column_and_each_geometrys_reference(tmp_path):
    config, path = _config(tmp_path, BOND + "reference = [-1.16, -1.13]\n")
    data = open_dataset(config, path.read_text(), tmp_path / "s", Shard())
    assert list(data.columns["reference_energy"]) == [-1.16, -1.13]
    assert read_dataset(tmp_path / "s" / "scan.h5").columns["reference_energy"][1] == -1.13
    assert geometry_config(config, data.positions[1], 1, 7).reference_energy == -1.13
    assert (
        "reference_energy"
        not in open_dataset(_config(tmp_path, BOND)[0], BOND, tmp_path / "t", Shard()).columns
    )
    wrong, _ = _config(tmp_path, BOND + "reference = [-1.16]\n")
    with pytest.raises(RunError, match="1 energies for 2 geometries"):
        open_dataset(wrong, BOND, tmp_path / "u", Shard())


def test_a_second_process_on_the_same_shard_is_refused(tmp_path, capsys):
    _, path = _config(tmp_path, BOND)
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (out / "scan.lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        assert main(["scan", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nnqmc: error: ") and err.count("\n") == 1
        assert f"in use by process {other.pid}" in err and "another nnqmc scan" in err
        assert not (out / "scan.h5").exists()  # nothing written, nothing run
        assert (out / "scan.lock").read_text().split()[0] == str(other.pid)
    finally:
        other.kill()
        other.wait()


def test_ctrl_c_stops_a_scan_and_the_same_command_finishes_it(tmp_path):
    """A real SIGINT to ``nnqmc scan`` during the first geometry's training."""
    _, path = _config(tmp_path, BOND)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nnqmc.cli", "scan", str(path), "--out", str(out)]
    command += ["--set", "train.steps=1000", "train.checkpoint_every=50", "scan.steps=4"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        seen.append(line)
        if "train " in line and (out / "geom-0000" / "checkpoint.h5").exists():
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen[-5:])
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, rest
    assert "continue with: nnqmc scan" in rest
    data = read_dataset(out / "scan.h5")
    assert [data.status(k) for k in range(2)] == ["running", "pending"]
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed_at = re.search(r"train\s+(\d+)/1000", again.stderr)
    assert resumed_at is not None and int(resumed_at.group(1)) > 1  # not from the start
    data = read_dataset(out / "scan.h5")
    assert [data.status(k) for k in range(2)] == ["done", "done"]
    assert list(data.columns["steps"]) == [1000, 4] and data.columns["warm_from"][1] == 0
    assert not (out / "scan.lock").exists()


def test_a_scan_takes_forces_and_warm_starts_from_memory(tmp_path, monkeypatch):
    """Forces from the evaluation's records, the second geometry warm from the first one's
    result: eval.h5 is never read back nor a checkpoint loaded. Run again from the
    checkpoint (as by another process), the second geometry ends the same."""
    import h5py

    from nnqmc.pes import scan as scan_module

    config, path = _config(tmp_path, BOND + "forces = true\n")
    real_file, real_state, loaded = h5py.File, scan_module.api.trained_state, []

    def file(name, mode="r", *args, **kwargs):
        assert not (Path(name).name == "eval.h5" and mode == "r"), f"{name} read back"
        return real_file(name, mode, *args, **kwargs)

    def trained_state(run, run_dir):
        loaded.append(Path(run_dir).name)
        return real_state(run, run_dir)

    monkeypatch.setattr(h5py, "File", file)
    monkeypatch.setattr(scan_module.api, "trained_state", trained_state)
    data = run_scan(config, path.read_text(), tmp_path / "s")
    assert list(data.columns["warm_from"]) == [-1, 0] and loaded == []
    assert np.all(np.isfinite(data.columns["forces"]))
    data.set_row(1, status="pending")
    scan_module.write_dataset(tmp_path / "s" / "scan.h5", data)
    shutil.rmtree(tmp_path / "s" / "geom-0001")
    again = run_scan(config, path.read_text(), tmp_path / "s")
    assert loaded == ["geom-0000"] and again.columns["warm_from"][1] == 0
    for name in ("energy", "forces"):
        assert np.array_equal(again.columns[name][1], data.columns[name][1]), name


def test_normal_mode_scan_runs_end_to_end(tmp_path):
    text = H2 + '[scan]\nkind = "normal_modes"\namplitudes = [-0.1, 0.1]\n'
    config, path = _config(tmp_path, text)
    maps = Path(f"/proc/{os.getpid()}/maps")
    before = len(maps.read_text().splitlines()) if maps.exists() else 0
    data = run_scan(config, text, tmp_path / "nm")
    if maps.exists():  # each run's compiled programs are released (about 4000 maps each)
        assert len(maps.read_text().splitlines()) - before < 1500
    assert [data.status(k) for k in range(2)] == ["done", "done"]
    assert np.allclose(data.labels, [[0, -0.1], [0, 0.1]])
    bond = np.linalg.norm(data.positions[:, 1] - data.positions[:, 0], axis=-1)
    # H2's one mode is the stretch, normalised to 1 bohr: each atom moves a/sqrt(2)
    assert np.allclose(bond, 1.4 + np.array([-1, 1]) * 0.1 * np.sqrt(2), atol=1e-6)
    assert np.allclose(data.positions.mean(axis=1), [0, 0, 0.7], atol=1e-9)  # no translation
    assert np.all(np.isfinite(data.columns["energy"])) and data.columns["warm_from"][1] == 0
    assert main(["export", str(tmp_path / "nm" / "scan.h5"), "--format", "extxyz"]) == 0


# --------------------------------------------------------------------------- warm-start study
def test_study_arithmetic_and_table():
    ref = np.array([-1.0, -2.0])
    cold_a = trial("cold", 100, 200, ref + [2e-3, 0], [1e-4] * 2, ref, [1.0, 2.0], 1e-3)
    cold_b = trial("cold", 200, 400, ref + [5e-4, -3e-4], [1e-4] * 2, ref, [3.0, 4.0], 1e-3)
    warm = trial("warm", 50, 250, ref + [5e-4, 9e-4], [1e-4] * 2, ref, [3.0, 1.0], 1e-3)
    assert not cold_a.meets and cold_b.meets and warm.meets
    assert cold_b.max_error == pytest.approx(5e-4) and cold_b.mean_abs_error == pytest.approx(4e-4)
    assert cold_b.wall_time == 7.0
    trials = [cold_a, cold_b, warm]
    assert cheapest(trials, "cold") is cold_b and cheapest(trials, "warm") is warm
    assert cheapest([cold_a], "cold") is None
    from dataclasses import asdict

    table = format_study(
        {
            "name": "x",
            "geometries": 2,
            "tolerance": 1e-3,
            "reference_source": "scan.reference",
            "trials": [asdict(t) for t in trials],
            "cheapest_cold": 400,
            "cheapest_warm": 250,
            "step_ratio": 1.6,
        }
    )
    assert "+2.00(0.10)" in table and "1.60x fewer" in table and table.count("\n") == 5


def test_study_runs_cold_and_warm_scans_sharing_the_first_geometry(tmp_path):
    text = BOND + "reference = [-1.165, -1.137]\n"
    config, _ = _config(tmp_path, text)
    result = warm_start_study(config, text, tmp_path / "st", [3, 6], [2], tolerance=1.0)
    json_result = json.loads((tmp_path / "st" / "study.json").read_text())
    assert json_result == result
    assert result["reference_source"] == "scan.reference" and result["first_geometry_steps"] == 3
    modes = [(t["mode"], t["budget"], t["total_steps"]) for t in result["trials"]]
    assert modes == [("cold", 3, 6), ("cold", 6, 12), ("warm", 2, 5)]
    assert result["cheapest_cold"] == 6 and result["cheapest_warm"] == 5
    assert result["step_ratio"] == pytest.approx(6 / 5)
    cold = read_dataset(tmp_path / "st" / "cold-3" / "scan.h5")
    warm = read_dataset(tmp_path / "st" / "warm-2" / "scan.h5")
    assert warm.columns["energy"][0] == cold.columns["energy"][0]
    assert list(warm.columns["steps"]) == [3, 2] and list(warm.columns["warm_from"]) == [-1, 0]
    errors = result["trials"][2]["errors"]
    assert errors[1] == pytest.approx(warm.columns["energy"][1] + 1.137)
    assert "forces" not in warm.columns  # energies only
