import os
import subprocess
import sys

from nnqmc import xla_cpu


def test_flag_is_added_once_and_user_choices_are_kept(monkeypatch):
    monkeypatch.setattr(xla_cpu, "jaxlib_knows_flag", lambda name: True)
    env = {}
    assert xla_cpu.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    assert not xla_cpu.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_cpu.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=4",
        "--xla_cpu_experimental_ynn_fusion_type=",
    ]
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}
    assert not xla_cpu.disable_ynn_fusion(mine)
    assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=default"


def test_unknown_flag_is_never_set(monkeypatch):
    """XLA aborts on a flag it does not know: a jaxlib without it gets nothing."""
    assert xla_cpu.jaxlib_knows_flag("xla_force_host_platform_device_count")
    assert not xla_cpu.jaxlib_knows_flag("xla_cpu_no_such_flag_nnqmc")
    monkeypatch.setattr(xla_cpu, "jaxlib_knows_flag", lambda name: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert not xla_cpu.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_importing_nnqmc_sets_the_flag_and_jax_accepts_it():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os, nnqmc, jax, jax.numpy as jnp;"
        "x = jax.jit(lambda a: jax.nn.sigmoid(a @ a.T))(jnp.ones((8, 8), jnp.float32));"
        "x.block_until_ready(); print(os.environ.get('XLA_FLAGS', ''))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    known = xla_cpu.jaxlib_knows_flag(xla_cpu.YNN_FUSION)
    assert ("--xla_cpu_experimental_ynn_fusion_type=" in out.stdout) == known
