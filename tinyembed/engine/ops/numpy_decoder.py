"""Decoder ops in float32 numpy: the reference for their C and CUDA twins (same names, same
arguments). NumpyOps inherits them; they use its thread pool and row blocking.

    embedding        ids -> rows of the table (times sqrt(H) for Gemma2)
    rmsnorm          x / sqrt(mean(x^2) + eps) * w         (a (1+w) gain is folded at load)
    add_rmsnorm      residual += y; y = rmsnorm(residual)  (the add fused into the norm)
    head_rmsnorm     RMSNorm over head_dim on the Q and K heads of a fused Q|K|V (Qwen3)
    rope             rotate-half RoPE on the Q and K heads, from a table built as HF builds it
    gated_activation act(gate) * up on a fused gate|up GEMM output (silu / gelu_tanh)
    decoder_attention causal or bidirectional, sliding window, scale, soft-cap, GQA; keys in
                     blocks with an online softmax, so no (L x L) buffer at 8k-32k tokens
    last_token, l2_normalize: last-token pooling

The fused Q|K|V layout is (T, (nH + 2 nKV) * d): all query heads, then key heads, then values.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVATIONS = ("silu", "gelu_tanh")
_NEG = np.float32(-1e30)  # masked score: finite, so a fully masked key block cannot make NaN
_KEY_BLOCK = 1024  # keys per online-softmax step
_MAX_SCORES = 2 * 1024 * 1024  # floats of scores one thread holds at once (8 MB)


def rope_table(theta: float, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (positions, head_dim/2) float32, computed as transformers does: inverse
    frequencies and angles in float32 (float64 angles differ by ~5e-4 at position 32767),
    then cos/sin of those float32 angles (here correctly rounded via float64). Checked against
    transformers' table up to position 32767 in tests/test_ops_decoder.py."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    # theta ** e rounded to float32 (numpy's float32 pow is several ulp off; torch's is within 1)
    powers = np.power(float(theta), exponents.astype(np.float64)).astype(np.float32)
    inv_freq = np.float32(1.0) / powers
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32 products
    return (np.cos(angles.astype(np.float64)).astype(np.float32),
            np.sin(angles.astype(np.float64)).astype(np.float32))


class DecoderNumpyOps:
    """Mixin for NumpyOps: needs self._rows, self._pool, self._gemm_threads, self.threads."""

    def embedding(self, input_ids, table, scale=None):
        """(T,) ids -> (T, H) rows of the (V, H) table, times `scale` when given."""
        x = table[input_ids]  # (T, H) gather: a copy
        if scale is not None:
            x *= np.float32(scale)
        return x

    def rmsnorm(self, x, w, eps):
        """(T, H) -> new (T, H): x / sqrt(mean(x^2) + eps) * w."""
        out = np.empty_like(x)
        self._rows(out, _rmsnorm_rows, x, w, eps)
        return out

    def add_rmsnorm(self, y, residual, w, eps):
        """residual += y (the new hidden state); y = rmsnorm(residual) * w. Both in place."""
        self._rows(y, _add_rmsnorm_rows, residual, w, eps)
        return y, residual

    def head_rmsnorm(self, qkv, q_w, k_w, num_heads, num_kv_heads, eps):
        """RMSNorm over head_dim of every Q and K head of a fused (T, (nH+2nKV)*d), in place."""
        self._rows(qkv, _head_rmsnorm_rows, q_w, k_w, num_heads, num_kv_heads, eps)
        return qkv

    def rope(self, qkv, position_ids, cos, sin, num_heads, num_kv_heads):
        """Rotate-half RoPE on the Q and K heads of a fused (T, (nH+2nKV)*d), in place. cos and
        sin are rope_table's (P, d/2) tables flattened to 1-D (so every backend keeps them in
        float32, as 1-D parameters)."""
        half = qkv.shape[1] // (num_heads + 2 * num_kv_heads) // 2
        cos, sin = cos.reshape(-1, half), sin.reshape(-1, half)
        self._rows(qkv, _rope_rows, position_ids, cos, sin, num_heads + num_kv_heads)
        return qkv

    def gated_activation(self, gate_up, activation):
        """(T, 2I) gate|up -> (T, I) act(gate) * up, written over the gate half (a view)."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        half = gate_up.shape[1] // 2
        self._rows(gate_up, _GATED[activation], half)
        return gate_up[:, :half]

    def decoder_attention(self, qkv, cu_seqlens, num_heads, num_kv_heads, scale, causal=True,
                          window=None, softcap=None):
        """(T, (nH+2nKV)*d) -> (T, nH*d): softmax(softcap(scale q.k) + mask) v per sequence.
        Mask: key k is visible to query q when (not causal or k <= q) and (no window or q-k < W)."""
        total = qkv.shape[0]
        d = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
        out = np.empty((total, num_heads * d), dtype=np.float32)
        units = _attention_units(cu_seqlens, num_heads, causal, window)
        # Longest-first onto the least-loaded thread: a long sequence's query blocks spread out.
        loads = [0.0] * self.threads
        groups: list[list] = [[] for _ in range(self.threads)]
        for unit in sorted(units, key=lambda u: -u[-1]):
            t = loads.index(min(loads))
            loads[t] += unit[-1]
            groups[t].append(unit)
        args = (qkv, out, num_heads, num_kv_heads, d, np.float32(scale), causal, window, softcap)
        with self._gemm_threads.limited(1):
            jobs = [self._pool.submit(_attention_units_run, group, *args) for group in groups if group]
            for job in jobs:
                job.result()
        return out

    def last_token(self, hidden, cu_seqlens):
        """(T, H) -> (n, H): the last token of each sequence."""
        return hidden[cu_seqlens[1:] - 1]

    def l2_normalize(self, x):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
        return (x / np.maximum(norms, 1e-12)[:, None]).astype(np.float32, copy=False)


# -- row-block kernels (fn(block, a, b, *args) as NumpyOps._rows calls them) ----------------------


def _rms_scale(x, eps):
    ms = np.einsum("ij,ij->i", x, x) * np.float32(1.0 / x.shape[1])
    ms += np.float32(eps)
    return (np.float32(1.0) / np.sqrt(ms))[:, None]


def _rmsnorm_rows(out, a, b, x, w, eps):
    src = x[a:b]
    np.multiply(src, _rms_scale(src, eps), out=out)
    out *= w


def _add_rmsnorm_rows(y, a, b, residual, w, eps):
    r = residual[a:b]
    r += y
    np.multiply(r, _rms_scale(r, eps), out=y)
    y *= w


def _head_rmsnorm_rows(qkv, a, b, q_w, k_w, num_heads, num_kv_heads, eps):
    d = q_w.shape[0]
    heads = qkv.reshape(b - a, -1, d)  # (rows, nH+2nKV, d)
    for part, w in ((heads[:, :num_heads], q_w), (heads[:, num_heads:num_heads + num_kv_heads], k_w)):
        ms = np.einsum("thd,thd->th", part, part) * np.float32(1.0 / d)
        ms += np.float32(eps)
        part *= (np.float32(1.0) / np.sqrt(ms))[:, :, None]
        part *= w


def _rope_rows(qkv, a, b, position_ids, cos, sin, rotated_heads):
    half = cos.shape[1]
    heads = qkv.reshape(b - a, -1, 2 * half)[:, :rotated_heads]  # (rows, nH+nKV, d)
    c = cos[position_ids[a:b]][:, None, :]  # (rows, 1, d/2)
    s = sin[position_ids[a:b]][:, None, :]
    x1, x2 = heads[:, :, :half], heads[:, :, half:]
    new1 = x1 * c - x2 * s  # q*cos + rotate_half(q)*sin, rotate_half(q) = [-q2, q1]
    x2 *= c
    x2 += x1 * s
    x1[...] = new1


def _silu_mul_rows(gu, a, b, half):
    g, u = gu[:, :half], gu[:, half:]
    with np.errstate(over="ignore"):  # exp(-g) = inf for g < -88: silu -> -0, as in torch
        sig = np.exp(-g)
    sig += np.float32(1.0)
    np.divide(g, sig, out=g)
    g *= u


_GELU_C = np.float32(math.sqrt(2.0 / math.pi))


def _gelu_tanh_mul_rows(gu, a, b, half):
    g, u = gu[:, :half], gu[:, half:]
    inner = g * g
    inner *= np.float32(0.044715)
    inner *= g
    inner += g
    inner *= _GELU_C
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    inner *= np.float32(0.5)
    g *= inner
    g *= u


_GATED = {"silu": _silu_mul_rows, "gelu_tanh": _gelu_tanh_mul_rows}


# -- attention --------------------------------------------------------------------------------


def _key_range(i, j, length, causal, window):
    """Keys any query in rows [i, j) can see: [lo, hi)."""
    hi = j if causal else length
    lo = max(0, i - window + 1) if (causal and window) else 0
    return lo, hi


def _attention_units(cu_seqlens, num_heads, causal, window):
    """(start, length, i, j, cost) query blocks; cost ~ rows x visible keys."""
    units = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        length = b - a
        rows = max(16, min(length, _MAX_SCORES // (num_heads * min(length, _KEY_BLOCK))))
        if causal and length >= 128:  # 4+ query blocks: keys past a block's last row are skipped
            rows = min(rows, max(64, -(-length // 4)))
        for i in range(0, length, rows):
            j = min(i + rows, length)
            lo, hi = _key_range(i, j, length, causal, window)
            units.append((a, length, i, j, float((j - i) * (hi - lo))))
    return units


def _attention_units_run(units, qkv, out, num_heads, num_kv_heads, d, scale, causal, window, softcap):
    for a, length, i, j, _ in units:
        _attention_block(qkv, out, a, length, i, j, num_heads, num_kv_heads, d, scale, causal, window, softcap)


def _attention_block(qkv, out, a, length, i, j, num_heads, num_kv_heads, d, scale, causal, window, softcap):
    rows, group = j - i, num_heads // num_kv_heads
    k_off, v_off = num_heads * d, (num_heads + num_kv_heads) * d
    # Q of rows [i, j) grouped by the kv head they share: (nKV, group * rows, d), pre-scaled.
    q = qkv[a + i:a + j, :k_off].reshape(rows, num_kv_heads, group, d).transpose(1, 2, 0, 3)
    q = (q * scale).reshape(num_kv_heads, group * rows, d)
    q_pos = np.arange(i, j)
    lo, hi = _key_range(i, j, length, causal, window)
    m = np.full((num_kv_heads, group * rows, 1), _NEG, dtype=np.float32)  # running row max
    acc = np.zeros((num_kv_heads, group * rows, d + 1), dtype=np.float32)  # sum p.v | sum p
    for ka in range(lo, hi, _KEY_BLOCK):
        kb = min(ka + _KEY_BLOCK, hi)
        keys = qkv[a + ka:a + kb]
        k = np.ascontiguousarray(keys[:, k_off:v_off].reshape(kb - ka, num_kv_heads, d).transpose(1, 2, 0))
        v = np.empty((num_kv_heads, kb - ka, d + 1), dtype=np.float32)  # V | 1: row sums in the GEMM
        v[:, :, :d] = keys[:, v_off:].reshape(kb - ka, num_kv_heads, d).transpose(1, 0, 2)
        v[:, :, d] = 1.0
        s = q @ k  # (nKV, group*rows, keys)
        if softcap:
            s *= np.float32(1.0 / softcap)
            np.tanh(s, out=s)
            s *= np.float32(softcap)
        visible = _visible(q_pos, np.arange(ka, kb), causal, window)
        if visible is not None:
            s4 = s.reshape(num_kv_heads, group, rows, kb - ka)
            np.copyto(s4, _NEG, where=~visible)
        m_new = np.maximum(m, s.max(axis=2, keepdims=True))
        s -= m_new
        np.exp(s, out=s)
        acc *= np.exp(m - m_new)  # rescale what earlier blocks summed (0 after an all-masked one)
        acc += s @ v
        m = m_new
    ctx = acc[:, :, :d] / acc[:, :, d:]  # (nKV, group*rows, d)
    out[a + i:a + j] = ctx.reshape(num_kv_heads, group, rows, d).transpose(2, 0, 1, 3).reshape(rows, -1)


def _visible(q_pos, k_pos, causal, window):
    """(rows, keys) bool mask, or None when every key is visible to every query."""
    if not causal:
        return None
    delta = q_pos[:, None] - k_pos[None, :]
    if delta.min() >= 0 and (not window or delta.max() < window):
        return None
    visible = delta >= 0
    if window:
        visible &= delta < window
    return visible
