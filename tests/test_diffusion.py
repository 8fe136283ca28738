"""Fixed-node DMC pieces: drift limit, comb resampling, population control, time-step
extrapolation, and exact answers for one electron in a harmonic trap (nodeless ground state
and the nodal first excited state), where fixed-node DMC is exact whatever the trial's width.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from nnqmc import diffusion
from nnqmc.ansatz import Ansatz
from nnqmc.estimate import estimate
from nnqmc.external import HarmonicTrap
from nnqmc.hamiltonian import MolecularHamiltonian
from nnqmc.optimize import AXIS

# ---------------------------------------------------------------------------------------------
# pieces


def test_limited_drift_is_the_drift_where_small_and_bounded_where_large():
    tau = 0.01
    small = jnp.array([[1e-3, -2e-3, 0.5e-3]])
    np.testing.assert_allclose(diffusion.limited_drift(small, tau), small, rtol=1e-7)
    for a in (1.0, 0.5):
        big = jnp.array([[1e4, 0.0, 0.0], [0.0, -3e3, 4e3]])
        v = diffusion.limited_drift(big, tau, a)
        np.testing.assert_allclose(
            jnp.linalg.norm(v, axis=-1) * tau, np.sqrt(2 * tau / a), rtol=2e-2
        )
        np.testing.assert_allclose(
            v / jnp.linalg.norm(v, axis=-1, keepdims=True),
            big / jnp.linalg.norm(big, axis=-1, keepdims=True),
        )
    grad = jnp.array([[3.0, 4.0, 0.0]])  # v^2 = 25
    x = 25 * tau
    np.testing.assert_allclose(
        diffusion.limited_drift(grad, tau), grad * (np.sqrt(1 + 2 * x) - 1) / x, rtol=1e-12
    )


def test_comb_draws_each_walker_floor_or_ceil_of_its_share():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.exponential(size=64))
    share = 64 * np.asarray(w) / float(jnp.sum(w))
    for u in (0.0, 0.3, 0.999):
        counts = np.bincount(np.asarray(diffusion.comb_indices(w, jnp.asarray(u))), minlength=64)
        assert counts.sum() == 64
        assert np.all(counts >= np.floor(share) - 1e-9) and np.all(counts <= np.ceil(share))


def test_comb_keeps_the_weighted_mean():
    """Averaged over the comb's offset, the resampled mean is the weighted mean exactly."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.exponential(size=50))
    f = rng.normal(size=50)
    target = float(np.sum(np.asarray(w) * f) / np.sum(np.asarray(w)))
    offsets = (np.arange(4000) + 0.5) / 4000
    means = [f[np.asarray(diffusion.comb_indices(w, jnp.asarray(u)))].mean() for u in offsets]
    assert abs(np.mean(means) - target) < 1e-3
    assert np.std(means) > 0  # the comb does resample


def test_equal_weights_are_kept_as_they_are():
    w = jnp.ones(32)
    for u in (0.0, 0.5, 0.99):
        np.testing.assert_array_equal(diffusion.comb_indices(w, jnp.asarray(u)), np.arange(32))


def test_reference_energy_pulls_the_weight_back():
    e_avg = -1.0
    above = diffusion.reference_energy(jnp.asarray(e_avg), jnp.asarray(110.0), 100, 0.01)
    below = diffusion.reference_energy(jnp.asarray(e_avg), jnp.asarray(90.0), 100, 0.01)
    assert above < e_avg < below
    assert diffusion.reference_energy(jnp.asarray(e_avg), jnp.asarray(100.0), 100, 0.01) == e_avg


def test_extrapolation_recovers_a_line_and_its_error():
    taus = np.array([0.01, 0.02, 0.04])
    e0, err, slope = diffusion.extrapolate_timestep(taus, -2.9037 + 0.5 * taus, np.full(3, 1e-4))
    assert abs(e0 + 2.9037) < 1e-12 and abs(slope - 0.5) < 1e-9
    # sigma(E0) of an unweighted line through 3 points with equal errors s
    s = 1e-4
    t = taus - taus.mean()
    expected = s * np.sqrt(1 / 3 + taus.mean() ** 2 / np.sum(t * t))
    assert abs(err - expected) < 1e-12
    assert diffusion.extrapolate_timestep([0.01], [-1.0], [0.1]) == (-1.0, 0.1, 0.0)
    on_line = -2.9037 + 0.5 * taus
    assert diffusion.line_chi2_per_dof(taus, on_line, np.full(3, 1e-4), e0, slope) < 1e-12
    bent = on_line + np.array([0, 3e-4, 0])
    e0, _, slope = diffusion.extrapolate_timestep(taus, bent, np.full(3, 1e-4))
    assert diffusion.line_chi2_per_dof(taus, bent, np.full(3, 1e-4), e0, slope) > 3
    assert diffusion.line_chi2_per_dof(taus[:2], on_line[:2], np.full(2, 1e-4), e0, 0) is None


# ---------------------------------------------------------------------------------------------
# one electron in a harmonic trap (omega = 1): E_0 = 1.5, E_1 = 2.5 with the node x = 0


def pmapped_dmc(ansatz, ham, engine="exact"):
    """DMC's start and step on every device (as :func:`nnqmc.programs.dmc_program`'s)."""
    start = jax.pmap(diffusion.walker_start(ansatz, ham, engine), axis_name=AXIS)
    one = diffusion.dmc_step(ansatz, ham, engine=engine)
    return start, jax.pmap(one, axis_name=AXIS, in_axes=(0, 0, 0, None, None))


def _trap_run(alpha, excited, taus, steps, walkers=256, seed=0, equilibration=300):
    def apply(params, r):
        log_psi = -alpha * jnp.sum(r * r)
        if excited:
            return jnp.sign(r[0, 0]), log_psi + jnp.log(jnp.abs(r[0, 0]))
        return jnp.ones(()), log_psi

    ansatz = Ansatz(init=lambda key: {}, apply=apply, n_up=1, n_down=0)
    ham = MolecularHamiltonian.without_nuclei(1, 0, external=[HarmonicTrap(1.0)])
    r = jax.random.normal(jax.random.PRNGKey(seed), (1, walkers, 1, 3)) / np.sqrt(4 * alpha)
    start, step = pmapped_dmc(ansatz, ham)
    walkers_ = start({}, r)
    signs0 = np.asarray(walkers_.sign)
    control = diffusion.initial_control(2.5 if excited else 1.5, 1)
    rows = []
    key = jax.random.PRNGKey(seed + 1)
    for i_tau, tau in enumerate(taus):
        energies, weights = [], []
        for i in range(equilibration + steps):
            walkers_, control, stats = step(
                {}, walkers_, control, jax.random.fold_in(key, 10**6 * i_tau + i), tau
            )
            if i >= equilibration:
                energies.append(float(stats["energy"][0]))
                weights.append(float(stats["total_weight"][0]))
        est = estimate(np.array(energies))
        rows.append((tau, est.mean, est.error, np.mean(weights)))
    return rows, walkers_, signs0


def test_trap_ground_state_is_exact_from_a_wrong_width():
    """Trial exp(-0.3 r^2): VMC 1.70; DMC extrapolates to 1.5."""
    rows, _, _ = _trap_run(0.3, False, [0.04, 0.02], steps=1500)
    taus, es, errs, weights = (np.array(x) for x in zip(*rows, strict=True))
    e0, err, slope = diffusion.extrapolate_timestep(taus, es, errs)
    assert abs(e0 - 1.5) < 3 * err + 2e-3, (rows, e0, err)
    assert np.all(es < 1.70 - 0.1)  # far below the trial's VMC energy
    assert np.all(np.abs(weights - 1) < 0.05)  # population control holds the total weight


def test_trap_excited_state_keeps_its_node():
    """Trial x exp(-0.3 r^2): its node x = 0 is exact, so fixed-node DMC gives 2.5, and no
    walker ever crosses the node (each keeps the sign of its x)."""
    rows, walkers, _ = _trap_run(0.3, True, [0.01], steps=1500)
    tau, e, err, _ = rows[0]
    assert abs(e - 2.5) < 3 * err + 0.01, rows  # time-step error at tau = 0.01 is small
    x = np.asarray(walkers.r)[0, :, 0, 0]
    np.testing.assert_array_equal(np.asarray(walkers.sign)[0], np.sign(x))


def test_exact_trial_has_no_fluctuation():
    """With the exact ground state as trial the local energy is 1.5 everywhere."""
    rows, _, _ = _trap_run(0.5, False, [0.05], steps=50, equilibration=0)
    assert abs(rows[0][1] - 1.5) < 1e-10


# ---------------------------------------------------------------------------------------------
# 1 vs 2 devices

_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, json, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from nnqmc import diffusion
    from nnqmc.ansatz import Ansatz
    from nnqmc.external import HarmonicTrap
    from nnqmc.hamiltonian import MolecularHamiltonian
    from nnqmc.optimize import AXIS
    n = jax.device_count()
    def apply(params, r):
        return jnp.ones(()), -params["a"] * jnp.sum(r * r) + 0.1 * jnp.sum(r[:, 0])
    ansatz = Ansatz(init=lambda k: {}, apply=apply, n_up=2, n_down=0)
    ham = MolecularHamiltonian.without_nuclei(2, 0, external=[HarmonicTrap(1.0)])
    r = jax.random.normal(jax.random.PRNGKey(0), (16, 2, 3)).reshape(n, 16 // n, 2, 3)
    params = {"a": jnp.full((n,), 0.3)}
    walkers = jax.pmap(diffusion.walker_start(ansatz, ham, "exact"), axis_name=AXIS)(params, r)
    step = jax.pmap(diffusion.dmc_step(ansatz, ham, engine="exact"), axis_name=AXIS,
                    in_axes=(0, 0, 0, None, None))
    control = diffusion.initial_control(3.0, n)
    energies = []
    for i in range(20):
        walkers, control, stats = step(params, walkers, control, jax.random.PRNGKey(i), 0.05)
        energies.append(float(stats["energy"][0]))
    print(json.dumps({"n": n, "energies": energies,
                      "r": np.asarray(walkers.r).reshape(16, 6).tolist()}))
    """
)


def _devices_run(devices: int) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("NNQMC_")}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_and_two_devices_give_the_same_steps():
    one, two = _devices_run(1), _devices_run(2)
    assert (one["n"], two["n"]) == (1, 2)
    np.testing.assert_allclose(one["energies"], two["energies"], rtol=1e-12)
    np.testing.assert_allclose(one["r"], two["r"], rtol=1e-12, atol=1e-12)
