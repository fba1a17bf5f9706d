"""ops/blas_threads.py: the BLAS thread count asked for on a worker thread is the one its GEMMs
use, so a GEMM gives the same numbers on any thread (the server computes on a worker thread)."""

from __future__ import annotations

import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from tinyembed.engine.ops.blas_threads import BlasThreads


def on_a_thread(fn):
    box = []
    worker = threading.Thread(target=lambda: box.append(fn()))
    worker.start()
    worker.join(60)
    return box[0]


def blas_counts() -> list[int]:
    return [c.get_num_threads() for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]


def gemm_with(threads: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 384), np.float32)
    w = rng.standard_normal((384, 1536), np.float32)
    BlasThreads().set(threads)
    return x @ w


def test_a_worker_thread_gets_the_count_it_sets():
    blas = BlasThreads()

    def set_then_read(n):
        blas.set(n)
        return blas_counts()

    assert set(on_a_thread(lambda: set_then_read(1))) == {1}
    assert set(on_a_thread(lambda: set_then_read(2))) == {2}


def test_a_gemm_gives_the_same_numbers_on_any_thread():
    for threads in (1, 2):
        main = gemm_with(threads)
        np.testing.assert_array_equal(on_a_thread(lambda: gemm_with(threads)), main)


def test_limited_restores_the_previous_count():
    blas = BlasThreads()

    def inside_and_after():
        blas.set(2)
        with blas.limited(1):
            inside = blas_counts()
        return inside, blas_counts()

    inside, after = on_a_thread(inside_and_after)
    assert set(inside) == {1} and set(after) == {2}
