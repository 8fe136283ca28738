"""The command line: a short run end to end, resume, and bad input handling."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from nnqmc.cli import main
from nnqmc.estimate import training_slope

H2 = Path(__file__).parent.parent / "systems" / "h2.toml"
SMALL = ["train.walkers=64", "eval.steps=20", "sampler.burn_in=20", "system.basis=cc-pvdz"]


def test_run_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "h2"
    assert main(["run", str(H2), "--out", str(out), "--set", "train.steps=30", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "E = " in printed and "correlation energy recovered" in printed
    result = json.loads((out / "result.json").read_text())
    for key in (
        "energy",
        "energy_err",
        "variance",
        "hf_energy",
        "reference_energy",
        "steps",
        "walkers",
        "wall_seconds",
    ):
        assert key in result
    assert result["steps"] == 30 and result["walkers"] == 64
    # 6 steps in the last 20 %: too few for the training slope
    for key in ("training_slope", "training_slope_err", "training_slope_steps", "still_improving"):
        assert key in result and result[key] is None
    assert result["reference_energy"] == pytest.approx(-1.174475)
    assert result["energy_err"] > 0
    with h5py.File(out / "train.h5") as f:
        assert len(f["energy"]) == 30
        for column in ("variance", "acceptance", "width", "grad_norm", "wall_time"):
            assert len(f[column]) == 30
    with h5py.File(out / "checkpoint.h5") as f:
        assert f.attrs["step"] == 30 and f["walkers"].shape == (64, 2, 3)
    assert (out / "config.toml").exists() and (out / "input.toml").exists()

    # a finished run is not started again over its results
    assert main(["run", str(H2), "--out", str(out), "--set", "train.steps=30", *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err

    # resume continues the same training from its checkpoint
    args = ["run", str(H2), "--out", str(out), "--resume", "--set", "train.steps=50", *SMALL]
    assert main(args) == 0
    with h5py.File(out / "train.h5") as f:
        assert list(f["step"][:]) == list(range(50))
        energy = f["energy"][:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 50
    # the slope of the training energy over the last 20 % (10 steps), in Ha per 1000 steps
    fit = training_slope(energy)
    assert result["training_slope_steps"] == 10
    assert result["training_slope"] == pytest.approx(1000 * fit.slope)
    assert result["training_slope_err"] == pytest.approx(1000 * fit.error) and fit.error > 0
    assert result["still_improving"] is fit.falling()
    assert "training slope over the last 10 steps" in capsys.readouterr().out


H2_TEXT = 'name = "x"\n[system]\natoms = "H 0 0 0\\nH 0 0 1.4"\nunit = "bohr"\n'
BAD_INPUTS = {
    "malformed": ("name = 'x'\n[system\n", "line"),
    "unknown key": ('name = "x"\ncolour = 1\n', "colour"),
    "unknown element": (
        'name = "x"\n[system]\natoms = "Xx 0 0 0"\nunit = "bohr"\n',
        "system.atoms",
    ),
    "impossible spin": (
        'name = "x"\n[system]\natoms = "H 0 0 0"\nunit = "bohr"\nspin = 0\n',
        "system.spin",
    ),
    "overlap": (
        'name = "x"\n[system]\natoms = "H 0 0 0\\nH 0 0 0.01"\nunit = "bohr"\n',
        "system.atoms",
    ),
    "wrong type": (
        'name = "x"\n[system]\natoms = "H 0 0 0\\nH 0 0 1.4"\nunit = "bohr"\n'
        '[train]\nsteps = "many"\n',
        "train.steps",
    ),
    "bad basis": (
        'name = "x"\n[system]\natoms = "H 0 0 0\\nH 0 0 1.4"\nunit = "bohr"\n'
        'basis = "no-such-basis"\n',
        "system.basis",
    ),
    "non-finite": (
        'name = "x"\n[system]\natoms = "H 0 0 nan\\nH 0 0 1.4"\nunit = "bohr"\n',
        "system.atoms",
    ),
    "no unit": ('name = "x"\n[system]\natoms = "H 0 0 0\\nH 0 0 1.4"\n', "system.unit"),
    "negative walkers": (H2_TEXT + "[train]\nwalkers = -4\n", "train.walkers"),
    "zero steps": (H2_TEXT + "[train]\nsteps = 0\n", "train.steps"),
    "unknown ansatz": (H2_TEXT + '[ansatz]\nkind = "magic"\n', "ansatz.kind"),
    "unknown optimizer": (H2_TEXT + '[train]\noptimizer = "sgd"\n', "train.optimizer"),
    "bad precision": ('precision = "float16"\n' + H2_TEXT, "precision"),
    "acceptance above 1": (H2_TEXT + "[sampler]\ntarget_acceptance = 1.5\n", "sampler"),
    "unsafe name": (H2_TEXT.replace('"x"', '"../x"'), "name"),
    "no name": (H2_TEXT.replace('name = "x"\n', ""), "name"),
    "no system": ('name = "x"\n', "system"),
    "missing xyz": ('name = "x"\n[system]\nxyz = "missing.xyz"\n', "system.xyz"),
    "bad unit": (H2_TEXT.replace('"bohr"', '"furlong"'), "system.unit"),
    "cas too small": (H2_TEXT + "[ansatz]\ncas = [1, 4]\n", "ansatz.cas"),
    "unknown section": (H2_TEXT + "[trian]\nsteps = 3\n", "trian"),
    "nan learning rate": (H2_TEXT + "[train]\nlearning_rate = nan\n", "train.learning_rate"),
    "zero checkpoint_every": (H2_TEXT + "[train]\ncheckpoint_every = 0\n", "checkpoint_every"),
    "zero max_bad_steps": (H2_TEXT + "[train]\nmax_bad_steps = 0\n", "train.max_bad_steps"),
}
assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    text, key = BAD_INPUTS[case]
    path = tmp_path / "input.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "input.toml" in err and key in err
    assert not out.exists()


def test_point_charge_on_a_nucleus_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "charged.toml"
    path.write_text(H2_TEXT + "[hamiltonian]\npoint_charges = [[1.0, 0.0, 0.0, 1.4]]\n")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnqmc: error: ")
    assert "charged.toml: hamiltonian.point_charges: point charge 1" in err
    assert "0.1 bohr from every nucleus" in err
    assert not out.exists()


def test_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert main(["run", str(H2), "--out", str(tmp_path / "o"), "--set", "train.walkerz=3"]) == 2
    assert "train.walkerz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_console_error_has_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[system]\natoms = "Q 0 0 0"\nunit = "bohr"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "nnqmc.cli", "run", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_bench_times_a_step_and_its_parts(tmp_path, capsys):
    """``nnqmc bench``: the JSON has the step, its parts and the true parameter count."""
    import jax

    from nnqmc import api
    from nnqmc.config import load_config

    out = tmp_path / "bench.json"
    small = ["ansatz.embedding_dim=8", "ansatz.layers=1", "ansatz.n_rbf=4"]
    args = ["bench", str(H2), "--walkers", "8", "--steps", "2", "--json", str(out), "--laplacians"]
    assert main([*args, "--set", *small]) == 0
    result = json.loads(out.read_text())
    params = api.prepare(load_config(H2, small)).ansatz.init(jax.random.PRNGKey(0))
    assert result["parameters"] == sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert result["walkers"] == 8 and result["timed_steps"] == 2
    parts = ("sampling", "jacobian", "spring_solve", "local_energy_batch", "eval_step", "dmc_step")
    for key in ("seconds_per_step", *(f"seconds_per_{part}" for part in parts)):
        assert 0 < result[key] < 60
    for engine in ("forward", "folx", "exact"):
        assert 0 < result[f"seconds_per_local_energy_{engine}"] < 60
    assert result["laplacian_speedup_over_exact"] == pytest.approx(
        result["seconds_per_local_energy_exact"] / result["seconds_per_local_energy_forward"]
    )
    assert result["dmc_nonlocal"] is None
    assert "seconds_per_step" in capsys.readouterr().out


def test_bench_names_and_times_the_ecp_rules(tmp_path):
    """With an ECP the bench times the nonlocal term with the system's and the training's
    rules and names the rule its DMC step used."""
    path = tmp_path / "li.toml"
    path.write_text(
        'name = "li"\n[system]\natoms = "Li 0 0 0"\nunit = "bohr"\nspin = 1\n'
        'basis = "ccecp-cc-pvdz"\necp = "ccecp"\n[ansatz]\nkind = "jastrow"\n'
        "[dmc]\necp_points = 6\n"
    )
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--walkers", "8", "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dmc_nonlocal"] == {"scheme": "tmoves", "ecp_points": 6}
    for key in ("nonlocal_energy", "nonlocal_energy_training", "dmc_step"):
        assert 0 < result[f"seconds_per_{key}"] < 60


@pytest.mark.parametrize(
    "command", ["run", "eval", "dmc", "bench", "scan", "merge", "export", "fit", "bench-scan"]
)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: nnqmc" in capsys.readouterr().out


def test_progress_eta_counts_only_this_process_steps(monkeypatch):
    """A phase resumed at step 900 of 1000 that takes 1 s a step here has 90 s left after
    step 910, not the 10/910 of a second a division by the absolute step would say."""
    import io

    from nnqmc import cli

    clock = iter([0.0, 10.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    show = cli.ProgressPrinter(stream, interval=0.0)
    show("train", 900, 1000, {})
    show("train", 910, 1000, {})
    first, second = stream.getvalue().splitlines()
    assert first.endswith("ETA 0:00:00")
    assert second.endswith("ETA 0:01:30")


def test_slope_verdict_says_flat_only_when_its_error_bar_is_tight():
    """Slopes in Ha per 1000 steps: within 2σ of zero reads flat only when the 2σ bound,
    over another window as long, allows at most 1.6 mHa; else too noisy to tell."""
    from nnqmc.report import _format_slope

    def verdict(slope_mha: float, err_mha: float, steps: int) -> str:
        fit = {"training_slope": slope_mha / 1000, "training_slope_err": err_mha / 1000}
        falling = slope_mha < -2 * err_mha
        return _format_slope({**fit, "training_slope_steps": steps, "still_improving": falling})

    assert "flat: more steps would not pay" in verdict(0.5, 1.0, 400)  # at most 1.0 mHa
    noisy = verdict(-22, 56, 400)  # N2 on the 2-core CPU
    assert "too noisy to tell" in noisy and "fall 54 mHa over another 400 steps" in noisy
    assert "still falling" in verdict(-30, 5, 400)
    assert "rising" in verdict(30, 5, 400)


def test_progress_eta_starts_again_when_a_phase_starts_again(monkeypatch):
    """The same phase name from step 1 again (the next geometry of a scan) times its own
    steps: 10 steps in 10 s with 89 left is 89 s, whatever the phase before took."""
    import io

    from nnqmc import cli

    clock = iter([0.0, 100.0, 500.0, 510.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    show = cli.ProgressPrinter(stream, interval=0.0)
    for step in (1, 100, 1, 11):
        show("train", step, 100, {})
    assert stream.getvalue().splitlines()[-1].endswith("ETA 0:01:29")
