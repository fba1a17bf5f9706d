"""Each C kernel (kernels/cpu/*.c, fast and naive) against its numpy twin and float64 formulas,
on fresh random inputs with widths that are not multiples of the vector width, and outputs
poisoned with NaN first so that every element must be written.

Bounds (max abs error), float32 inputs of unit scale unless said:
  embed, bias_residual_layernorm   1e-5    (sums in another order; outputs ~N(0,1) * w + b)
  bias_gelu                        4e-7 * max(1, |x|) against float64 erf (~1 ulp)
  attention                        2e-6 against float64 for logits of unit scale; 1e-4 relative
                                   for logits 16x larger (the numpy twin's own bound)
  pool_normalize                   1e-6
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tinyembed.engine.build import cpu_compile as cpu_build
from tinyembed.engine.ops.c_ops import COps, SIGNATURES, NAIVE
from tinyembed.engine.ops.numpy_ops import NumpyOps

from test_ops_numpy import _attention_reference  # the float64 textbook formula


def _library():
    try:
        return cpu_build.load(tuple(SIGNATURES) + tuple(NAIVE.values()))[0]
    except cpu_build.CpuBuildError as exc:
        if os.environ.get("CI"):
            raise  # CI installs a compiler: the C path must run there
        pytest.skip(f"C kernels unavailable: {exc}")


@pytest.fixture(scope="module", params=["fast", "naive"])
def ops(request):
    c = COps(_library(), threads=2, naive=request.param == "naive")
    c._buffer = lambda rows, cols: np.full((rows, cols), np.nan, np.float32)  # poisoned outputs
    c._new_output = c._buffer
    return c


@pytest.fixture(scope="module")
def twin():
    return NumpyOps(threads=2)


def rng(seed=None):
    return np.random.default_rng(seed)


def test_embed(ops, twin):
    r = rng()
    vocab, positions, width, tokens = 101, 67, 385, 613
    word, position = r.standard_normal((vocab, width), np.float32), r.standard_normal((positions, width), np.float32)
    type0, ln_w, ln_b = r.standard_normal((3, width), np.float32)
    ids = r.integers(0, vocab, tokens).astype(np.int32)
    pos = r.integers(0, positions, tokens).astype(np.int32)
    out = ops.embed(ids, pos, word, position, type0, ln_w, ln_b, 1e-12)
    expected = twin.embed(ids, pos, word, position, type0, ln_w, ln_b, 1e-12)
    assert np.abs(out - expected).max() <= 1e-5


def test_embed_rejects_ids_outside_the_table(ops):
    word = np.zeros((10, 8), np.float32)
    ones = np.ones(8, np.float32)
    with pytest.raises(IndexError):
        ops.embed(np.array([3, 10], np.int32), np.array([0, 1], np.int32), word, word, ones, ones, ones, 1e-12)


@pytest.mark.parametrize("rows,width", [(1, 1), (5, 37), (257, 1537)])
def test_bias_gelu(ops, twin, rows, width):
    r = rng()
    y = (r.standard_normal((rows, width)) * 4).astype(np.float32)
    y.flat[:8] = [-1e4, 1e4, -8.0, 8.0, -0.92, 0.93, 0.0, 1e-30][: y.size]
    bias = r.standard_normal(width).astype(np.float32)
    x = y.astype(np.float64) + bias.astype(np.float32)
    reference = x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    out = ops.bias_gelu(y.copy(), bias)
    assert (np.abs(out - reference) <= 4e-7 * np.maximum(1.0, np.abs(x))).all()
    assert np.abs(out - twin.bias_gelu(y.copy(), bias)).max() <= 4e-7 * max(1.0, np.abs(x).max())


def test_linear_adds_the_bias_after_the_gemm(ops):
    r = rng()
    x, w = r.standard_normal((33, 45), np.float32), r.standard_normal((45, 99), np.float32)
    b = r.standard_normal(99).astype(np.float32)
    assert np.abs(ops.linear(x, w, b) - (x.astype(np.float64) @ w + b)).max() <= 1e-4


@pytest.mark.parametrize("rows,width", [(1, 7), (300, 385)])
def test_bias_residual_layernorm(ops, twin, rows, width):
    r = rng()
    y, res = r.standard_normal((2, rows, width), np.float32) * 3
    b, w, beta = r.standard_normal((3, width), np.float32)
    out = ops.bias_residual_layernorm(y.copy(), b, res, w, beta, 1e-12)
    assert np.abs(out - twin.bias_residual_layernorm(y.copy(), b, res, w, beta, 1e-12)).max() <= 1e-5


LENGTHS = [1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 511, 512, 777, 1024]


@pytest.mark.parametrize("heads,head_dim", [(12, 32), (4, 64), (3, 40)])
def test_attention_lengths_1_to_1024(ops, heads, head_dim):
    lengths = LENGTHS if not ops.naive else LENGTHS[:12]  # the scalar version is slow
    cu = np.concatenate([[0], np.cumsum(rng().permutation(lengths))]).astype(np.int32)
    qkv = rng().standard_normal((cu[-1], 3 * heads * head_dim), np.float32)
    out = ops.attention(qkv, cu, max(lengths), heads)
    assert np.abs(out - _attention_reference(qkv, cu, heads)).max() <= 2e-6


def test_attention_large_logits(ops, twin):
    cu = np.array([0, 5, 70, 200], np.int32)
    qkv = (rng().standard_normal((200, 3 * 4 * 64)) * 4).astype(np.float32)  # logits gaps >> 80
    reference = _attention_reference(qkv, cu, 4)
    out = ops.attention(qkv, cu, 130, 4)
    assert np.abs(out - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
    assert np.abs(out - twin.attention(qkv, cu, 130, 4)).max() <= 2e-4 * max(1.0, np.abs(reference).max())


def test_attention_long_sequence(ops):
    # Long enough to cross many key blocks; the scalar version gets a shorter one (3000 takes minutes).
    length = 1100 if ops.naive else 3000
    cu = np.array([0, length, length + 1], np.int32)
    qkv = rng().standard_normal((length + 1, 3 * 2 * 32), np.float32)
    out = ops.attention(qkv, cu, length, 2)
    assert np.abs(out - _attention_reference(qkv, cu, 2)).max() <= 2e-6


@pytest.mark.parametrize("mode", ["cls", "mean", "last"])
def test_pool_normalize(ops, twin, mode):
    cu = np.array([0, 1, 5, 12, 40], dtype=np.int32)
    hidden = rng().standard_normal((40, 389), np.float32)
    out = ops.pool_normalize(hidden, cu, mode)
    assert np.abs(out - twin.pool_normalize(hidden, cu, mode)).max() <= 1e-6
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_reused_buffers_never_alias_a_live_array():
    ops = COps(_library(), threads=1)
    first = ops._buffer(10, 4)
    second = ops._buffer(10, 4)
    assert not np.shares_memory(first, second)
    base_id = id(first.base)  # an id, not a reference: a reference would keep it in use
    del first
    again = ops._buffer(8, 4)  # the freed buffer comes back
    assert id(again.base) == base_id
    assert not np.shares_memory(ops._buffer(20, 4), again)  # in use, and too small anyway


def test_non_contiguous_input_is_refused():
    ops = COps(_library(), threads=1)
    y = np.zeros((4, 8), np.float32)[:, ::2]
    with pytest.raises(TypeError):
        ops.bias_gelu(y, np.zeros(4, np.float32))
