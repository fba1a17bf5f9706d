"""Each decoder C kernel (kernels/cpu/decoder_*.c, fast and naive) against its numpy twin
(ops/numpy_decoder.py) and a float64 formula written the obvious way, on fresh random inputs with
odd widths, outputs poisoned with NaN so every element must be written.

Bounds (max abs error, float32 inputs of unit scale): norms and RoPE 2e-6 relative to the row
scale; gated activations 2e-6 * max(1, |g u|); attention 4e-6 against float64 (lengths 1..1038,
every mask kind; outputs up to ~3) and 1e-5 against the numpy twin at 8192 tokens; pooling 1e-6; bf16 exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyembed.engine.checkpoints.bf16 import bf16_to_float32, float32_to_bf16
from tinyembed.engine.ops.c_ops import COps
from tinyembed.engine.ops.numpy_decoder import rope_table
from tinyembed.engine.ops.numpy_ops import NumpyOps

from test_ops_c import _library
from test_ops_decoder import dense_attention


@pytest.fixture(scope="module", params=["fast", "naive"])
def ops(request):
    c = COps(_library(), threads=2, naive=request.param == "naive")
    c._buffer = lambda rows, cols: np.full((rows, cols), np.nan, np.float32)  # poisoned outputs
    return c


@pytest.fixture(scope="module")
def twin():
    return NumpyOps(threads=2)


def normal(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def rms64(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("rows,width", [(1, 1), (3, 7), (37, 385), (130, 1024)])
def test_rmsnorm_and_add_rmsnorm(ops, twin, rows, width):
    x, y, w = normal((rows, width), 1, 3.0), normal((rows, width), 2), normal(width, 3)
    out = ops.rmsnorm(x, w, 1e-6)
    assert np.abs(out - rms64(x, w, 1e-6)).max() < 2e-6 * max(1.0, np.abs(w).max())
    assert np.abs(out - twin.rmsnorm(x, w, 1e-6)).max() < 2e-6 * max(1.0, np.abs(w).max())
    residual, delta = x.copy(), y.copy()
    got, new_residual = ops.add_rmsnorm(delta, residual, w, 1e-5)
    assert got is delta and new_residual is residual
    np.testing.assert_allclose(residual, x + y, rtol=0, atol=0)  # the add is one float32 add
    assert np.abs(got - rms64(x + y, w, 1e-5)).max() < 2e-6 * max(1.0, np.abs(w).max())


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 2, 16), (3, 1, 10), (16, 8, 128)])
def test_head_rmsnorm_leaves_v_alone(ops, heads, kv_heads, d):
    rows = 29
    qkv = normal((rows, (heads + 2 * kv_heads) * d), 4, 2.0)
    q_w, k_w = normal(d, 5), normal(d, 6)
    want = qkv.astype(np.float64).reshape(rows, -1, d)
    want[:, :heads] = rms64(want[:, :heads], q_w, 1e-6)
    want[:, heads:heads + kv_heads] = rms64(want[:, heads:heads + kv_heads], k_w, 1e-6)
    got = ops.head_rmsnorm(qkv.copy(), q_w, k_w, heads, kv_heads, 1e-6)
    assert np.abs(got - want.reshape(rows, -1)).max() < 4e-6


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 2, 16), (2, 2, 6), (16, 8, 128)])
def test_rope_rotates_q_and_k_from_the_table(ops, twin, heads, kv_heads, d):
    rows, positions = 41, 5000
    cos, sin = rope_table(10000.0, d, positions)
    qkv = normal((rows, (heads + 2 * kv_heads) * d), 7)
    pos = np.random.default_rng(8).integers(0, positions, rows).astype(np.int32)
    half = d // 2
    x = qkv.astype(np.float64).reshape(rows, -1, d)
    c, s = cos[pos].astype(np.float64)[:, None], sin[pos].astype(np.float64)[:, None]
    want = x.copy()
    rot = slice(0, heads + kv_heads)
    want[:, rot, :half] = x[:, rot, :half] * c - x[:, rot, half:] * s
    want[:, rot, half:] = x[:, rot, half:] * c + x[:, rot, :half] * s
    got = ops.rope(qkv.copy(), pos, cos.ravel(), sin.ravel(), heads, kv_heads)
    assert np.abs(got - want.reshape(rows, -1)).max() < 2e-6
    assert np.abs(got - twin.rope(qkv.copy(), pos, cos.ravel(), sin.ravel(), heads, kv_heads)).max() < 1e-6


def test_rope_refuses_a_position_past_the_table(ops):
    cos, sin = rope_table(10000.0, 8, 16)
    with pytest.raises(IndexError, match="rotary table"):
        ops.rope(normal((2, 32), 1), np.array([3, 16], np.int32), cos.ravel(), sin.ravel(), 2, 1)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("rows,half", [(1, 1), (5, 33), (70, 3072)])
def test_gated_activation(ops, twin, activation, rows, half):
    gate_up = normal((rows, 2 * half), 9, 4.0)
    gate_up[0, :min(half, 4)] = [-100.0, 100.0, 1e-4, -3e-3][:min(half, 4)]  # exp and tanh edges
    g, u = gate_up[:, :half].astype(np.float64), gate_up[:, half:].astype(np.float64)
    if activation == "silu":
        act = g / (1.0 + np.exp(-g))
    else:
        act = 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
    want = act * u
    got = ops.gated_activation(gate_up.copy(), activation)
    assert got.shape == (rows, half) and got.flags.c_contiguous
    assert np.all(np.abs(got - want) <= 2e-6 * np.maximum(1.0, np.abs(want)))
    twin_out = twin.gated_activation(gate_up.copy(), activation)  # the twin is within 3e-6 itself
    assert np.all(np.abs(got - twin_out) <= 5e-6 * np.maximum(1.0, np.abs(want)))


MASKS = [(True, None, None), (True, 50, None), (True, 7, 2.0), (True, 1, None), (False, None, None), (False, None, 1.5)]


@pytest.mark.parametrize("causal,window,softcap", MASKS)
@pytest.mark.parametrize("heads,kv_heads,d", [(4, 2, 16), (2, 1, 64), (2, 2, 128), (2, 1, 256), (3, 3, 10)])
def test_decoder_attention_matches_dense_float64(ops, causal, window, softcap, heads, kv_heads, d):
    cu = np.array([0, 1, 2, 9, 72, 339], dtype=np.int32)  # lengths 1, 1, 7, 63, 267
    qkv = normal((int(cu[-1]), (heads + 2 * kv_heads) * d), 10)
    scale = d ** -0.5
    want = dense_attention(qkv, cu, heads, kv_heads, scale, causal, window, softcap)
    got = ops.decoder_attention(qkv, cu, heads, kv_heads, scale, causal, window, softcap)
    assert np.abs(got - want).max() < 2e-6


def test_decoder_attention_lengths_1_to_1038(ops):
    lengths = [1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 129, 1038]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    qkv = normal((int(cu[-1]), (4 + 2 * 2) * 32), 11)
    want = dense_attention(qkv, cu, 4, 2, 32 ** -0.5, True, 100, 30.0)
    got = ops.decoder_attention(qkv, cu, 4, 2, 32 ** -0.5, True, 100, 30.0)
    assert np.abs(got - want).max() < 4e-6


def test_decoder_attention_large_logits(ops):
    cu = np.array([0, 300], dtype=np.int32)
    qkv = normal((300, 4 * 64), 12, 4.0)  # scores of scale 16 x 8: the online max must hold
    want = dense_attention(qkv, cu, 2, 1, 64 ** -0.5, True, None, None)
    got = ops.decoder_attention(qkv, cu, 2, 1, 64 ** -0.5, True, None, None)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("window", [None, 4096])
def test_decoder_attention_8192_tokens_matches_the_twin(twin, window):
    ops = COps(_library(), threads=2)  # fast only: the naive kernel is scalar L^2 d
    cu = np.array([0, 5, 8197], dtype=np.int32)
    qkv = normal((8197, (2 + 2 * 1) * 64), 13)
    got = ops.decoder_attention(qkv, cu, 2, 1, 0.125, True, window, None)
    want = twin.decoder_attention(qkv, cu, 2, 1, 0.125, True, window, None)
    assert np.isfinite(got).all() and np.abs(got - want).max() < 1e-5


def test_decoder_attention_refuses_head_dim_over_256(ops):
    qkv = normal((3, 3 * 264), 14)
    with pytest.raises(MemoryError, match="head_dim 264"):
        ops.decoder_attention(qkv, np.array([0, 3], np.int32), 1, 1, 0.1, True)


def test_last_token_and_l2_normalize(ops, twin):
    hidden = normal((50, 333), 15)
    cu = np.array([0, 1, 20, 50], dtype=np.int32)
    last = ops.last_token(hidden, cu)
    np.testing.assert_array_equal(last, hidden[[0, 19, 49]])
    unit = ops.l2_normalize(last)
    want = last.astype(np.float64) / np.linalg.norm(last.astype(np.float64), axis=1, keepdims=True)
    assert np.abs(unit - want).max() < 1e-6 and unit is not last
    zero = ops.l2_normalize(np.zeros((1, 5), np.float32))
    assert np.array_equal(zero, np.zeros((1, 5)))  # norm clamped at 1e-12: no NaN


def test_bf16_rounding_is_nearest_even():
    exact = np.array([1.0, -2.5, 0.0, -0.0, np.inf, -np.inf], np.float32)
    assert np.array_equal(bf16_to_float32(float32_to_bf16(exact)), exact)
    one = np.float32(1.0).view(np.uint32)
    halfway = np.array([one + 0x8000, one + 0x18000, one + 0x8001, one + 0x7FFF], np.uint32).view(np.float32)
    got = float32_to_bf16(halfway)
    assert got.tolist() == [0x3F80, 0x3F82, 0x3F81, 0x3F80]  # ties to even, above rounds up, below down
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], np.float32))))[0]
    x = normal(10000, 16, 10.0)
    back = bf16_to_float32(float32_to_bf16(x)).astype(np.float64)
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -8)  # half an ulp of an 8-bit mantissa


def test_widen_bf16_and_bf16_embedding(ops, twin):
    parts = [float32_to_bf16(normal((n, 37), 17 + n)) for n in (5, 3, 3)]
    got = ops.widen_bf16(parts)
    want = np.concatenate([bf16_to_float32(p) for p in parts]).T
    assert got.shape == (37, 11) and np.array_equal(got, want)
    assert np.array_equal(twin.widen_bf16(parts), want)
    table = float32_to_bf16(normal((20, 19), 18))
    ids = np.array([0, 19, 7, 7], np.int32)
    for scale in (None, np.float32(math.sqrt(19))):
        want = twin.embedding(ids, table, scale)
        assert np.array_equal(ops.embedding(ids, table, scale), want)
        assert np.array_equal(want, bf16_to_float32(table[ids]) * (scale or np.float32(1.0)))
    with pytest.raises(IndexError):
        ops.embedding(np.array([20], np.int32), table)


@pytest.mark.parametrize("rows,k,outs", [(1, 2, [1]), (33, 64, [9, 3]), (70, 130, [16, 8, 8]), (257, 1024, [40])])
def test_bf16_matmul(ops, twin, rows, k, outs):
    x = normal((rows, k), 19)
    parts = [float32_to_bf16(normal((n, k), 20 + n, 0.05)) for n in outs]
    got = ops.bf16_matmul(x, parts)
    xr = bf16_to_float32(float32_to_bf16(x)).astype(np.float64)
    want = xr @ np.concatenate([bf16_to_float32(p) for p in parts]).astype(np.float64).T
    bound = 1e-6 * np.sqrt(k) * np.abs(xr).max() * 0.25 + 1e-7  # float32 sums of exact products
    assert got.shape == want.shape and np.abs(got - want).max() < bound
    assert np.abs(twin.bf16_matmul(x, parts) - want).max() < bound


def test_bf16_matmul_without_avx512_bf16_widens_and_runs_blas(twin):
    ops = COps(_library(), threads=2)
    ops._bf16_gemm = False  # what a build without AVX512_BF16 settles on after its first call
    x, parts = normal((45, 64), 21), [float32_to_bf16(normal((24, 64), 22, 0.05))]
    np.testing.assert_allclose(ops.bf16_matmul(x, parts), twin.bf16_matmul(x, parts), atol=1e-5)
