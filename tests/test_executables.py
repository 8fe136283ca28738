"""Traced steps stored on disk (nnqmc.executables): a later process loads them
instead of tracing, and nothing stale, damaged or unstorable is ever run from disk."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnqmc import executables
from nnqmc.executables import SUFFIX, StoredProgram


def _step(g, state, lr):
    """A pmapped step shaped like nnqmc's: broadcast geometry, a collective, a factorization."""
    a = state["a"]
    s = a @ a.T + g * jnp.eye(a.shape[0])
    mean = jax.lax.pmean(jnp.sum(jnp.linalg.cholesky(s)), "d")
    return {"a": state["a"] * lr + mean}, mean


def _args():
    a = np.arange(9.0).reshape(1, 3, 3) / 10
    return jnp.float64(2.0), {"a": jnp.asarray(a)}, jnp.float64(0.5)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(executables, "store_directory", lambda *a: tmp_path)
    return tmp_path


def _pmapped(fn=_step):
    return jax.pmap(fn, axis_name="d", in_axes=(None, 0, None))


def test_a_second_program_with_the_same_key_loads_the_traced_step_and_agrees_bitwise(store):
    first = StoredProgram(_pmapped(), ("h2", "train"))
    out = first(*_args())
    assert len(list(store.glob(f"*{SUFFIX}"))) == 1
    loaded = executables.loaded()
    again = StoredProgram(_pmapped(), ("h2", "train"))
    out_again = again(*_args())
    assert executables.loaded() == loaded + 1
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(out_again), strict=True):
        np.testing.assert_array_equal(x, y)
    state, _ = out_again
    again(_args()[0], state, _args()[2])  # its own outputs back in: same executable
    assert executables.loaded() == loaded + 1


def test_another_key_or_other_shapes_trace_their_own(store):
    StoredProgram(_pmapped(), ("h2", "train"))(*_args())
    loaded = executables.loaded()
    StoredProgram(_pmapped(), ("lih", "train"))(*_args())
    g, state, lr = _args()
    StoredProgram(_pmapped(), ("h2", "train"))(g, {"a": state["a"][:, :2]}, lr)
    assert executables.loaded() == loaded
    assert len(list(store.glob(f"*{SUFFIX}"))) == 3


def test_a_damaged_file_is_traced_anew_and_replaced(store):
    expected = StoredProgram(_pmapped(), ("h2", "train"))(*_args())
    (path,) = store.glob(f"*{SUFFIX}")
    path.write_bytes(b"not an executable")
    loaded = executables.loaded()
    out = StoredProgram(_pmapped(), ("h2", "train"))(*_args())
    assert executables.loaded() == loaded
    np.testing.assert_array_equal(out[1], expected[1])
    assert path.read_bytes() != b"not an executable"


def test_a_stored_step_that_cannot_compile_for_these_arguments_is_traced_anew(store):
    """A file that deserializes but whose module does not fit the arguments (here: another
    step's, for other shapes) fails while it is compiled on load, not at the first call."""
    g, state, lr = _args()
    StoredProgram(_pmapped(), ("h2", "train"))(g, state, lr)
    (good,) = store.glob(f"*{SUFFIX}")
    small = {"a": state["a"][:, :2]}
    program = StoredProgram(_pmapped(), ("h2", "train"))
    leaves, tree = jax.tree_util.tree_flatten((g, small, lr))
    target = program._path(executables._signature(leaves, tree))
    target.write_bytes(good.read_bytes())
    loaded = executables.loaded()
    out = program(g, small, lr)
    assert executables.loaded() == loaded
    assert target.read_bytes() != good.read_bytes()  # replaced by its own trace
    expected = StoredProgram(_pmapped(), None)(g, small, lr)
    np.testing.assert_array_equal(out[1], expected[1])


def test_steps_with_host_callbacks_or_without_a_key_are_not_stored(store):
    def with_callback(g, state, lr):
        new, mean = _step(g, state, lr)
        shape = jax.ShapeDtypeStruct((), mean.dtype)
        return new, mean + jax.pure_callback(lambda x: np.zeros((), x.dtype), shape, mean)

    program = StoredProgram(_pmapped(with_callback), ("h2", "poisoned"))
    out = program(*_args())
    StoredProgram(_pmapped(), None)(*_args())
    assert np.isfinite(out[1]).all()
    assert list(program._calls.values()) == [program.fn]  # the plain step, not an export
    assert not list(store.glob(f"*{SUFFIX}"))


def test_under_disable_jit_the_step_is_called_as_it_is(store):
    program = StoredProgram(_pmapped(), ("h2", "train"))
    with jax.disable_jit():
        program(*_args())
    assert not program._calls and not list(store.glob(f"*{SUFFIX}"))


def test_without_serialization_a_stored_file_is_kept_not_deleted(store, monkeypatch):
    expected = StoredProgram(_pmapped(), ("h2", "train"))(*_args())
    (path,) = store.glob(f"*{SUFFIX}")
    data = path.read_bytes()

    def no_flatbuffers(*args, **kwargs):
        raise ImportError("No module named 'flatbuffers'")

    monkeypatch.setattr(jax.export, "deserialize", no_flatbuffers)
    monkeypatch.setattr(jax.export.Exported, "serialize", no_flatbuffers)
    loaded = executables.loaded()
    out = StoredProgram(_pmapped(), ("h2", "train"))(*_args())
    assert executables.loaded() == loaded
    np.testing.assert_array_equal(out[1], expected[1])
    assert path.read_bytes() == data


def test_the_store_follows_its_switch_and_the_compilation_cache(tmp_path):
    where = executables.store_directory
    assert where({}, str(tmp_path)) == tmp_path / "executables"
    assert where({"NNQMC_EXECUTABLES": "on"}, str(tmp_path)) == tmp_path / "executables"
    assert where({"NNQMC_EXECUTABLES": "off"}, str(tmp_path)) is None
    assert where({}, "") is None  # compilation cache off


def test_the_least_recently_used_files_go_first(tmp_path):
    for k in range(5):
        path = tmp_path / f"{k}{SUFFIX}"
        path.write_bytes(b"x")
        os.utime(path, (k, k))
    executables._prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob(f"*{SUFFIX}")) == [f"3{SUFFIX}", f"4{SUFFIX}"]


def test_inside_a_trace_the_step_is_called_as_it_is_and_nothing_is_kept(store):
    program = StoredProgram(_pmapped(), ("h2", "train"))
    shapes = jax.eval_shape(program, *_args())
    assert shapes[1].shape == (1,)
    assert not program._calls and not list(store.glob(f"*{SUFFIX}"))
    program(*_args())
    assert len(program._calls) == 1 and len(list(store.glob(f"*{SUFFIX}"))) == 1


def test_the_bench_calls_a_first_step_from_the_store_a_load(store):
    """``nnqmc bench``'s first step costs ``compile_seconds`` where its program was traced
    and compiled, ``load_seconds`` where it came from the store; the table says which."""
    from pathlib import Path

    from nnqmc import api, bench, programs
    from nnqmc.config import load_config

    h2 = Path(__file__).parent.parent / "systems" / "h2.toml"
    tiny = ["system.basis=sto-3g", "ansatz.kind=jastrow", "train.optimizer=adam"]
    run = api.prepare(load_config(h2, [*tiny, "train.walkers=8"]))
    key = jax.random.PRNGKey(0)
    params, r = run.ansatz.init(key), api.initial_walkers(run, key, 8)
    rows = []
    for _ in range(2):
        programs.clear()  # a new process's programs: the second finds the stored step
        rows.append(bench.time_steps(run, run.optimizer(), params, r, 1, 1, key))
    assert set(rows[0]) & set(bench.FIRST_STEP) == {"compile_seconds"}
    assert set(rows[1]) & set(bench.FIRST_STEP) == {"load_seconds"}
    scaling = [{**row, "speedup": 1.0} for row in rows]
    table = bench.format_table({"system": "h2", "scaling": scaling})
    assert "(compile)" in table and "(load)" in table
