"""One network for a whole PES (issue 32): orbitals aligned across geometries, energies and
Jacobian rows centred per geometry in one SPRING update, bit-identical resume of the shared
training, a shared scan end to end, and the inputs it refuses (one line, exit 2).

``ci_slow``: a short shared H2 scan against the exact curve."""

import dataclasses
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pes import TINY

from nnqmc import io, orbital_alignment
from nnqmc.cli import main
from nnqmc.config import ConfigError, load_config
from nnqmc.errors import Interrupted, RunError
from nnqmc.molecule import Molecule
from nnqmc.optimize import AXIS, per_group_direction, spring_direction
from nnqmc.orbital_alignment import AlignmentError, align_scf, mo_overlap, procrustes
from nnqmc.pes import read_dataset
from nnqmc.pes.shared import _columns, geometry_rows, hand_off, prepare_shared, train_shared
from nnqmc.phases import training
from nnqmc.scf import _pyscf_mol, ao_cross_overlap, run_hf
from nnqmc.shared_steps import clip_per_geometry, selection, stacked_rows

SYSTEMS = Path(__file__).parent.parent / "systems"
SHARED = (
    TINY.replace('kind = "hf"', 'kind = "jastrow"').replace('optimizer = "adam"\n', "")
    + '[scan]\nkind = "bond"\natoms = [0, 1]\nvalues = [1.2, 2.0]\ntrain = "shared"\n'
)


def _lih(r: float) -> Molecule:
    return Molecule(("Li", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, r]])


# --------------------------------------------------------------------------- alignment
def test_procrustes_undoes_a_permutation_with_sign_flips():
    rng = np.random.default_rng(0)
    overlap = np.eye(4) * 0.9 + 0.05 * rng.standard_normal((4, 4))
    order, signs = np.array([2, 0, 3, 1]), np.array([1.0, -1.0, -1.0, 1.0])
    shuffled = np.empty_like(overlap)
    shuffled[:, order] = overlap * signs  # new column order[i] is reference orbital i, flipped
    rotation, sigma = procrustes(shuffled)
    back = shuffled @ rotation
    assert np.allclose(back, back.T) and np.all(np.linalg.eigvalsh(back) > 0)
    expected = np.zeros((4, 4))
    expected[order, np.arange(4)] = signs  # the signed permutation, up to the small mixing
    assert np.allclose(rotation, expected, atol=0.15)
    assert np.allclose(sigma, np.linalg.svd(overlap, compute_uv=False))


def _messed(scf, mo):
    return type(scf)(**{**scf.__dict__, "mo_up": mo, "mo_down": mo})


def _determinant(molecule, mo, occupied, points):
    """The Slater determinant of the ``occupied`` columns of ``mo`` at electron ``points``."""
    ao = _pyscf_mol(molecule, "sto-3g").eval_gto("GTOval", points)
    return np.linalg.det(ao @ mo[:, occupied])


def test_permuted_and_flipped_lih_orbitals_come_back_aligned():
    a, b = _lih(3.0), _lih(3.4)
    ref, new = run_hf(a, "sto-3g"), run_hf(b, "sto-3g")
    assert mo_overlap(ref.mo_up, ref.mo_up, ao_cross_overlap(a, a, "sto-3g")) == pytest.approx(
        np.eye(ref.mo_up.shape[1]), abs=1e-8
    )  # orthonormal MOs: the cross overlap of a geometry with itself is S
    scrambled = new.mo_up.copy()
    scrambled[:, [0, 1]] = new.mo_up[:, [1, 0]] * np.array([-1.0, 1.0])
    aligned = align_scf(ref, a, _messed(new, scrambled), b, "sto-3g")
    overlap = mo_overlap(ref.mo_up[:, :2], aligned.mo_up[:, :2], ao_cross_overlap(a, b, "sto-3g"))
    assert np.all(np.diag(overlap) > 0.9), overlap  # the same orbital in the same slot, sign +
    assert abs(overlap[0, 1]) < 0.2 and abs(overlap[1, 0]) < 0.2
    # the aligned orbitals are those aligned from the unscrambled ones
    again = align_scf(ref, a, new, b, "sto-3g")
    assert np.allclose(aligned.mo_up[:, :2], again.mo_up[:, :2], atol=1e-12)
    assert np.allclose(aligned.mo_down, aligned.mo_up)
    assert np.array_equal(aligned.mo_up[:, 2:], scrambled[:, 2:])  # virtuals as they were
    with pytest.raises(AlignmentError, match="with a singular value of"):
        align_scf(ref, a, new, b, "sto-3g", min_overlap=0.9999)


def test_occupied_orbitals_mixed_by_a_rotation_come_back_as_the_unmixed_ones():
    """Degenerate-like mixing: the occupied orbitals of LiH at 3.4 bohr rotated among
    themselves by a random orthogonal matrix align to the same orbitals as the unmixed
    ones (overlap with the reference the same symmetric positive matrix), and the HF
    determinant and energy stay what they were (up to the determinant's sign)."""
    a, b = _lih(3.0), _lih(3.4)
    ref, new = run_hf(a, "sto-3g"), run_hf(b, "sto-3g")
    occ = np.unique(new.occ_up)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((occ.size, occ.size)))
    mixed = new.mo_up.copy()
    mixed[:, occ] = new.mo_up[:, occ] @ q
    ao = ao_cross_overlap(a, b, "sto-3g")
    plain = align_scf(ref, a, new, b, "sto-3g")
    rotated = align_scf(ref, a, _messed(new, mixed), b, "sto-3g")
    s_plain = mo_overlap(ref.mo_up[:, occ], plain.mo_up[:, occ], ao)
    s_rotated = mo_overlap(ref.mo_up[:, occ], rotated.mo_up[:, occ], ao)
    assert np.allclose(s_rotated, s_plain, atol=1e-10)
    assert np.allclose(s_rotated, s_rotated.T, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(s_rotated) > 0.5)
    assert np.all(np.diag(s_rotated) > 0.9)
    # the same determinant up to its sign, the same HF energy
    points = np.random.default_rng(4).standard_normal((occ.size, 3))
    before = _determinant(b, new.mo_up, occ, points)
    after = _determinant(b, rotated.mo_up, occ, points)
    assert abs(after) == pytest.approx(abs(before), rel=1e-10)
    mol = _pyscf_mol(b, "sto-3g")
    from pyscf import scf as pyscf_scf

    def hf_energy(mo):
        dm = 2 * mo[:, occ] @ mo[:, occ].T  # closed shell: both spins in the same orbitals
        return pyscf_scf.RHF(mol).energy_tot(dm=dm)

    assert hf_energy(rotated.mo_up) == pytest.approx(hf_energy(new.mo_up), abs=1e-10)
    assert hf_energy(new.mo_up) == pytest.approx(new.energy, abs=1e-7)


# --------------------------------------------------------------------------- centring
def _direction(blocks, e, previous):
    """SPRING direction and -grad E from per-geometry rows (S, W, P), (S, W), on one
    device (inside pmap, as the shared step)."""

    def inner(blocks, e, previous):
        rows, e_rows = stacked_rows([blocks], e)
        return spring_direction(rows, e_rows, previous, 1e-3, 0.5)

    f = jax.pmap(inner, axis_name=AXIS)
    delta, minus_grad = f(blocks[None], e[None], previous[None])
    return np.asarray(delta[0]), np.asarray(minus_grad[0])


def test_a_constant_added_to_one_geometrys_energies_changes_nothing():
    rng = np.random.default_rng(1)
    blocks = jnp.asarray(rng.standard_normal((3, 16, 5)) + 2.0)  # non-zero means per geometry
    e = jnp.asarray(rng.standard_normal((3, 16)) + np.array([[-1.1], [-1.0], [-0.9]]))
    previous = jnp.asarray(rng.standard_normal(5))
    delta, grad = _direction(blocks, e, previous)
    shifted = e.at[1].add(0.7)
    delta_s, grad_s = _direction(blocks, shifted, previous)
    assert np.allclose(delta_s, delta, rtol=1e-10, atol=1e-12)
    assert np.allclose(grad_s, grad, rtol=1e-10, atol=1e-12)
    # -grad E is the mean over geometries of each one's centred estimate
    each = [
        -2 * np.mean((e[g] - e[g].mean())[:, None] * (blocks[g] - blocks[g].mean(0)), axis=0)
        for g in range(3)
    ]
    assert np.allclose(grad, np.mean(each, axis=0), rtol=1e-10)
    # centring over all geometries at once would not be blind to the offset
    flat = lambda x: [jnp.reshape(x, (48, 5))]  # noqa: E731
    naive = spring_direction(flat(blocks), e.reshape(-1), previous, 1e-3, 0.5)[1]
    naive_s = spring_direction(flat(blocks), shifted.reshape(-1), previous, 1e-3, 0.5)[1]
    assert not np.allclose(naive, naive_s, rtol=1e-3)


def test_a_constant_added_to_one_geometrys_jacobian_rows_leaves_the_update():
    """Per-geometry centring of the log-psi Jacobian: a constant added to the rows of one
    geometry (a parameter whose derivative differs between geometries by an offset, e.g.
    through the orbitals) leaves the SPRING update as it is; centring all rows together
    would not."""
    rng = np.random.default_rng(2)
    blocks = jnp.asarray(rng.standard_normal((3, 16, 5)))
    e = jnp.asarray(rng.standard_normal((3, 16)))
    previous = jnp.asarray(rng.standard_normal(5))
    delta, grad = _direction(blocks, e, previous)
    shifted = blocks.at[1].add(jnp.asarray(rng.standard_normal(5)) * 3.0)
    delta_s, grad_s = _direction(shifted, e, previous)
    assert np.allclose(delta_s, delta, rtol=1e-10, atol=1e-12)
    assert np.allclose(grad_s, grad, rtol=1e-10, atol=1e-12)
    flat = lambda x: [jnp.reshape(x, (48, 5))]  # noqa: E731
    naive = spring_direction(flat(blocks), e.reshape(-1), previous, 1e-3, 0.5)[0]
    naive_s = spring_direction(flat(shifted), e.reshape(-1), previous, 1e-3, 0.5)[0]
    assert not np.allclose(naive, naive_s, rtol=1e-3)


def test_the_per_geometry_kernel_is_the_mean_of_each_geometrys_own_spring_direction():
    """``scan.shared_kernel = "per_geometry"``: one SPRING kernel per geometry and the
    mean of the directions, each the one that geometry alone would take (with the shared
    momentum); -grad E the joint one's; blind to a constant added to one geometry's
    energies or Jacobian rows; with one geometry the joint direction; and not the joint
    direction for several (the cross-geometry blocks are dropped)."""
    rng = np.random.default_rng(3)
    blocks = jnp.asarray(rng.standard_normal((3, 16, 40)) + 1.0)
    e = jnp.asarray(rng.standard_normal((3, 16)) + np.array([[-1.1], [-1.0], [-0.9]]))
    previous = jnp.asarray(rng.standard_normal(40))

    def direction(blocks, e, groups):
        def inner(blocks, e, previous):
            rows, e_rows = stacked_rows([blocks], e)
            return per_group_direction(rows, e_rows, previous, 1e-3, 0.5, groups)

        delta, grad = jax.pmap(inner, axis_name=AXIS)(blocks[None], e[None], previous[None])
        return np.asarray(delta[0]), np.asarray(grad[0])

    delta, grad = direction(blocks, e, 3)
    own = [spring_direction([blocks[g]], e[g], previous, 1e-3, 0.5) for g in range(3)]
    assert np.allclose(delta, np.mean([d for d, _ in own], axis=0), rtol=1e-10, atol=1e-12)
    joint_delta, joint_grad = direction(blocks, e, 1)
    assert np.allclose(grad, joint_grad, rtol=1e-10, atol=1e-12)
    assert not np.allclose(delta, joint_delta, rtol=1e-2)
    shifted = direction(blocks.at[1].add(2.0), e.at[2].add(0.7), 3)
    assert np.allclose(shifted[0], delta, rtol=1e-10, atol=1e-12)
    one = direction(blocks[:1], e[:1], 1)
    assert np.allclose(one[0], own[0][0], rtol=1e-10, atol=1e-12)


def test_local_energies_are_clipped_per_geometry():
    """A geometry 100 Ha above the others keeps its own spread: clipped around its own
    median, exactly as it would be alone, not pinned to the others' window."""
    rng = np.random.default_rng(5)
    e = rng.standard_normal((3, 32)) - 1.0
    e[:, 0] += 30.0  # one outlier per geometry, which the clipping cuts
    shifted = e.copy()
    shifted[2] += 100.0
    clip = jax.pmap(lambda x: clip_per_geometry(x, 5.0), axis_name=AXIS)
    plain, moved = np.asarray(clip(e[None])[0]), np.asarray(clip(shifted[None])[0])
    assert np.allclose(moved[2], plain[2] + 100.0, rtol=0, atol=1e-10)
    assert np.array_equal(moved[:2], plain[:2])
    assert np.all(plain[:, 0] < e[:, 0] - 10.0)  # the outliers were clipped
    assert np.array_equal(plain[:, 1:], e[:, 1:])  # the rest left alone


def test_geometries_per_step_go_round_robin():
    assert list(selection(0, 3, 3)) == [0, 1, 2] and list(selection(5, 3, 10)) == [0, 1, 2]
    seen = np.concatenate([selection(k, 5, 2) for k in range(5)])
    assert list(seen) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- training
def _runs(tmp_path, text=SHARED, *overrides):
    from nnqmc.pes.scan import geometry_config

    path = tmp_path / "shared.toml"
    path.write_text(text)
    config = load_config(path, ["precision=float64", *overrides])
    coords = np.array([[[0, 0, 0], [0, 0, r]] for r in config.scan.values], float)
    configs = [geometry_config(config, c, k, config.train.steps) for k, c in enumerate(coords)]
    return configs


THREE = SHARED.replace("[1.2, 2.0]", "[1.2, 1.6, 2.0]")


def test_shared_training_resumes_bit_identically(tmp_path):
    """Three geometries, one per step: stopped after step 2 of 4, in the middle of a round
    robin, and resumed; the same as without the stop. Other settings are refused."""
    configs = _runs(tmp_path, THREE, "train.steps=4", "train.checkpoint_every=1")
    runs = prepare_shared(configs, tmp_path / "whole", resume=False)
    whole = train_shared(runs, tmp_path / "whole", per_step=1)
    calls = iter(range(100))
    stop = lambda: 15 if next(calls) == 2 else 0  # noqa: E731  SIGTERM before step 3
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="after shared step 2 of 4"):
        train_shared(prepare_shared(configs, cut, resume=False), cut, per_step=1, stop=stop)
    resumed = train_shared(prepare_shared(configs, cut, resume=True), cut, per_step=1, resume=True)
    leaves = lambda r: jax.tree_util.tree_leaves((r.params, r.opt_state))  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(whole), leaves(resumed), strict=True))
    assert np.array_equal(whole.walkers, resumed.walkers)
    assert np.array_equal(whole.width, resumed.width)
    for name in ("energy", "geometry", "grad_norm"):
        assert np.array_equal(whole.history[name], resumed.history[name])
    assert whole.history["energy"].shape == (4, 1) and resumed.steps == 4
    assert list(whole.history["geometry"][:, 0]) == [0, 1, 2, 0]
    assert whole.mark == resumed.mark
    # the log's columns as a resume on several processes expects them
    columns = _columns(1)
    assert set(columns) == set(whole.history)
    for name, column in columns.items():
        row = np.asarray(whole.history[name][0])
        assert (row.shape, row.dtype) == (column.shape, column.dtype), name
    assert io.read_table(cut / io.TRAIN_LOG)["energy"].shape == (4, 1)
    with h5py.File(cut / io.TRAIN_LOG) as f:
        assert int(f.attrs["rejected_steps"]) == 0
    # another geometries_per_step, seed or number of walkers: one line, not a traceback
    again = prepare_shared(configs, cut, resume=True)
    with pytest.raises(RunError, match="other scan.geometries_per_step; rerun with"):
        train_shared(again, cut, per_step=2, resume=True)
    with pytest.raises(RunError, match="other scan.shared_kernel; rerun with"):
        train_shared(again, cut, per_step=1, resume=True, kernel="per_geometry")
    reseeded = _runs(tmp_path, THREE, "train.steps=4", "train.seed=7")
    with pytest.raises(RunError, match=r"other train.seed; rerun"):
        train_shared(prepare_shared(reseeded, cut, resume=True), cut, per_step=1, resume=True)
    lowered = _runs(tmp_path, THREE, "train.steps=4", "train.learning_rate=0.01")
    again = train_shared(prepare_shared(lowered, cut, resume=True), cut, per_step=1, resume=True)
    assert again.steps == 4  # a lower learning rate, as after rejected steps, goes on
    # the hand-off: own step count, its share of the wall time, the learning-rate scale
    rows = geometry_rows(whole.history, 0)
    assert [r["step"] for r in rows] == [0, 1]
    assert [r["energy"] for r in rows] == list(whole.history["energy"][[0, 3], 0])
    share = np.diff(whole.history["wall_time"], prepend=0.0)[[0, 3]].cumsum()
    assert [r["wall_time"] for r in rows] == pytest.approx(list(share))
    handed = dataclasses.replace(whole, lr_scale=0.25)
    geom = tmp_path / "geom-0000"
    assert hand_off(handed, 0, runs[0], geom) == (2, True)
    assert hand_off(handed, 0, runs[0], geom) == (2, False)  # this state's: left as it is
    drive = training._driver(runs[0], geom)
    key, params, _, opt_state = training.initial_parameters(runs[0])
    saved = training._resume(runs[0], drive, params, opt_state, key)
    assert drive.guard.scale == 0.25 and drive.start == 2
    assert drive.earlier == pytest.approx(share[-1], abs=0.05)
    assert list(drive.rows()["step"]) == [0, 1]
    assert np.array_equal(saved["walkers"], whole.walkers[0])
    later = dataclasses.replace(handed, mark=handed.mark + "0")  # a later shared state
    assert hand_off(later, 0, runs[0], geom) == (2, True)


def test_the_shared_kernel_reaches_the_step(tmp_path):
    """One shared step over three geometries with each kernel: the same walkers and
    energies before the update, the same -grad E (its norm in the log), other parameters
    after it; each training's mark tells them apart, and the default (joint) kernel does
    not resume a per-geometry training."""
    configs = _runs(tmp_path, THREE, "train.steps=1")
    ends = {}
    for kernel in ("joint", "per_geometry"):
        out = tmp_path / kernel
        runs = prepare_shared(configs, out, resume=False)
        ends[kernel] = train_shared(runs, out, per_step=3, kernel=kernel)
    joint, own = ends["joint"], ends["per_geometry"]
    assert np.array_equal(joint.history["energy"], own.history["energy"])
    assert joint.history["grad_norm"] == pytest.approx(own.history["grad_norm"], rel=1e-8)
    differ = [
        not np.allclose(a, b, rtol=1e-6)
        for a, b in zip(
            jax.tree_util.tree_leaves(joint.params),
            jax.tree_util.tree_leaves(own.params),
            strict=True,
        )
    ]
    assert any(differ) and joint.mark != own.mark
    back = prepare_shared(configs, tmp_path / "per_geometry", resume=True)
    with pytest.raises(RunError, match="other scan.shared_kernel; rerun with"):
        train_shared(back, tmp_path / "per_geometry", per_step=3, resume=True)


def test_a_shared_scan_writes_the_dataset_and_each_geometry_its_run(tmp_path, capsys):
    """One geometry per shared step (2 each of 4), 2 fine-tune steps each; each geometry's
    run on its aligned reference, its log going on without a step back; raising
    train.steps redoes every row from the new end of the shared training."""
    path = tmp_path / "scan.toml"
    path.write_text(SHARED + "forces = true\nfine_tune_steps = 2\ngeometries_per_step = 1\n")
    out = tmp_path / "out"
    args = ["scan", str(path), "--out", str(out), "--set", "precision=float64"]
    assert main(args) == 0
    data = read_dataset(out / "scan.h5")
    assert [data.status(k) for k in range(2)] == ["done", "done"]
    assert list(data.columns["steps"]) == [4, 4]  # 2 shared + 2 of its own
    assert data.attrs["train"] == "shared"
    assert np.all(np.isfinite(data.columns["energy"])) and np.all(data.columns["energy"] < 0)
    assert np.all(np.isfinite(data.columns["forces"]))
    log = io.read_table(out / "shared" / io.TRAIN_LOG)
    assert log["energy"].shape == (4, 1) and list(log["geometry"][:, 0]) == [0, 1, 0, 1]
    for k in range(2):
        own = io.read_table(out / f"geom-{k:04d}" / io.TRAIN_LOG)
        assert list(own["energy"][:2]) == list(log["energy"][k::2, 0])
        assert list(own["step"]) == [0, 1, 2, 3]
        assert np.all(np.diff(own["wall_time"]) >= 0)
        stored = io.load_reference(out / f"geom-{k:04d}" / io.REFERENCE)
        aligned = io.load_reference(out / "shared" / f"reference-{k:04d}.h5")
        assert all(np.array_equal(stored[n], aligned[n], equal_nan=True) for n in aligned)
        assert io.reference_attrs(out / f"geom-{k:04d}" / io.REFERENCE)["aligned"]
    assert "fresh SCF differs" not in capsys.readouterr().err
    # run again: nothing left to do, nothing trained
    assert main(args) == 0
    assert list(read_dataset(out / "scan.h5").columns["steps"]) == [4, 4]
    # more shared steps: both rows redone from the new shared state, none left behind
    capsys.readouterr()
    assert main([*args, "train.steps=6"]) == 0
    assert "geometries [0, 1]: redone from shared step 6" in capsys.readouterr().err
    data = read_dataset(out / "scan.h5")
    assert list(data.columns["steps"]) == [5, 5] and data.status(1) == "done"
    assert len(io.read_table(out / "geom-0001" / io.TRAIN_LOG)["step"]) == 5
    # the same directory as an independent scan: refused, one line
    other = tmp_path / "independent.toml"
    other.write_text(SHARED.replace('train = "shared"\n', ""))
    assert main(["scan", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a scan with scan.train = 'shared'" in err


def test_an_aligned_reference_is_compared_up_to_a_rotation_of_its_occupied_orbitals(
    tmp_path, capsys
):
    """A geometry's aligned reference (occupied orbitals rotated among themselves) is the
    fresh SCF's solution: no warning on resume. Without the flag, or with other occupied
    orbitals (another SCF solution), the warning stays."""
    from nnqmc.run_setup import prepare
    from nnqmc.runner import stored_reference
    from nnqmc.scf import reference_arrays

    config = load_config(SYSTEMS / "lih.toml", ["system.basis=sto-3g", "train.walkers=32"])
    run = prepare(config)
    occ = np.unique(run.scf.occ_up)
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((occ.size, occ.size)))
    rotated = reference_arrays(run.scf)
    for spin in ("mo_up", "mo_down"):
        rotated[spin] = rotated[spin].copy()
        rotated[spin][:, occ] = rotated[spin][:, occ] @ q
    swapped = reference_arrays(run.scf)
    for spin in ("mo_up", "mo_down"):  # the highest occupied orbital for the lowest virtual
        swapped[spin] = swapped[spin].copy()
        swapped[spin][:, [occ[-1], occ[-1] + 1]] = swapped[spin][:, [occ[-1] + 1, occ[-1]]]
    cases = [(rotated, True, False), (rotated, False, True), (swapped, True, True)]
    for arrays, aligned, warned in cases:
        capsys.readouterr()
        io.save_reference(tmp_path / io.REFERENCE, arrays, aligned=aligned)
        used = stored_reference(run, tmp_path)
        assert np.array_equal(used.scf.mo_up, arrays["mo_up"])
        err = capsys.readouterr().err
        assert ("fresh SCF differs" in err) == warned, (aligned, err)
        assert ("aligned reference" in err) == (warned and aligned)


# --------------------------------------------------------------------------- bad input
BAD = {
    "adaptive": (
        SHARED.split("[scan]")[0]
        + '[scan]\nkind = "adaptive"\ntrain = "shared"\ngrid_atoms = [[0, 1]]\n'
        + "ranges = [[1.0, 2.0, 3]]\n",
        'scan.train: "shared" needs a fixed set of geometries',
    ),
    "cas": (
        SHARED.replace('[ansatz]\nkind = "jastrow"', '[ansatz]\nkind = "jastrow"\ncas = [2, 2]'),
        "it does not take ansatz.cas",
    ),
    "adam": (SHARED.replace("[train]\n", '[train]\noptimizer = "adam"\n'), "spring"),
    "steps": (SHARED + "steps = 3\n", "scan.steps: not used with train"),
    "per_step_alone": (
        SHARED.replace('train = "shared"\n', "geometries_per_step = 2\n"),
        "scan.geometries_per_step: only used with",
    ),
    "unknown_training": (SHARED.replace('"shared"', '"joint"'), "scan.train"),
    "kernel_alone": (
        SHARED.replace('train = "shared"\n', 'shared_kernel = "per_geometry"\n'),
        "scan.shared_kernel: only used with",
    ),
    "unknown_kernel": (
        SHARED.replace('train = "shared"\n', 'train = "shared"\nshared_kernel = "block"\n'),
        "scan.shared_kernel",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_shared_inputs_are_one_line_exit_2(name, tmp_path, capsys):
    text, message = BAD[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(path)
    assert main(["scan", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnqmc: error: ") and err.count("\n") == 1 and message in err


def test_orbitals_that_cannot_be_aligned_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(orbital_alignment, "MIN_OVERLAP", 0.9999)
    path = tmp_path / "scan.toml"
    path.write_text(SHARED.replace("[1.2, 2.0]", "[1.0, 4.0]"))
    assert main(["scan", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "geometry 1 cannot be aligned with those of geometry 0" in err


def test_other_atoms_in_a_shared_training_are_refused(tmp_path):
    configs = _runs(tmp_path)
    other = load_config(SYSTEMS / "lih.toml", ["train.walkers=32"])
    with pytest.raises(RunError, match="other atoms or electrons than geometry 0"):
        prepare_shared([configs[0], other], tmp_path / "s", resume=False)


def test_shared_scans_run_whole(tmp_path, capsys):
    path = tmp_path / "scan.toml"
    path.write_text(SHARED)
    assert main(["scan", str(path), "--out", str(tmp_path / "o"), "--shard", "0/2"]) == 2
    assert "run it whole" in capsys.readouterr().err


# --------------------------------------------------------------------------- physics
@pytest.mark.ci_slow
def test_a_short_shared_h2_scan_beats_hf_and_approaches_exact(tmp_path):
    """Three bond lengths, one network: every energy clearly below HF, not below the exact
    energy, and within 5 mHa of it after 150 shared steps of 64 walkers per geometry."""
    from nnqmc.pes import run_scan

    path = SYSTEMS / "h2_scan_shared.toml"
    overrides = [
        "scan.values=[1.0, 1.4, 2.0]",
        "scan.reference=[-1.1245397, -1.1744757, -1.1381330]",
        "train.steps=150",
        "train.walkers=64",
        "eval.steps=300",
        "scan.forces=false",
    ]
    config = load_config(path, overrides)
    data = run_scan(config, path.read_text(), tmp_path / "scan")
    e, err = data.columns["energy"], data.columns["energy_err"]
    exact, hf = data.columns["reference_energy"], data.columns["hf_energy"]
    assert np.all(err < 0.003), err
    assert np.all(e < hf - 3 * err), (e, hf)
    assert np.all(e > exact - 3 * err), (e, exact)
    assert np.all(e - exact < 0.005), 1000 * (e - exact)
