"""New geometries from a trained shared model (issue 32, item 3): ``nnqmc scan FILE --from
SHARED_DIR``. A tiny shared H2 scan (two geometries), then a new bond length from it: its
run starts at step 0 with the shared parameters and optimizer state on orbitals aligned to
the nearest shared geometry's, fine-tunes, and writes its row; an interrupted one resumes
bit for bit; an adaptive scan takes ``--from`` too; bad input is one line, exit 2."""

import os
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_shared_pes import SHARED

from nnqmc import io, orbital_alignment, run_setup
from nnqmc.cli import main
from nnqmc.config import load_config
from nnqmc.errors import Interrupted
from nnqmc.molecule import Molecule
from nnqmc.orbital_alignment import mo_overlap
from nnqmc.pes import read_dataset, run_scan, write_dataset
from nnqmc.scf import ao_cross_overlap

F64 = ["--set", "precision=float64"]
NEW = SHARED.replace("[1.2, 2.0]", "[1.7]") + "fine_tune_steps = 2\nforces = true\n"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A finished shared H2 scan at 1.2 and 2.0 bohr (4 shared steps, 1 fine-tune step)."""
    tmp = tmp_path_factory.mktemp("shared")
    path = tmp / "shared.toml"
    path.write_text(SHARED + "fine_tune_steps = 1\n")
    assert main(["scan", str(path), "--out", str(tmp / "scan"), *F64]) == 0
    return tmp / "scan"


def _tree(path: Path, name: str) -> list[np.ndarray]:
    with h5py.File(path) as f:
        group = f[name]
        return [np.asarray(group[str(i)]) for i in range(int(group.attrs["n_leaves"]))]


def _scan(tmp_path: Path, text: str, out: str, shared: Path, *extra: str) -> int:
    path = tmp_path / f"{out}.toml"
    path.write_text(text)
    out_dir = str(tmp_path / out)
    return main(["scan", str(path), "--out", out_dir, "--from", str(shared), *F64, *extra])


def test_a_new_geometry_starts_from_the_shared_model(shared, tmp_path, capsys):
    """1.7 bohr from the model trained at 1.2 and 2.0: step 0 holds the shared parameters
    and optimizer state, the reference is the fresh SCF aligned to that of 2.0 bohr, two
    fine-tune steps, the row with forces; a rerun has nothing to do."""
    assert _scan(tmp_path, NEW, "new", shared) == 0
    err = capsys.readouterr().err
    assert "from the shared model in" in err and "fresh SCF differs" not in err
    data = read_dataset(tmp_path / "new" / "scan.h5")
    assert data.status(0) == "done" and data.attrs["train"] == "from-shared"
    assert data.attrs["shared_from"] == str(shared)
    assert int(data.columns["steps"][0]) == 2 and int(data.columns["warm_from"][0]) == -1
    assert np.isfinite(data.columns["energy"][0]) and np.all(np.isfinite(data.columns["forces"]))
    geom = tmp_path / "new" / "geom-0000"
    start = geom / io.PREVIOUS_CHECKPOINT  # the checkpoint before the first step
    with h5py.File(start) as f:
        assert int(f.attrs["step"]) == 0 and int(f.attrs["rows"]) == 0
    model = shared / "shared" / io.CHECKPOINT
    for name in ("params", "opt_state"):
        ours, theirs = _tree(start, name), _tree(model, name)
        assert len(ours) == len(theirs)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), name
    with h5py.File(geom / io.CHECKPOINT) as f:
        assert int(f.attrs["step"]) == 2
    assert list(io.read_table(geom / io.TRAIN_LOG)["step"]) == [0, 1]
    attrs = io.reference_attrs(geom / io.REFERENCE)
    assert attrs["aligned"] and attrs["shared"] == data.attrs["shared_model"]
    assert attrs["shared"] == io.reference_attrs(shared / "geom-0000" / io.REFERENCE)["shared"]
    # the occupied orbital in the slot of the nearest shared geometry's (2.0 bohr), sign +
    ours = io.load_reference(geom / io.REFERENCE)["mo_up"]
    theirs = io.load_reference(shared / "shared" / "reference-0001.h5")["mo_up"]
    a = Molecule(("H", "H"), [[0, 0, 0], [0, 0, 2.0]])
    b = Molecule(("H", "H"), [[0, 0, 0], [0, 0, 1.7]])
    overlap = mo_overlap(theirs[:, :1], ours[:, :1], ao_cross_overlap(a, b, "sto-3g"))
    assert overlap[0, 0] > 0.9
    # nothing left to do
    assert _scan(tmp_path, NEW, "new", shared) == 0
    assert int(read_dataset(tmp_path / "new" / "scan.h5").columns["steps"][0]) == 2
    # the same directory without --from: refused, one line
    capsys.readouterr()
    path = tmp_path / "plain.toml"
    path.write_text(NEW)
    assert main(["scan", str(path), "--out", str(tmp_path / "new"), *F64]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "holds a scan with --from, this one has scan.train = 'shared'" in err


def test_an_interrupted_geometry_from_a_shared_model_resumes_bit_for_bit(
    shared, tmp_path, monkeypatch
):
    """SIGTERM after the first fine-tune step, then the same scan again: the same end as
    without the stop (parameters, row). The resume solves no SCF (one on another solution
    could fail to align): the geometry goes on on its stored reference."""
    path = tmp_path / "new.toml"
    path.write_text(NEW)
    config = load_config(path, ["precision=float64"])
    whole = run_scan(config, NEW, tmp_path / "whole", shared_from=shared)

    def stop_after_one(phase, k, total, stats):
        if phase == "train" and k == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="after step 1 of 2"):
        run_scan(config, NEW, cut, progress=stop_after_one, shared_from=shared)
    assert read_dataset(cut / "scan.h5").status(0) == "running"

    def no_scf(*args, **kwargs):
        raise AssertionError("an SCF was solved")

    monkeypatch.setattr(run_setup, "run_scf", no_scf)
    resumed = run_scan(config, NEW, cut, shared_from=shared)
    for name in ("energy", "energy_err", "forces"):
        assert np.array_equal(whole.columns[name], resumed.columns[name]), name
    ends = [_tree(d / "geom-0000" / io.CHECKPOINT, "params") for d in (tmp_path / "whole", cut)]
    assert all(np.array_equal(a, b) for a, b in zip(*ends, strict=True))


def test_an_adaptive_scan_takes_from(shared, tmp_path):
    text = (
        SHARED.split("[scan]")[0]
        + '[scan]\nkind = "adaptive"\ngrid_atoms = [[0, 1]]\nranges = [[1.4, 1.8, 3]]\n'
        + "initial = 2\nbudget = 2\nfine_tune_steps = 1\n"
    )
    assert _scan(tmp_path, text, "adaptive", shared) == 0
    data = read_dataset(tmp_path / "adaptive" / "scan.h5")
    done = [k for k in range(data.n) if data.status(k) == "done"]
    assert len(done) == 2 and all(int(data.columns["steps"][k]) == 1 for k in done)


# --------------------------------------------------------------------------- bad input
BAD = {
    "other atoms": (
        NEW.replace("H 0 0 0\nH 0 0 1.4", "He 0 0 0\nH 0 0 1.4").replace(
            'unit = "bohr"', 'unit = "bohr"\ncharge = 1'
        ),
        "a shared model of other atoms (H H) than this scan's (He H)",
    ),
    "other electrons": (
        NEW.replace('unit = "bohr"', 'unit = "bohr"\ncharge = 1\nspin = 1'),
        "a shared model of other electron counts (up, down) = (1, 1) than this scan's (1, 0)",
    ),
    "other basis": (NEW.replace('"sto-3g"', '"6-31g"'), "a shared model of other basis;"),
    "other walkers": (NEW.replace("walkers = 32", "walkers = 16"), "of other training;"),
    "no fine-tuning": (NEW.replace("fine_tune_steps = 2", "fine_tune_steps = 0"), ">= 1"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_with_from_are_one_line_exit_2(name, shared, tmp_path, capsys):
    text, message = BAD[name]
    assert _scan(tmp_path, text, "o", shared) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnqmc: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_a_directory_that_is_no_finished_shared_scan_is_one_line_exit_2(shared, tmp_path, capsys):
    def refused(source: Path, message: str) -> None:
        assert _scan(tmp_path, NEW, "o", source) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err

    refused(tmp_path / "nowhere", "no such directory")
    assert not (tmp_path / "o" / "scan.h5").exists()  # a mistyped --from writes nothing
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a shared scan (no readable scan.h5")
    independent = tmp_path / "independent"
    shutil.copytree(shared, independent)
    data = read_dataset(independent / "scan.h5")
    data.attrs["train"] = "independent"
    write_dataset(independent / "scan.h5", data)
    refused(independent, "not a shared scan (its scan.train is 'independent')")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(shared, unfinished)
    shutil.rmtree(unfinished / "geom-0000")
    refused(unfinished, "its shared training has not finished (step 4)")
    no_model = tmp_path / "no_model"
    shutil.copytree(shared, no_model)
    for name in (io.CHECKPOINT, io.PREVIOUS_CHECKPOINT):
        (no_model / "shared" / name).unlink()
    refused(no_model, "holds no shared training")


def test_a_geometry_that_cannot_be_aligned_is_one_line_exit_2(
    shared, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(orbital_alignment, "MIN_OVERLAP", 0.9999)
    assert _scan(tmp_path, NEW.replace("[1.7]", "[4.0]"), "o", shared) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the orbitals of geometry 0 cannot be aligned with those of its shared geometry 1" in err


def test_options_that_do_not_go_with_from_are_one_line_exit_2(shared, tmp_path, capsys):
    assert _scan(tmp_path, NEW, "o", shared, "--cold") == 2
    assert "--cold and --from" in capsys.readouterr().err
    independent = NEW.replace('train = "shared"\n', "")
    path = tmp_path / "independent.toml"
    path.write_text(independent)
    assert main(["scan", str(path), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'only used with scan.train = "shared" or --from' in err


def test_a_geometry_in_another_frame_is_one_line_exit_2(shared, tmp_path, capsys):
    """The same H2 along x instead of z: the nearest shared geometry by shape is found, and
    the turn of 90 degrees against it is refused rather than aligned in the wrong frame."""
    turned = NEW.replace("H 0 0 0\nH 0 0 1.4", "H 0 0 0\nH 1.4 0 0")
    assert turned != NEW
    assert _scan(tmp_path, turned, "o", shared) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "geometry 0 is turned by 90 degrees against shared geometry 1" in err, err


def test_the_nearest_shared_geometry_is_the_nearest_in_shape():
    """A shifted copy of one geometry is nearest to it, not to a closer-placed other one;
    the superposition angle sees turns, not shifts or stretches."""
    from nnqmc.pes.shared_from import SharedModel, superposition_angle

    model = SharedModel.__new__(SharedModel)
    model.dataset = type("D", (), {})()
    model.dataset.positions = np.array([[[0, 0, 0], [0, 0, 1.2]], [[0, 0, 0], [0, 0, 2.0]]])
    assert SharedModel.n.fget(model) == 2
    assert model.nearest(np.array([[0, 0, -0.85], [0, 0, 0.85]])) == 1
    assert model.nearest(np.array([[5, 5, 5], [5, 5, 6.1]])) == 0
    x = np.array([[0.0, 0, 0], [0, 0, 1.4], [1.1, 0, -0.4]])
    turn = np.radians(30)
    rz = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    assert abs(superposition_angle(x, x @ rz.T + 2.0) - 30.0) < 1e-6
    assert superposition_angle(x, 1.1 * x) < 1e-4
