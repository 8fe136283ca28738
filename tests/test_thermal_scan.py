"""Thermal scans (fit -> sample -> label the candidate of largest p·σ² -> refit): the choice
on constructed candidates, the loop with a model curve in place of QMC (rows in selection
order, marked with their sampler), a resumed scan's identical choices, and bad input."""

import numpy as np
import pytest
from test_pes import TINY

from nnqmc.api import Interrupted, RunError
from nnqmc.cli import main
from nnqmc.config import ConfigError, load_config
from nnqmc.fit import load_model
from nnqmc.pes import read_dataset, run_scan, thermal_scan
from nnqmc.pes import scan as scan_module
from nnqmc.pes.scan import Shard
from nnqmc.thermal.sample import ThermalSample

THERMAL = TINY + '[scan]\nkind = "thermal"\ntemperature = 1000.0\n'
# A cheap MD: 30 candidates, 5 steps of 0.5 fs apart after 50 steps.
SMALL_MD = "candidates = 30\nequilibration = 50\nstride = 5\n"


def _config(tmp_path, text, *overrides):
    path = tmp_path / "thermal.toml"
    path.write_text(text)
    return load_config(path, list(overrides)), path


H2 = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]])  # the reference: candidates up to 4.2 bohr


def _candidates(weights, std):
    n = len(weights)
    positions = np.zeros((n, 2, 3))
    positions[:, 1, 2] = 1.0 + np.arange(n)
    w, s, z = np.asarray(weights, float), np.asarray(std, float), np.zeros(n)
    h2 = np.array([1, 1])
    return ThermalSample("flow", 500.0, h2, positions, w, z, s, z[:, None], ["r"], 1.0, 0, 0.0)


# --------------------------------------------------------------------------- the choice
def test_the_choice_is_the_largest_weight_times_variance():
    """Not the largest weight (0) nor the largest σ (3): w·σ² = 0.5, 1.2, 1.35, 0.8 (×1e-6)."""
    weights, std = [0.5, 0.3, 0.15, 0.05], [1e-3, 2e-3, 3e-3, 4e-3]
    assert thermal_scan.best_candidate(np.array(weights), np.array(std)) == 2
    choice = thermal_scan.pick(_candidates(weights, std), 1e-4, H2)
    assert choice.index == 2 and choice.std == 3e-3 and choice.weight == pytest.approx(0.6)
    assert choice.positions[1, 2] == 3.0
    md = thermal_scan.pick(_candidates([0.25] * 4, std), 1e-4, H2)  # equal weights: max σ
    assert md.index == 3 and md.weight == pytest.approx(1.0)
    # √(w n)·σ = 1.41, 2.19, 2.32, 1.79 mHa: the largest σ (4 mHa) has too little weight
    assert thermal_scan.pick(_candidates(weights, std), 2.3e-3, H2).index == 2
    stop = thermal_scan.pick(_candidates(weights, std), 2.4e-3, H2)
    assert stop.index is None and "2.324 mHa < target" in stop.reason
    assert thermal_scan.pick(_candidates([0.25] * 4, std), 4.1e-3, H2).index is None
    for r in (0.05, 4.3):  # no molecule; beyond 3 × 1.4 bohr: left out
        odd = _candidates(weights, std)
        odd.positions[2, 1, 2] = r
        assert thermal_scan.pick(odd, 1e-4, H2).index == 1
    far = _candidates(weights, std)
    far.positions[:, 1, 2] = 5.0
    assert "no candidate within 3 times" in thermal_scan.pick(far, 1e-4, H2).reason
    # a σ that is not finite, or a weight of zero, is never chosen
    assert thermal_scan.pick(_candidates(weights, [1e-3, 2e-3, np.nan, 4e-3]), 1e-4, H2).index == 1
    assert thermal_scan.pick(_candidates([0.5, 0.5, 0.0, 0.0], std), 1e-4, H2).index == 1
    odd = _candidates([1.0, 0.0, 0.0, 0.0], std)
    odd.positions[0, 1, 2] = 0.05  # the only weighted one out of the box: stop, not index 0
    assert thermal_scan.pick(odd, 1e-4, H2).index is None


def _kernel_covariance(std, length=0.3):
    """A Gaussian-kernel covariance over the bond length, σ_i σ_c exp(-(r_i - r_c)²/2ℓ²)."""

    def covariance(positions, c):
        r, rc = positions[:, 1, 2], c[1, 2]
        sc = std[np.argmin(np.abs(r - rc))]
        return std * sc * np.exp(-((r - rc) ** 2) / (2 * length**2))

    return covariance


def test_a_batch_spreads_out_by_the_variance_left_after_its_choices():
    """Equal weights (MD), σ = 1, 3, 2.9, 2 mHa at r = 1, 2, 2.05, 3 bohr: one at a time the
    two largest σ are neighbours; the batch takes r = 2 then r = 3 (2.05's variance left
    given r = 2 is 3 % of its own), then r = 1 with σ² conditioned on both exactly as the
    Gaussian formula Σ₀₀ − Σ₀ₛ Σₛₛ⁻¹ Σₛ₀ gives; a batch of 1 is :func:`pick`."""
    std = np.array([1e-3, 3e-3, 2.9e-3, 2e-3])
    cands = _candidates([0.25] * 4, std)
    cands.positions[:, 1, 2] = [1.0, 2.0, 2.05, 3.0]
    covariance = _kernel_covariance(std)
    assert [p.index for p in thermal_scan.pick_batch(cands, 1e-6, H2, 1, 2)] == [1, 2]
    batch = thermal_scan.pick_batch(cands, 1e-6, H2, 4, 3, covariance)
    assert [p.index for p in batch] == [1, 3, 0] and {p.number for p in batch} == {4}
    full = np.stack([covariance(cands.positions, c) for c in cands.positions], axis=1)
    chosen, rest = [1, 3], 0
    s = full[np.ix_(chosen, chosen)]
    expected = full[rest, rest] - full[rest, chosen] @ np.linalg.solve(s, full[chosen, rest])
    assert batch[2].std == pytest.approx(np.sqrt(expected), rel=1e-9)
    assert batch[1].std == pytest.approx(2e-3 * np.sqrt(1 - np.exp(-1 / 0.18) ** 2), rel=1e-9)
    one, [alone] = thermal_scan.pick(cands, 1e-6, H2), thermal_scan.pick_batch(cands, 1e-6, H2)
    assert (one.index, one.std, one.weight) == (alone.index, alone.std, alone.weight)
    assert (one.index, one.std, one.weight) == (1, 3e-3, 1.0)
    # a target between: the batch stops once the σ left falls below it, and says so
    short = thermal_scan.pick_batch(cands, 1.5e-3, H2, 1, 3, covariance)
    assert [p.index for p in short] == [1, 3, None] and "< target" in short[-1].reason
    every = thermal_scan.pick_batch(cands, 1e-9, H2, 1, 9, covariance)
    assert [p.index for p in every][:4] == [1, 3, 0, 2] and every[-1].index is None


def test_superposed_undoes_a_rigid_motion_and_seeds_differ_by_round():
    reference = np.random.default_rng(0).normal(size=(4, 3))
    a = np.radians(70.0)
    turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    moved = reference @ turn.T + np.array([3.0, -1.0, 2.0])
    np.testing.assert_allclose(thermal_scan.superposed(reference, moved), reference, atol=1e-12)
    seeds = [thermal_scan.round_seed(7, r) for r in range(1, 5)]
    assert len(set(seeds)) == 4 and seeds[0] == thermal_scan.round_seed(7, 1) < 2**31


def test_superposed_keeps_a_mirror_image_a_mirror_image():
    """Only proper rotations: the mirror image of a chiral geometry keeps every distance
    and stays apart from the reference, its distance the least over proper rotations."""
    from scipy.spatial.transform import Rotation

    reference = np.random.default_rng(1).normal(size=(4, 3))
    mirror = reference * np.array([1.0, 1.0, -1.0]) + np.array([0.5, 2.0, -1.0])
    out = thermal_scan.superposed(reference, mirror)
    distances = [np.linalg.norm(x[:, None] - x[None], axis=-1) for x in (out, reference)]
    np.testing.assert_allclose(*distances, atol=1e-12)
    best = np.sum((out - reference) ** 2)
    assert best > 1e-2
    centred = mirror - mirror.mean(0)
    tries = Rotation.random(2000, random_state=2).as_matrix()
    others = [np.sum((centred @ r.T + reference.mean(0) - reference) ** 2) for r in tries]
    assert best <= min(others) + 1e-9


def test_initial_geometries_are_a_harmonic_stencil_then_draws_whatever_the_masses():
    """A bond spring k: first r0 ± 2 widths √(kT/k), then draws whose r has variance kT/k, at
    any masses (H2 and HD-like)."""
    from nnqmc.pes.geometry import harmonic_geometries
    from nnqmc.thermal.sample import BOLTZMANN

    k, t = 0.4, 1500.0
    coords = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]])
    hessian = np.zeros((6, 6))
    hessian[np.ix_([2, 5], [2, 5])] = k * np.array([[1.0, -1.0], [-1.0, 1.0]])
    width = np.sqrt(BOLTZMANN * t / k)
    for masses in ([1.0, 1.0], [1.0, 16.0]):
        x = harmonic_geometries(coords, np.array(masses), hessian, t, 4002, seed=2)
        r = np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
        np.testing.assert_allclose(sorted(r[:2]), [1.4 - 2 * width, 1.4 + 2 * width])
        assert r[2:].var() == pytest.approx(BOLTZMANN * t / k, rel=0.08)
        assert abs(r[2:].mean() - 1.4) < 4 * r.std() / np.sqrt(len(r))
    assert len(harmonic_geometries(coords, np.ones(2), hessian, t, 1, seed=0)) == 1


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "extra, key, message",
    [
        ("", "scan.temperature", "missing required key"),
        ("temperature = 0\n", "scan.temperature", "must be > 0"),
        ("temperature = -300.0\n", "scan.temperature", "must be > 0"),
        ('method = "hmc"\n', "scan.method", "must be one of md, flow"),
        ("initial = 1\n", "scan.initial", "must lie in 2..20"),
        ("initial = 5\nbudget = 4\n", "scan.initial", "must lie in 2..4"),
        ("flow_steps = 10\n", "scan.flow_steps", "not used with method = 'md'"),
        ('method = "flow"\nstride = 10\n', "scan.stride", "with method = 'flow'"),
        ("reference = [-1.1, -1.2]\n", "scan.reference", "chooses its geometries"),
        ('xyz = "f.xyz"\ninitial = 3\n', "scan.initial", "not used with xyz"),
        ("candidates = 0\n", "scan.candidates", "must be > 0"),
        ("ranges = [[1.0, 2.0, 3]]\n", "scan.ranges", "not used with kind = 'thermal'"),
        ('train = "shared"\n', "scan.train", 'not kind = "thermal"'),
    ],
)
def test_bad_thermal_input_is_one_line_naming_the_key(tmp_path, extra, key, message):
    text = THERMAL if key != "scan.temperature" else THERMAL.replace("temperature = 1000.0\n", "")
    text += extra
    (tmp_path / "f.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, text)
    assert f": {key}: " in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_shards_from_and_a_short_xyz_are_refused_in_one_line(tmp_path, capsys):
    config, path = _config(tmp_path, THERMAL)
    with pytest.raises(RunError, match="run it whole"):
        run_scan(config, THERMAL, tmp_path / "s", Shard(1, 2))
    with pytest.raises(RunError, match="not known before it runs"):
        run_scan(config, THERMAL, tmp_path / "s", shared_from=tmp_path)
    (tmp_path / "one.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    text = THERMAL + 'xyz = "one.xyz"\n'
    path.write_text(text)
    assert main(["scan", str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "1 frames; a thermal scan starts from 2..20" in err and err.count("\n") == 1
    assert main(["bench-scan", str(path), "--cold", "4", "--warm", "2"]) == 2
    assert "a thermal scan chooses its own" in capsys.readouterr().err


# --------------------------------------------------------------------------- the loop
def _morse(r):
    """A Morse curve near H2's (hartree, bohr)."""
    return 0.17 * (1 - np.exp(-1.0 * (r - 1.4))) ** 2 - 1.17


def _oracle(calls, stop_at=None):
    """``_run_geometry`` replaced by the Morse curve (0.1 mHa error bars); raises Interrupted
    on call number ``stop_at``."""

    def geometry(config, data, k, scan_dir, shard, cold, progress, finished):
        calls.append(k)
        if stop_at is not None and len(calls) == stop_at:
            raise Interrupted(2, "stopped")
        r = float(np.linalg.norm(data.positions[k, 1] - data.positions[k, 0]))
        return {"energy": _morse(r), "energy_err": 1e-4, "steps": 1, "wall_time": 0.0}

    return geometry


def test_a_thermal_scan_runs_the_initial_rows_then_rounds_in_order(tmp_path, monkeypatch):
    """Three initial geometries (the input one first), then three MD rounds: every row done,
    chosen in row order, marked with its round, sampler and temperature; the saved fit has
    them all; running it again adds nothing."""
    calls: list[int] = []
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls))
    text = THERMAL + SMALL_MD + "budget = 6\ntarget = 1e-9\n"
    config, _ = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "t")
    assert calls == list(range(6)) and data.n == 6
    assert [data.status(k) for k in range(6)] == ["done"] * 6
    assert list(data.columns["selection"]) == list(range(6))
    assert list(data.columns["round"]) == [0, 0, 0, 1, 2, 3]
    assert list(data.columns["sampler"]) == ["initial"] * 3 + ["md"] * 3
    assert np.all(np.isnan(data.columns["temperature"][:3]))
    assert np.all(data.columns["temperature"][3:] == 1000.0)
    assert np.all(np.isnan(data.columns["selection_std"][:3]))
    assert np.all(data.columns["selection_std"][3:] > 1e-9)
    np.testing.assert_allclose(data.columns["selection_weight"][3:], 1.0)
    np.testing.assert_allclose(data.positions[0], config.system.molecule.coords)
    centres = data.positions.mean(axis=1)  # superposed on the input geometry
    np.testing.assert_allclose(centres[3:], np.tile(centres[0], (3, 1)), atol=1e-12)
    assert load_model(tmp_path / "t" / scan_module.FORCEFIELD).info["n_geometries"] == 6
    saved = read_dataset(tmp_path / "t" / "scan.h5")
    assert list(saved.columns["sampler"]) == list(data.columns["sampler"])
    run_scan(config, text, tmp_path / "t")
    assert calls == list(range(6))  # budget spent: nothing more
    other, _ = _config(tmp_path, text, "scan.temperature=500")  # other initial geometries
    with pytest.raises(RunError, match="holds another scan"):
        run_scan(other, text, tmp_path / "t")
    # the same initial geometries, candidates drawn otherwise: the rounds would mix
    other, _ = _config(tmp_path, text, "scan.candidates=37")
    with pytest.raises(
        RunError, match=r"rounds chose with other settings: candidates = 37 \(was 30\); use"
    ):
        run_scan(other, text, tmp_path / "t")


def test_a_thermal_scan_in_batches_keeps_to_its_budget(tmp_path, monkeypatch):
    """batch = 2, budget 6: three initial rows, then round 1 chooses two (distinct
    geometries), round 2 the one the budget leaves; a changed batch is refused on resume."""
    from nnqmc.fit import model as fit_model

    calls: list[int] = []
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls))
    models = []
    real = fit_model.posterior_covariance

    def spy(model, positions, x):
        models.append(model)
        return real(model, positions, x)

    monkeypatch.setattr(fit_model, "posterior_covariance", spy)
    text = THERMAL + SMALL_MD + "budget = 6\ntarget = 1e-9\nbatch = 2\n"
    config, _ = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "b")
    assert calls == list(range(6)) and list(data.columns["round"]) == [0, 0, 0, 1, 1, 2]
    assert list(data.columns["selection"]) == list(range(6))
    assert len(models) == 1  # round 1's second choice, conditioned on its first
    _, _, own = fit_model.predict(models[0], data.positions[3:5])  # the fit is rigid-invariant
    assert data.columns["selection_std"][3] == pytest.approx(own[0], rel=1e-6)
    assert data.columns["selection_std"][4] < 0.999 * own[1]  # the variance left, not its own
    other, _ = _config(tmp_path, text, "scan.batch=3")
    with pytest.raises(RunError, match=r"batch = 3 \(was 2\)"):
        run_scan(other, text, tmp_path / "b")


def test_an_interrupted_thermal_scan_resumes_with_the_same_choices(tmp_path, monkeypatch):
    """Killed while labelling its fifth geometry, then killed again while sampling round 3:
    each time the scan takes up where it stopped, and ends with the geometries, order and
    σ of an uninterrupted scan."""
    text = THERMAL + SMALL_MD + "budget = 6\ntarget = 1e-9\n"
    config, _ = _config(tmp_path, text)
    calls: list[int] = []
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls))
    whole = run_scan(config, text, tmp_path / "whole")
    calls.clear()
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls, stop_at=5))
    with pytest.raises(Interrupted):
        run_scan(config, text, tmp_path / "cut")
    cut = read_dataset(tmp_path / "cut" / "scan.h5")
    assert cut.n == 5 and cut.status(4) == "running" and cut.columns["selection"][4] == 4
    draw = thermal_scan.draw

    def killed_in_round_3(model, scan, number):
        if number == 3:
            raise Interrupted(2, "stopped")
        return draw(model, scan, number)

    calls.clear()
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls))
    monkeypatch.setattr(thermal_scan, "draw", killed_in_round_3)
    with pytest.raises(Interrupted):
        run_scan(config, text, tmp_path / "cut")
    assert calls == [4]  # the interrupted row again, not relabelled others
    monkeypatch.setattr(thermal_scan, "draw", draw)
    resumed = run_scan(config, text, tmp_path / "cut")
    assert calls == [4, 5]
    np.testing.assert_array_equal(resumed.positions, whole.positions)
    for name in ("selection", "round", "sampler", "status"):
        assert list(resumed.columns[name]) == list(whole.columns[name]), name
    np.testing.assert_array_equal(resumed.columns["selection_std"], whole.columns["selection_std"])


def test_a_flow_round_weights_its_choice(tmp_path, monkeypatch):
    """One round by the flow: the row is marked "flow", its weight × n is the flow's."""
    calls: list[int] = []
    monkeypatch.setattr(scan_module, "_run_geometry", _oracle(calls))
    text = THERMAL + 'method = "flow"\nflow_steps = 20\ncandidates = 50\nbudget = 4\n'
    text += "target = 1e-9\n"
    config, _ = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "f")
    assert calls == [0, 1, 2, 3] and list(data.columns["sampler"]) == ["initial"] * 3 + ["flow"]
    weight = data.columns["selection_weight"][3]
    assert np.isfinite(weight) and weight > 0 and weight != 1.0 and data.columns["round"][3] == 1


def test_a_real_thermal_scan_runs_three_tiny_geometries_and_exports(tmp_path):
    """Tiny QMC runs (the second warm-started from the first), one MD round; then the fit and
    the export see all three."""
    text = THERMAL.replace('kind = "hf"', 'kind = "jastrow"') + SMALL_MD
    text += "initial = 2\nbudget = 3\ntarget = 1e-9\nsteps = 2\n"
    config, _ = _config(tmp_path, text)
    data = run_scan(config, text, tmp_path / "q")
    assert [data.status(k) for k in range(3)] == ["done"] * 3
    assert list(data.columns["sampler"]) == ["initial", "initial", "md"]
    assert list(data.columns["steps"]) == [4, 2, 2] and data.columns["warm_from"][1] == 0
    assert load_model(tmp_path / "q" / scan_module.FORCEFIELD).info["n_geometries"] == 3
    assert main(["export", str(tmp_path / "q" / "scan.h5"), "--format", "extxyz"]) == 0
    assert (tmp_path / "q" / "scan.extxyz").read_text().count("Properties=") == 3
