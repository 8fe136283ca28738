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
