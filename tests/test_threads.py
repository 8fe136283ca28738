from threadpoolctl import threadpool_info

from nnqmc.threads import single_threaded_blas


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_runs_on_one_thread_inside_and_keeps_its_threads_outside():
    before = _blas_threads()
    assert before, "no BLAS library loaded: SciPy's OpenBLAS should be (nnqmc.threads)"

    @single_threaded_blas
    def inside(x: int) -> list[int]:
        return _blas_threads() + [x]

    assert inside(7) == [1] * len(before) + [7]
    assert _blas_threads() == before


def test_long_running_entry_points_limit_blas():
    """Training, evaluation and the benchmark run under :data:`single_threaded_blas`."""
    from nnqmc import api, bench

    for fn in (api.train, api.evaluate, bench.benchmark):
        assert hasattr(fn, "__wrapped__"), fn.__name__


def test_cpu_backend_expected_from_platforms_and_plugins():
    from nnqmc.backend import cpu_backend_expected

    assert cpu_backend_expected({}, ["numpy", "jax", "jaxlib"])
    assert not cpu_backend_expected({}, ["jax", "jax-cuda12-plugin"])
    assert cpu_backend_expected({"JAX_PLATFORMS": "cpu"}, ["jax-cuda12-plugin"])
    assert not cpu_backend_expected({"JAX_PLATFORMS": "cuda,cpu"}, [])
    assert cpu_backend_expected(), "this test machine has no accelerator plugin"
