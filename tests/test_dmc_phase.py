"""The DMC phase around the step: [dmc] in a run, `nnqmc dmc RUN_DIR`, result.json and
dmc.h5, kill -9 and SIGTERM with an identical resumed result, input errors. Tiny runs (H2,
STO-3G, Jastrow, 16 walkers); kills in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nnqmc import io
from nnqmc.cli import main
from nnqmc.config import ConfigError, load_config

H2 = str(Path(__file__).parent.parent / "systems" / "h2.toml")
DMC_STEPS, DMC_EQUIL, EVERY = 10, 4, 5
TINY = [
    "system.basis=sto-3g",
    "ansatz.kind=jastrow",
    "train.optimizer=adam",
    "train.walkers=16",
    "train.steps=6",
    f"train.checkpoint_every={EVERY}",
    "sampler.burn_in=4",
    "sampler.decorrelation=2",
    "eval.steps=6",
    "eval.decorrelation=2",
    f"dmc.steps={DMC_STEPS}",
    f"dmc.equilibration={DMC_EQUIL}",
    "dmc.timestep=[0.02, 0.04]",
]
TOTAL = 2 * (DMC_STEPS + DMC_EQUIL)
TIMEOUT = 240

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import nnqmc.cli as cli

    at, action, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    real_call = cli.ProgressPrinter.__call__

    def call(self, phase, step, total, stats):
        real_call(self, phase, step, total, stats)
        if phase == "dmc" and step == at:
            os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGKILL)

    cli.ProgressPrinter.__call__ = call
    sys.exit(cli.main(argv))
    """
)


def _run_args(out: Path, *extra: str) -> list[str]:
    return ["run", H2, "--out", str(out), *extra, "--set", *TINY]


def _killed_run(
    out: Path, at: int, action: str, *extra: str, args: list[str] | None = None
) -> tuple[int, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NNQMC_", "SLURM_")) or k == "NNQMC_COMPILATION_CACHE"
    }
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    args = _run_args(out, *extra) if args is None else args
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(at), action, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return proc.returncode, proc.stderr


def _dmc_table(run: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in io.read_table(run / io.DMC_LOG).items() if k != "wall_time"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dmc_reference") / "run"
    rc, err = _killed_run(out, 10**9, "none")  # a fresh process, as the resumed ones
    assert rc == 0, err[-2000:]
    return out


def test_run_with_dmc_writes_rows_and_result(reference, capsys):
    result = json.loads((reference / io.RESULT).read_text())
    assert [row["timestep"] for row in result["dmc"]] == [0.04, 0.02]  # largest first
    for row in result["dmc"]:
        assert row["steps"] == DMC_STEPS and 0.5 < row["acceptance"] <= 1
        assert np.isfinite(row["energy"]) and row["energy_err"] > 0
    assert np.isfinite(result["dmc_energy"]) and result["dmc_energy_err"] > 0
    assert result["dmc_walkers"] == 16
    table = io.read_table(reference / io.DMC_LOG)
    assert len(table["energy"]) == TOTAL
    assert table["production"].sum() == 2 * DMC_STEPS
    np.testing.assert_array_equal(table["timestep"], [0.04] * 14 + [0.02] * 14)
    assert main(["dmc", str(reference)]) == 0  # finished: only recomputes the summary
    out = capsys.readouterr().out
    assert "VMC" in out and "DMC τ->0" in out and "τ = 0.04" in out
    again = json.loads((reference / io.RESULT).read_text())
    assert again["dmc_energy"] == result["dmc_energy"]


def test_kill_and_sigterm_in_dmc_resume_to_the_same_numbers(reference, tmp_path):
    out = tmp_path / "run"
    rc, err = _killed_run(out, 7, "kill")
    assert rc == -signal.SIGKILL, err[-2000:]
    rc, err = _killed_run(out, 19, "term", "--resume")
    assert rc == 143, err[-2000:]
    assert f"stopped by SIGTERM after DMC step 19 of {TOTAL}" in err
    rc, err = _killed_run(out, 10**9, "none", "--resume")
    assert rc == 0, err[-2000:]
    a, b = _dmc_table(out), _dmc_table(reference)
    assert sorted(a) == sorted(b)
    for column in a:  # to the last bit
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    ra = json.loads((out / io.RESULT).read_text())
    rb = json.loads((reference / io.RESULT).read_text())
    assert ra["dmc_energy"] == rb["dmc_energy"]


def test_dmc_command_adds_a_run_and_extends_the_last_time_step(tmp_path):
    out = tmp_path / "run"
    plain = [s for s in TINY if not s.startswith("dmc.")]
    assert main(["run", H2, "--out", str(out), "--set", *plain]) == 0
    vmc = json.loads((out / io.RESULT).read_text())
    assert "dmc_energy" not in vmc
    assert main(["dmc", str(out), "--steps", "5", "--timestep", "0.05"]) == 0
    # the finished evaluation is resumed, not run again: its wall time is the first run's
    assert json.loads((out / io.RESULT).read_text())["eval_seconds"] >= vmc["eval_seconds"]
    first = io.read_table(out / io.DMC_LOG)
    config = load_config(out / io.CONFIG_COPY)
    assert config.dmc.steps == 5 and config.dmc.timestep == (0.05,)
    n = len(first["energy"])
    assert n == 5 + config.dmc.equilibration
    assert main(["dmc", str(out), "--steps", "9"]) == 0  # one time step: continues
    longer = io.read_table(out / io.DMC_LOG)
    assert len(longer["energy"]) == n + 4
    np.testing.assert_array_equal(longer["energy"][:n], first["energy"])
    assert np.all(np.diff(longer["wall_time"]) > 0)  # the clock goes on across the resume
    result = json.loads((out / io.RESULT).read_text())
    assert result["dmc"][0]["steps"] == 9
    assert result["dmc_seconds"] >= longer["wall_time"][-1] > first["wall_time"][-1]


def test_dmc_input_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="dmc.timestep"):
        load_config(H2, ["dmc.timestep=[0.01, -0.02]"])
    with pytest.raises(ConfigError, match="dmc.steps"):
        load_config(H2, ["dmc.steps=0"])
    assert load_config(H2, ["dmc.timestep=0.02"]).dmc.timestep == (0.02,)
    assert main(["dmc", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no run" in err
    assert main(["dmc", str(tmp_path), "--timestep", "-1"]) == 2
    assert "--timestep must be positive" in capsys.readouterr().err


BH_ECP = """
name = "bh_ecp"
[system]
atoms = "B 0 0 0\\nH 0 0 2.33"
unit = "bohr"
basis = {B = "ccecp-cc-pvdz", H = "cc-pvdz"}
ecp = {B = "ccecp"}
"""


@pytest.mark.ci_slow
def test_ecp_dmc_with_t_moves_resumes_to_the_same_numbers_after_kill(tmp_path):
    """BH with ccECP on B (closed shell: HF has one solution): T-moves happen (electrons
    moved across the nodes of the trial function), and a DMC killed with -9 and resumed
    gives the same rows."""
    system = tmp_path / "bh.toml"
    system.write_text(BH_ECP)
    tiny = [s for s in TINY if not s.startswith("system.basis")]
    args = lambda out, *extra: ["run", str(system), "--out", str(out), *extra, "--set", *tiny]
    reference = tmp_path / "reference"  # in a process set up like the killed one: the
    # rotations hash the walkers' bits, which the traced steps kept on disk may round apart
    rc, err = _killed_run(reference, 10**9, "none", args=args(reference))
    assert rc == 0, err[-2000:]
    table = _dmc_table(reference)
    assert table["t_moves"].sum() > 0
    out = tmp_path / "run"
    rc, err = _killed_run(out, 9, "kill", args=args(out))
    assert rc == -signal.SIGKILL, err[-2000:]
    rc, err = _killed_run(out, 10**9, "none", "--resume", args=args(out, "--resume"))
    assert rc == 0, err[-2000:]
    a = _dmc_table(out)
    for column in table:
        np.testing.assert_array_equal(a[column], table[column], err_msg=column)
    result = json.loads((reference / io.RESULT).read_text())
    assert result["electrons"] == 4 and result["core_electrons"] == [2, 0]


def test_an_ecp_dmc_saved_before_dmc_had_its_own_rule_continues_with_the_systems():
    """A saved ECP tag without ``ecp_points`` ran the system's rule: it continues a DMC on
    that rule and not one on another."""
    import numpy as np

    from nnqmc.phases.dmc import _continues

    schedule = np.full(10, 0.05)
    old = {"seed": 0, "nonlocal_scheme": "tmoves"}
    saved = {"tag": old, "step": 4, "history": {"timestep": schedule[:4]}}
    assert _continues({**old, "ecp_points": 12}, schedule, 12)(saved)
    assert not _continues({**old, "ecp_points": 6}, schedule, 12)(saved)
