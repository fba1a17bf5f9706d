"""The numpy ops against float64 textbook formulas: they are the reference for every kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyembed.engine.ops.numpy_ops import NumpyOps


@pytest.fixture(scope="module")
def ops():
    return NumpyOps(threads=2)


def test_gelu_is_exact_erf_gelu_to_float32_precision(ops):
    rng = np.random.default_rng(1)
    y = (rng.standard_normal((257, 1536)) * 4).astype(np.float32)
    y[0, :8] = [-1e4, 1e4, -8.0, 8.0, -8.01, 8.01, 0.0, 1e-30]
    bias = rng.standard_normal(1536).astype(np.float32)
    x = y.astype(np.float64) + bias
    reference = x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    out = ops.bias_gelu(y.copy(), bias)
    assert np.abs(out - reference).max() <= 5e-7 * np.maximum(1.0, np.abs(reference)).max()
    assert np.abs(out - reference).max() < 1e-3  # absolute, dominated by the 1e4 entry's ulp


def _attention_reference(qkv, cu, heads):
    out = np.zeros((qkv.shape[0], qkv.shape[1] // 3))
    h = qkv.shape[1] // 3
    d = h // heads
    for a, b in zip(cu[:-1], cu[1:]):
        q, k, v = (qkv[a:b, i * h:(i + 1) * h].astype(np.float64).reshape(b - a, heads, d) for i in range(3))
        s = np.einsum("lhd,mhd->hlm", q, k) / math.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[a:b] = np.einsum("hlm,mhd->lhd", p, v).reshape(b - a, h)
    return out


@pytest.mark.parametrize("scale", [0.5, 4.0])  # 4: logits past the no-shift bound (gaps > 80)
@pytest.mark.parametrize("heads,head_dim", [(12, 32), (4, 64), (2, 128)])
def test_varlen_attention(ops, scale, heads, head_dim):
    rng = np.random.default_rng(2)
    lengths = [1, 7, 64, 65, 3, 130]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    qkv = (rng.standard_normal((cu[-1], 3 * heads * head_dim)) * scale).astype(np.float32)
    out = ops.attention(qkv, cu, max(lengths), heads)
    reference = _attention_reference(qkv, cu, heads)
    assert np.isfinite(out).all()
    assert np.abs(out - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_long_sequence_attention_runs_in_query_blocks(ops, monkeypatch):
    import tinyembed.engine.ops.numpy_ops as ops_numpy

    monkeypatch.setattr(ops_numpy, "_MAX_SCORES", 4 * 300 * 7)  # 7 query rows per block
    rng = np.random.default_rng(5)
    cu = np.array([0, 300, 301], dtype=np.int32)
    qkv = rng.standard_normal((301, 3 * 4 * 16)).astype(np.float32)
    out = ops.attention(qkv, cu, 300, 4)
    assert np.abs(out - _attention_reference(qkv, cu, 4)).max() <= 1e-5


def test_bias_residual_layernorm(ops):
    rng = np.random.default_rng(3)
    y, res = rng.standard_normal((2, 300, 384)).astype(np.float32) * 3
    b, w, beta = rng.standard_normal((3, 384)).astype(np.float32)
    x = y.astype(np.float64) + b + res
    reference = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-12) * w + beta
    out = ops.bias_residual_layernorm(y.copy(), b, res, w, beta, 1e-12)
    assert np.abs(out - reference).max() <= 1e-5


@pytest.mark.parametrize("mode", ["cls", "mean", "last"])
def test_pool_normalize(ops, mode):
    rng = np.random.default_rng(4)
    cu = np.array([0, 1, 5, 12], dtype=np.int32)
    hidden = rng.standard_normal((12, 16)).astype(np.float32)
    pick = {"cls": lambda a, b: hidden[a], "last": lambda a, b: hidden[b - 1],
            "mean": lambda a, b: hidden[a:b].astype(np.float64).mean(0)}[mode]
    reference = np.stack([pick(a, b) for a, b in zip(cu[:-1], cu[1:])])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(ops.pool_normalize(hidden, cu, mode), reference, atol=1e-6)
