"""Adaptive scans (issue 21): where the next geometry goes, when the scan stops, that the
dataset records the choices, resumes them and refuses shards; one real tiny QMC scan."""

import numpy as np
import pytest
from test_pes import TINY

from nnqmc.api import Interrupted, RunError
from nnqmc.cli import main
from nnqmc.config import ConfigError, load_config
from nnqmc.fit import load_model, predict
from nnqmc.pes import adaptive, read_dataset, run_scan
from nnqmc.pes import scan as scan_module
from nnqmc.pes.dataset import new_dataset
from nnqmc.pes.scan import Shard, open_dataset

ADAPTIVE = (
    TINY.replace('kind = "hf"', 'kind = "jastrow"')
    + '[scan]\nkind = "adaptive"\ngrid_atoms = [[0, 1]]\nranges = [[1.0, 4.0, 31]]\n'
)


def _config(tmp_path, text, *overrides):
    path = tmp_path / "adaptive.toml"
    path.write_text(text)
    return load_config(path, list(overrides)), path


def _dataset(labels):
    labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
    positions = np.zeros((len(labels), 2, 3))
    positions[:, 1, 2] = labels[:, 0]
    return new_dataset(np.array([1, 1]), positions, labels, {}, False, False, adaptive=True)


def _finish(data, k, energy=-1.0):
    data.set_row(k, status="done", energy=energy, energy_err=1e-4)


# --------------------------------------------------------------------------- choosing rows
def test_farthest_point_spreads_the_initial_rows_centre_first_then_the_ends():
    points = adaptive.scaled(np.linspace(1.0, 4.0, 13)[:, None])
    taken: list[int] = []
    for _ in range(3):
        free = np.array([k for k in range(13) if k not in taken])
        taken.append(adaptive.farthest_point(points, np.array(taken, np.int64), free))
    assert taken[0] == 6 and sorted(taken[1:]) == [0, 12]


def test_next_row_spreads_then_follows_the_largest_std_then_stops():
    data = _dataset(np.linspace(1.0, 4.0, 7))
    calls = []

    def std(d, rows):
        calls.append(list(rows))
        return np.where(rows == 4, 2e-3, 1e-3)  # row 4 is the least certain

    first = adaptive.next_row(data, 3, 5e-4, 10, std)
    assert first.row == 3 and np.isnan(first.std) and first.reason == "spread"
    for k in (3, 0, 6):
        _finish(data, k)
    choice = adaptive.next_row(data, 3, 5e-4, 10, std)
    assert choice.row == 4 and choice.std == 2e-3 and calls == [[1, 2, 4, 5]]
    assert adaptive.next_row(data, 3, 5e-3, 10, std).row is None  # every std below target
    stop = adaptive.next_row(data, 3, 5e-4, 3, std)
    assert stop.row is None and "budget" in stop.reason
    data.set_row(5, status="running", selection=3, selection_std=1.5e-3)
    resumed = adaptive.next_row(data, 3, 5e-4, 3, std)
    assert (resumed.row, resumed.std, resumed.reason) == (5, 1.5e-3, "resumed")


def test_failed_rows_count_against_the_budget_and_are_not_chosen_again():
    data = _dataset(np.linspace(1.0, 4.0, 5))
    data.set_row(2, status="failed", message="no")
    choice = adaptive.next_row(data, 2, 1e-9, 10, lambda d, r: np.ones(len(r)))
    assert choice.row in (0, 4)  # the ends, farthest from the failed centre
    assert adaptive.next_row(data, 2, 1e-9, 1, lambda d, r: np.ones(len(r))).row is None


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "extra, key",
    [
        ("initial = 1\n", "scan.initial"),
        ("initial = 40\n", "scan.initial"),
        ("values = [1.0]\n", "scan.values"),
    ],
)
def test_adaptive_config_errors_name_the_key(tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(tmp_path, ADAPTIVE + extra)


def test_adaptive_candidates_are_the_grid_and_shards_are_refused(tmp_path):
    config, path = _config(tmp_path, ADAPTIVE)
    data = open_dataset(config, path.read_text(), tmp_path / "s", Shard())
    bonds = np.linalg.norm(data.positions[:, 1] - data.positions[:, 0], axis=-1)
    assert np.allclose(bonds, np.linspace(1.0, 4.0, 31)) and data.n == 31
    assert list(data.columns["selection"]) == [-1] * 31
    with pytest.raises(RunError, match="run it whole"):
        run_scan(config, path.read_text(), tmp_path / "t", Shard(1, 2))


# --------------------------------------------------------------------------- the loop
def _morse(r):
    """A Morse curve near H2's (hartree, bohr)."""
    return 0.17 * (1 - np.exp(-1.0 * (r - 1.4))) ** 2 - 1.17


def test_adaptive_loop_with_a_model_curve_stops_at_its_target_and_resumes(tmp_path, monkeypatch):
    """The loop around the QMC runs (each replaced by the Morse curve with a 0.1 mHa error
    bar): records the order and the std at each choice, stops when the fit is certain,
    saves the fit, and a second call with the same dataset adds nothing."""
    ran = []

    def fake_geometry(config, data, k, scan_dir, shard, cold, progress, finished):
        ran.append(k)
        r = float(np.linalg.norm(data.positions[k, 1] - data.positions[k, 0]))
        return {"energy": _morse(r), "energy_err": 1e-4, "steps": 1, "wall_time": 0.0}

    monkeypatch.setattr(scan_module, "_run_geometry", fake_geometry)
    text = ADAPTIVE + "target = 2e-4\nbudget = 15\n"
    config, path = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "a")
    chosen = np.flatnonzero(data.columns["selection"] >= 0)
    order = data.columns["selection"][chosen]
    assert sorted(order) == list(range(len(ran))) and 4 <= len(ran) < 15
    assert [data.status(k) for k in ran] == ["done"] * len(ran)
    stds = data.columns["selection_std"][ran]
    assert np.all(np.isnan(stds[:3])) and np.all(stds[3:] >= 2e-4)
    model = load_model(tmp_path / "a" / scan_module.FORCEFIELD)
    grid = np.linspace(1.0, 4.0, 31)
    e, _, std = predict(model, data.positions)
    assert np.max(std) < 2e-4 + 1e-12  # it stopped because every candidate is certain
    assert np.max(np.abs(e - _morse(grid))) < 2e-3
    before = list(ran)
    run_scan(config, text, tmp_path / "a")
    assert ran == before  # resumed: nothing left to choose
    saved = read_dataset(tmp_path / "a" / "scan.h5")
    assert np.array_equal(saved.columns["selection"], data.columns["selection"])


def test_an_interrupted_adaptive_scan_resumes_the_same_choices(tmp_path, monkeypatch):
    """Killed during its fifth geometry, the scan takes that row up again first, with the
    same order and std, and ends with the choices of an uninterrupted scan."""
    calls = []

    def geometry(config, data, k, scan_dir, shard, cold, progress, finished):
        calls.append(k)
        if len(calls) == 5 and interrupt:
            raise Interrupted(2, "stopped")
        r = float(np.linalg.norm(data.positions[k, 1] - data.positions[k, 0]))
        return {"energy": _morse(r), "energy_err": 1e-4, "steps": 1, "wall_time": 0.0}

    monkeypatch.setattr(scan_module, "_run_geometry", geometry)
    text = ADAPTIVE + "target = 2e-4\nbudget = 8\n"
    config, _ = _config(tmp_path, text)
    interrupt = False
    whole = run_scan(config, text, tmp_path / "whole")
    calls.clear()
    interrupt = True
    with pytest.raises(Interrupted):
        run_scan(config, text, tmp_path / "cut")
    cut = read_dataset(tmp_path / "cut" / "scan.h5")
    k = calls[-1]
    assert cut.status(k) == "running" and cut.columns["selection"][k] == 4
    interrupt = False
    calls.clear()
    resumed = run_scan(config, text, tmp_path / "cut")
    assert calls[0] == k
    for name in ("selection", "status"):
        assert list(resumed.columns[name]) == list(whole.columns[name])
    assert np.allclose(
        resumed.columns["selection_std"], whole.columns["selection_std"], equal_nan=True
    )
    order = whole.columns["selection"]
    chosen = np.argsort(order)[order[np.argsort(order)] >= 0]
    assert list(order[chosen]) == list(range(len(chosen)))


def test_a_fit_that_fails_makes_the_scan_spread_out_instead():
    data = _dataset(np.linspace(1.0, 4.0, 5))
    for k in (2, 0, 4):
        _finish(data, k)
    choice = adaptive.next_row(data, 3, 1e-9, 10, lambda d, r: None)
    assert choice.row in (1, 3) and choice.reason == "spread (no fit)"


def test_a_real_adaptive_scan_runs_three_geometries_and_exports(tmp_path):
    """Tiny QMC runs, warm-started one from another; then the export sees only them."""
    text = ADAPTIVE.replace("ranges = [[1.0, 4.0, 31]]", "ranges = [[1.2, 2.4, 5]]")
    text += "initial = 2\nbudget = 3\ntarget = 1e-9\nsteps = 2\n"
    config, path = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "q")
    done = [k for k in range(data.n) if data.status(k) == "done"]
    assert len(done) == 3 and sorted(data.columns["selection"][done]) == [0, 1, 2]
    by_order = np.argsort(data.columns["selection"])[-3:]
    assert list(data.columns["steps"][by_order]) == [4, 4, 2]  # the spread trains train.steps
    assert list(data.columns["warm_from"][by_order])[0] == -1
    assert load_model(tmp_path / "q" / scan_module.FORCEFIELD).info["n_geometries"] == 3
    assert np.isfinite(data.columns["selection_std"][done]).sum() == 1
    assert main(["export", str(tmp_path / "q" / "scan.h5"), "--format", "extxyz"]) == 0
    assert (tmp_path / "q" / "scan.extxyz").read_text().count("Properties=") == 3


def test_bench_scan_refuses_an_adaptive_scan_in_one_line(tmp_path, capsys):
    _, path = _config(tmp_path, ADAPTIVE)
    assert main(["bench-scan", str(path), "--cold", "4", "--warm", "2"]) == 2
    err = capsys.readouterr().err
    assert "adaptive" in err and err.startswith("nnqmc: error: ") and err.count("\n") == 1
