"""The numpy decoder ops against float64 references written the obvious way (dense attention
with an explicit mask, RoPE as a rotation of pairs), and RoPE's table against transformers'."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from tinyembed.engine.ops import numpy_decoder as ops_numpy_decoder
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.ops.numpy_decoder import rope_table

from engine_fixtures import FIXTURES


@pytest.fixture(scope="module")
def ops():
    return NumpyOps(2)


def dense_attention(qkv, cu, nh, nkv, scale, causal, window, softcap):
    """float64, one (L x L) score matrix per head, mask by explicit rule."""
    d = qkv.shape[1] // (nh + 2 * nkv)
    out = np.zeros((qkv.shape[0], nh * d))
    x = qkv.astype(np.float64)
    for a, b in zip(cu[:-1], cu[1:]):
        length = b - a
        q = x[a:b, :nh * d].reshape(length, nh, d)
        k = x[a:b, nh * d:(nh + nkv) * d].reshape(length, nkv, d)
        v = x[a:b, (nh + nkv) * d:].reshape(length, nkv, d)
        qi, ki = np.arange(length)[:, None], np.arange(length)[None, :]
        visible = np.ones((length, length), bool)
        if causal:
            visible &= ki <= qi
            if window:
                visible &= qi - ki < window
        for h in range(nh):
            kv = h // (nh // nkv)
            s = q[:, h] @ k[:, kv].T * scale
            if softcap:
                s = np.tanh(s / softcap) * softcap
            s = np.where(visible, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[a:b, h * d:(h + 1) * d] = (p / p.sum(axis=1, keepdims=True)) @ v[:, kv]
    return out


@pytest.mark.parametrize("causal,window,softcap", [
    (True, None, None), (True, 50, None), (True, 7, 2.0), (False, None, None), (False, None, 1.5)])
def test_attention_in_blocks_matches_dense(ops, monkeypatch, causal, window, softcap):
    # small blocks: several query blocks and key blocks per sequence, window edges inside blocks
    monkeypatch.setattr(ops_numpy_decoder, "_KEY_BLOCK", 64)
    monkeypatch.setattr(ops_numpy_decoder, "_MAX_SCORES", 4 * 48 * 64)
    rng = np.random.default_rng(0)
    nh, nkv, d = 4, 2, 16
    cu = np.array([0, 1, 38, 338, 1038], dtype=np.int32)
    qkv = rng.standard_normal((int(cu[-1]), (nh + 2 * nkv) * d)).astype(np.float32)
    scale = d ** -0.5 * 2.0
    got = ops.decoder_attention(qkv, cu, nh, nkv, scale, causal, window, softcap)
    want = dense_attention(qkv, cu, nh, nkv, scale, causal, window, softcap)
    assert np.abs(got - want).max() <= 2e-5


def test_attention_on_8k_tokens_holds_no_length_squared_buffer(ops):
    rng = np.random.default_rng(1)
    nh, nkv, d, length = 2, 1, 8, 8192
    qkv = rng.standard_normal((length, (nh + 2 * nkv) * d)).astype(np.float32)
    cu = np.array([0, length], dtype=np.int32)
    tracemalloc.start()
    got = ops.decoder_attention(qkv, cu, nh, nkv, d ** -0.5, True, None, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    dense_bytes = nh * length * length * 4
    assert peak < dense_bytes / 8, f"peak {peak / 2**20:.0f} MiB"
    # the last rows see all 8192 keys: check them against the dense rule
    rows = slice(length - 3, length)
    q = qkv[rows, :nh * d].astype(np.float64).reshape(3, nh, d)
    k = qkv[:, nh * d:(nh + 1) * d].astype(np.float64)
    v = qkv[:, (nh + 1) * d:].astype(np.float64)
    for r in range(3):
        visible = length - 3 + r + 1
        for h in range(nh):
            s = k[:visible] @ q[r, h] * d ** -0.5
            p = np.exp(s - s.max())
            want = p @ v[:visible] / p.sum()
            np.testing.assert_allclose(got[length - 3 + r, h * d:(h + 1) * d], want, atol=1e-5)


def test_rope_table_is_transformers_table():
    ref = np.load(FIXTURES / "rope_reference.npz")
    cos, sin = rope_table(float(ref["theta"]), int(ref["head_dim"]), int(ref["positions"].max()) + 1)
    # torch's vectorized pow is 1 ulp off in one frequency (37): 1e-6 at position 32767
    np.testing.assert_allclose(cos[ref["positions"]], ref["cos"], atol=2e-6)
    np.testing.assert_allclose(sin[ref["positions"]], ref["sin"], atol=2e-6)
    assert np.abs(cos[ref["positions"][:4]] - ref["cos"][:4]).max() <= 2e-7
    # float64 angles would not do: at 32767 they differ from transformers' by far more
    inv = 1.0 / 1e6 ** (np.arange(0, 128, 2) / 128)
    assert np.abs(np.cos(32767 * inv) - ref["cos"][-1]).max() > 1e-5


def test_rope_rotates_q_and_k_pairs_and_leaves_v(ops):
    rng = np.random.default_rng(2)
    nh, nkv, d, total = 4, 2, 8, 11
    qkv = rng.standard_normal((total, (nh + 2 * nkv) * d)).astype(np.float32)
    positions = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5], dtype=np.int32)
    cos, sin = rope_table(1e4, d, 16)
    got = ops.rope(qkv.copy(), positions, cos.ravel(), sin.ravel(), nh, nkv)
    x = qkv.astype(np.float64).reshape(total, nh + 2 * nkv, d)
    inv = 1.0 / 1e4 ** (np.arange(0, d, 2) / d)
    angle = positions[:, None, None] * inv[None, None, :]  # (T, 1, d/2)
    x1, x2 = x[:, :nh + nkv, :d // 2], x[:, :nh + nkv, d // 2:]
    want = x.copy()
    want[:, :nh + nkv, :d // 2] = x1 * np.cos(angle) - x2 * np.sin(angle)
    want[:, :nh + nkv, d // 2:] = x2 * np.cos(angle) + x1 * np.sin(angle)
    np.testing.assert_allclose(got.reshape(total, -1, d), want, atol=1e-5)


def test_rmsnorm_fused_add_and_per_head(ops):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 48)).astype(np.float32)  # several row blocks
    y = rng.standard_normal((5000, 48)).astype(np.float32)
    w = rng.standard_normal(48).astype(np.float32)

    def ref(v, w):
        v = v.astype(np.float64)
        return v / np.sqrt((v * v).mean(axis=-1, keepdims=True) + 1e-6) * w

    np.testing.assert_allclose(ops.rmsnorm(x, w, 1e-6), ref(x, w), atol=1e-5)
    h, residual = ops.add_rmsnorm(y.copy(), x.copy(), w, 1e-6)
    np.testing.assert_allclose(residual, x + y, atol=1e-6)
    np.testing.assert_allclose(h, ref(x.astype(np.float64) + y, w), atol=1e-5)
    qkv = rng.standard_normal((7, (3 + 2 * 1) * 16)).astype(np.float32)
    qw, kw = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    got = ops.head_rmsnorm(qkv.copy(), qw, kw, 3, 1, 1e-6).reshape(7, 5, 16)
    heads = qkv.reshape(7, 5, 16)
    np.testing.assert_allclose(got[:, :3], ref(heads[:, :3], qw), atol=1e-5)
    np.testing.assert_allclose(got[:, 3], ref(heads[:, 3], kw), atol=1e-5)
    np.testing.assert_array_equal(got[:, 4], heads[:, 4])  # V untouched


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation(ops, activation):
    rng = np.random.default_rng(4)
    gu = (rng.standard_normal((3000, 2 * 40)) * 4).astype(np.float32)
    gu[0, :3] = [-100.0, 100.0, 0.0]  # exp overflow in silu must give -0, not NaN
    g, u = gu[:, :40].astype(np.float64), gu[:, 40:].astype(np.float64)
    if activation == "silu":
        want = g / (1 + np.exp(-g)) * u
    else:
        want = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3))) * u
    got = ops.gated_activation(gu, activation)
    assert got.shape == (3000, 40)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
