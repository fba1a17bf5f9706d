"""The packed float32 GEMM (kernels/cpu/gemm_packed.c, fast and naive) against its numpy twin:
odd shapes (widths that are not multiples of the 16-column panel or the 6-row tile), poisoned
outputs, only the asked row range written, and its epilogues against NumpyOps' ops.

Bounds: against float64, the rigorous one for a float32 sum of K products in any order,
|error| <= K * 2^-24 * (|x| @ |w|) per output (a wrong layout or a missed row is off by O(1));
against the numpy twin (BLAS, another order) twice that. Epilogues: 1e-5 against NumpyOps.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine.ops.c_int8 import pack_f32
from tinyembed.engine.ops.c_ops import COps
from tinyembed.engine.ops.numpy_ops import NumpyOps

from test_ops_c import _library, _poisoned

SHAPES = [(1, 1, 1), (5, 37, 45), (6, 384, 1152), (13, 17, 16), (7, 64, 17), (97, 129, 33), (200, 385, 400)]


@pytest.fixture(scope="module", params=["fast", "naive"])
def ops(request):
    c = COps(_library(), threads=2, naive=request.param == "naive")
    c._buffer = _poisoned
    return c


def _gemm(ops, x, packed, bias, epilogue, begin, end):
    y = np.full((x.shape[0], packed.n), np.nan, np.float32)
    fn = ops._fn["gemm_f32_packed"]
    fn(x.ctypes.data, packed.f32.ctypes.data, None if bias is None else bias.ctypes.data, y.ctypes.data,
       packed.k, packed.n, epilogue, begin, end)
    return y


def test_pack_f32_layout_is_panels_of_16_columns():
    w = np.arange(5 * 20, dtype=np.float32).reshape(5, 20)
    packed = pack_f32(w)
    assert packed.f32.shape == (2, 5, 16)
    np.testing.assert_array_equal(packed.f32[1, :, :4], w[:, 16:])
    assert not packed.f32[1, :, 4:].any()  # padding columns are zero


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_gemm_f32_packed_matches_the_numpy_twin(ops, rows, k, n):
    r = np.random.default_rng()
    x, w = r.standard_normal((rows, k), np.float32), r.standard_normal((k, n), np.float32)
    y = ops.matmul(x, pack_f32(w))
    reference = x.astype(np.float64) @ w
    bound = k * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w)) + 1e-12
    assert (np.abs(y - reference) <= bound).all()
    assert (np.abs(y - NumpyOps(1).matmul(x, w)) <= 2 * bound).all()


def test_only_the_asked_rows_are_written(ops):
    r = np.random.default_rng()
    x, w = r.standard_normal((40, 50), np.float32), r.standard_normal((50, 70), np.float32)
    y = _gemm(ops, x, pack_f32(w), None, 0, 7, 29)
    assert np.isnan(y[:7]).all() and np.isnan(y[29:]).all()
    assert not np.isnan(y[7:29]).any()


def test_epilogues_match_linear_and_bias_gelu(ops):
    r = np.random.default_rng()
    twin = NumpyOps(1)
    x, w = r.standard_normal((33, 70), np.float32), r.standard_normal((70, 99), np.float32) * 0.3
    b = r.standard_normal(99).astype(np.float32)
    packed = pack_f32(w)
    linear = ops.linear(x, packed, b).copy()
    assert np.abs(linear - twin.linear(x, w, b)).max() <= 1e-5
    gelu = _gemm(ops, x, packed, b, 2, 0, 33)
    assert np.abs(gelu - twin.bias_gelu(twin.matmul(x, w), b)).max() <= 1e-5


def test_rows_split_over_threads_give_the_same_bits():
    r = np.random.default_rng()
    x, w = r.standard_normal((3000, 96), np.float32), r.standard_normal((96, 200), np.float32)
    packed = pack_f32(w)
    one, two = COps(_library(), threads=1), COps(_library(), threads=2)
    assert np.array_equal(one.matmul(x, packed), two.matmul(x, packed))


def test_wrong_inner_size_is_refused(ops):
    with pytest.raises(ValueError):
        ops.matmul(np.zeros((3, 5), np.float32), pack_f32(np.zeros((6, 4), np.float32)))
