"""The ``nnqmc`` command's re-execution with glibc's huge-page tunable."""

import os
import subprocess
import sys

import pytest

from nnqmc import hugepages
from nnqmc.hugepages import TUNABLE, hugepage_environment, thp_mode


def test_tunable_is_added_once_and_kept_with_the_users_own():
    env = hugepage_environment({"PATH": "/bin"}, "madvise", (2, 36))
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": f"{TUNABLE}=1"}
    assert hugepage_environment(env, "madvise", (2, 36)) is None  # no second re-exec
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    env = hugepage_environment(mine, "always", (2, 39))
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}=1"
    assert hugepage_environment({"GLIBC_TUNABLES": f"{TUNABLE}=0"}, "madvise", (2, 36)) is None


@pytest.mark.parametrize(
    "environ, mode, libc",
    [
        ({}, "never", (2, 36)),
        ({}, None, (2, 36)),
        ({}, "madvise", (2, 31)),
        ({}, "madvise", None),
        ({"NNQMC_NO_HUGEPAGES": "1"}, "madvise", (2, 36)),
    ],
)
def test_nothing_changes_where_the_tunable_does_not_apply(environ, mode, libc):
    assert hugepage_environment(environ, mode, libc) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    assert thp_mode(tmp_path / "missing") is None


def test_reexec_replaces_the_process_with_python_m_nnqmc(monkeypatch):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)

    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("NNQMC_NO_HUGEPAGES", raising=False)
    monkeypatch.setattr(os, "execve", fake_execve)
    with pytest.raises(SystemExit):
        hugepages.reexec_with_hugepages(["bench", "x.toml"])
    path, args, env = calls[0]
    assert path == sys.executable
    assert args == [sys.executable, "-m", "nnqmc", "bench", "x.toml"]
    assert env["GLIBC_TUNABLES"] == f"{TUNABLE}=1"


def test_python_m_nnqmc_runs_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "nnqmc", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "bench" in out.stdout
