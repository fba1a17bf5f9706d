"""CPU ops in float32 numpy: the forward pass's building blocks, and the reference every CUDA
kernel in kernels/cuda/*.cu is checked against (same names, same arguments).

Layout is packed and padding-free: activations are (total_tokens, width) and `cu_seqlens`
(n+1,) marks where each sequence starts. GEMMs go to numpy's BLAS (which uses every core).
Elementwise work is memory-bound and numpy runs it on one core, one full pass per operator,
so it is cut into row blocks that stay in L2 and spread over a small thread pool (numpy
releases the GIL inside its loops): the same arithmetic, done cache-hot on all cores.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tinyembed.engine.ops.blas_threads import BlasThreads
from tinyembed.engine.ops.numpy_decoder import DecoderNumpyOps

_BLOCK_ELEMENTS = 32 * 1024  # a block of rows and its temporaries stay inside L2


class NumpyOps(DecoderNumpyOps):
    name = "cpu"
    kernels = "numpy"

    def __init__(self, threads: int | None = None):
        self.threads = threads or min(8, os.cpu_count() or 1)
        # Attention runs many small per-head GEMMs, one sequence per pool thread; a multi-threaded
        # BLAS under each of them would oversubscribe the cores and spin (measured: 2x the CPU
        # time, no speed-up). So the pool's threads run their GEMMs on one BLAS thread each (set
        # per thread where the BLAS allows, else around attention for the whole process).
        self._gemm_threads = BlasThreads()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tinyembed-ops",
                                        initializer=self._gemm_threads.set, initargs=(1, False))

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
        with self._gemm_threads.limited(1):
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
    # gelu(y) = relu(y) + c(y), where c(y) = -|y| * Phi(-|y|) is smooth and vanishes beyond
    # |y| = 8 (|c| < 1e-14): c is read from a table by linear interpolation.
    y += bias
    u, whole, index = _scratch(y.shape)
    np.multiply(y, np.float32(1.0 / _GELU_STEP), out=u)
    u += np.float32(_GELU_RANGE / _GELU_STEP)  # u: position in the table
    np.clip(u, 0.0, _GELU_TABLE.size - 1.001, out=u)
    np.floor(u, out=whole)
    u -= whole  # u: fraction within the cell
    np.copyto(index, whole, casting="unsafe")
    value = _GELU_SLOPE.take(index)
    value *= u
    value += _GELU_TABLE.take(index)
    np.maximum(y, 0.0, out=y)
    y += value


_thread_scratch = threading.local()


def _scratch(shape):
    """Per-thread temporaries (float32, float32, int32) for one row block. Fresh arrays of this
    size cost mmap + page faults in glibc's allocator: measured twice the time of the math."""
    buffers = getattr(_thread_scratch, "buffers", None)
    if buffers is None:
        buffers = _thread_scratch.buffers = (
            np.empty(_BLOCK_ELEMENTS, np.float32), np.empty(_BLOCK_ELEMENTS, np.float32),
            np.empty(_BLOCK_ELEMENTS, np.int32))
    size = shape[0] * shape[1]
    if size > _BLOCK_ELEMENTS:  # a single row wider than a block
        return [np.empty(shape, buf.dtype) for buf in buffers]
    return [buf[:size].reshape(shape) for buf in buffers]


def _gelu_correction_table():
    """c(x) = gelu(x) - relu(x) on a 1/1024 grid over [-8, 8], from math.erf in float64.
    Linear interpolation error <= step^2/8 * max|c''| (0.8) ~ 1e-7: float32 rounding level."""
    grid = np.arange(-_GELU_RANGE, _GELU_RANGE + 2 * _GELU_STEP, _GELU_STEP)
    c = np.array([-abs(x) * 0.5 * math.erfc(abs(x) / math.sqrt(2.0)) for x in grid])
    return c[:-1].astype(np.float32), np.diff(c).astype(np.float32)


_GELU_STEP = 1.0 / 1024
_GELU_RANGE = 8.0
_GELU_TABLE, _GELU_SLOPE = _gelu_correction_table()


def _attention_seqs(qkv, out, starts, ends, num_heads):
    width = out.shape[1]
    d = width // num_heads
    scale = np.float32(1.0 / math.sqrt(d))
    for a, b in zip(starts.tolist(), ends.tolist()):
        length = b - a
        # One copy makes Q, K, V contiguous per head; V gets an extra column of ones so that
        # P @ [V | 1] yields the softmax denominator in the same GEMM as the context.
        x = np.empty((3, num_heads, length, d + 1), dtype=np.float32)
        x[:, :, :, :d] = qkv[a:b].reshape(length, 3, num_heads, d).transpose(1, 2, 0, 3)
        q, k, v = x[0, :, :, :d], x[1, :, :, :d], x[2]
        v[:, :, d] = 1.0
        q *= scale
        shift = _scores_may_overflow(q, k)
        # Long sequences go in query blocks so the scores stay small (8192 tokens at once
        # would be heads x 8192 x 8192 floats: gigabytes).
        rows = max(1, _MAX_SCORES // (num_heads * length))
        for i in range(0, length, rows):
            j = min(i + rows, length)
            scores = q[:, i:j] @ k.transpose(0, 2, 1)  # (heads, rows, L)
            if shift:
                scores -= scores.max(axis=2, keepdims=True)  # the usual shift, only when needed
                np.maximum(scores, -80.0, out=scores)  # e^-80 is negligible; denormals are slow
            np.exp(scores, out=scores)
            ctx = scores @ v  # (heads, rows, d+1): unnormalized context | row sums
            ctx[:, :, :d] /= ctx[:, :, d:]
            out[a + i : a + j] = ctx[:, :, :d].transpose(1, 0, 2).reshape(j - i, width)


_MAX_SCORES = 4 * 1024 * 1024  # floats of attention scores held at once per thread (16 MB)


# Softmax is shift-invariant, so the max subtraction only guards exp() against overflow.
# |q.k| <= max|q| * max|k| (Cauchy-Schwarz): below this bound exp() is exact and finite in
# float32 (e^60 * 8192 keys << 3.4e38) and the row-max pass over (heads, L, L) is skipped.
_EXP_SAFE = 60.0


def _scores_may_overflow(q, k):
    q_max = np.einsum("hld,hld->hl", q, q).max()
    k_max = np.einsum("hld,hld->hl", k, k).max()
    return not (q_max * k_max < _EXP_SAFE**2)  # also true for NaN
