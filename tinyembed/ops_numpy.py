"""CPU ops in float32 numpy: the forward pass's building blocks, and the reference every CUDA
kernel in kernels/*.cu is checked against (same names, same arguments).

Layout is packed and padding-free: activations are (total_tokens, width) and `cu_seqlens`
(n+1,) marks where each sequence starts. GEMMs go to numpy's BLAS (which uses every core).
Elementwise work is memory-bound and numpy runs it on one core, one full pass per operator,
so it is cut into row blocks that stay in L2 and spread over a small thread pool (numpy
releases the GIL inside its loops): the same arithmetic, done cache-hot on all cores.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Abramowitz & Stegun 7.1.26: erfc(z) ~= t*(a1 + t*(a2 + ... a5)) * exp(-z^2), t = 1/(1 + p*z),
# |error| <= 1.5e-7 for z >= 0: exact GELU to float32 precision without scipy.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_BLOCK_ELEMENTS = 32 * 1024  # a block of rows and its temporaries stay inside L2


class NumpyOps:
    name = "cpu"

    def __init__(self, threads: int | None = None):
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tinyembed-ops")

    # -- moving data: on the CPU these are identities -------------------------------------------
    def param(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def upload_batch(self, batch):
        return batch.input_ids, batch.position_ids, batch.cu_seqlens

    # -- the ops ------------------------------------------------------------------------------
    def embed(self, input_ids, position_ids, word, position, token_type0, ln_w, ln_b, eps):
        """(T,) ids -> (T, H): word + position + token-type-0 embeddings, then LayerNorm."""
        x = word[input_ids]  # (T, H) gather
        x += position[position_ids]
        x += token_type0
        self._rows(x, _layernorm_rows, ln_w, ln_b, eps)
        return x

    def linear(self, x, w, b):
        """(T, K) @ (K, N) + b -> (T, N)."""
        y = x @ w
        y += b
        return y

    def matmul(self, x, w):
        """(T, K) @ (K, N) -> (T, N); the bias is fused into the op that follows."""
        return x @ w

    def bias_gelu(self, y, b):
        """(T, I): y + b, then exact (erf) GELU, in place."""
        self._rows(y, _bias_gelu_rows, b)
        return y

    def bias_residual_layernorm(self, y, b, residual, ln_w, ln_b, eps):
        """(T, H): LayerNorm(y + b + residual), in place in y."""
        self._rows(y, _bias_residual_layernorm_rows, b, residual, ln_w, ln_b, eps)
        return y

    def attention(self, qkv, cu_seqlens, max_len, num_heads):
        """(T, 3H) fused Q|K|V -> (T, H): softmax(QK^T / sqrt(d)) V within each sequence."""
        total, width = qkv.shape
        out = np.empty((total, width // 3), dtype=np.float32)
        starts, ends = cu_seqlens[:-1], cu_seqlens[1:]
        # Split sequences into one group per thread with about equal L^2 work.
        cost = np.cumsum((ends - starts).astype(np.float64) ** 2)
        group = np.minimum((cost / cost[-1] * self.threads).astype(int), self.threads - 1)
        jobs = [
            self._pool.submit(_attention_seqs, qkv, out, starts[group == g], ends[group == g], num_heads)
            for g in range(self.threads)
            if (group == g).any()
        ]
        for job in jobs:
            job.result()
        return out

    def pool_normalize(self, hidden, cu_seqlens, mode):
        """(T, H) -> (n, H) float32: CLS / mean / last-token pooling, then L2 normalization."""
        starts, ends = cu_seqlens[:-1], cu_seqlens[1:]
        if mode == "cls":
            pooled = hidden[starts]
        elif mode == "last":
            pooled = hidden[ends - 1]
        else:
            pooled = np.add.reduceat(hidden, starts, axis=0, dtype=np.float32)
            pooled /= (ends - starts)[:, None].astype(np.float32)
        return normalize(pooled)

    # -- helpers ------------------------------------------------------------------------------
    def _rows(self, x, fn, *args):
        """Apply fn(x[a:b], a, b, *args) over cache-sized row blocks on the thread pool."""
        rows = x.shape[0]
        block = max(1, _BLOCK_ELEMENTS // max(1, x.shape[1]))
        if rows <= block:
            fn(x, 0, rows, *args)
            return
        chunks = [(a, min(a + block, rows)) for a in range(0, rows, block)]
        per_thread = math.ceil(len(chunks) / self.threads)
        groups = [chunks[i : i + per_thread] for i in range(0, len(chunks), per_thread)]
        jobs = [self._pool.submit(_run_blocks, fn, x, group, args) for group in groups]
        for job in jobs:
            job.result()


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows (as torch's F.normalize: norms clamped at 1e-12)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32))
    return (vectors / np.maximum(norms, 1e-12)[:, None]).astype(np.float32, copy=False)


def _run_blocks(fn, x, blocks, args):
    for a, b in blocks:
        fn(x[a:b], a, b, *args)


def _layernorm_rows(x, a, b, ln_w, ln_b, eps):
    mean = x.mean(axis=1, keepdims=True)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var *= 1.0 / x.shape[1]
    var += eps
    x *= 1.0 / np.sqrt(var)
    x *= ln_w
    x += ln_b


def _bias_residual_layernorm_rows(y, a, b, bias, residual, ln_w, ln_b, eps):
    y += bias
    y += residual[a:b]
    _layernorm_rows(y, a, b, ln_w, ln_b, eps)


def _bias_gelu_rows(y, a, b, bias):
    # gelu(y) = y * Phi(y) = relu(y) - |y| * erfc(|y|/sqrt(2)) / 2
    y += bias
    mag = np.abs(y)
    t = mag * (_AS_P / math.sqrt(2.0))
    t += 1.0
    np.reciprocal(t, out=t)
    a1, a2, a3, a4, a5 = (0.5 * c for c in _AS_A)  # the /2 folded into the coefficients
    poly = t * a5
    for coef in (a4, a3, a2, a1):
        poly += coef
        poly *= t
    gauss = np.square(mag)
    gauss *= -0.5
    np.exp(gauss, out=gauss)
    poly *= gauss
    poly *= mag
    np.maximum(y, 0.0, out=y)
    y -= poly


def _attention_seqs(qkv, out, starts, ends, num_heads):
    width = out.shape[1]
    head_dim = width // num_heads
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for a, b in zip(starts.tolist(), ends.tolist()):
        seq = qkv[a:b].reshape(b - a, 3, num_heads, head_dim)
        q = seq[:, 0].transpose(1, 0, 2) * scale  # (heads, L, d)
        k = seq[:, 1].transpose(1, 2, 0)  # (heads, d, L)
        v = seq[:, 2].transpose(1, 0, 2)  # (heads, L, d)
        scores = q @ k  # (heads, L, L)
        scores -= scores.max(axis=2, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=2, keepdims=True)
        ctx = scores @ v  # (heads, L, d)
        out[a:b] = ctx.transpose(1, 0, 2).reshape(b - a, width)
