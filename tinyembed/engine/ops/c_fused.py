"""All encoder layers of a small batch in one C call (kernels/cpu/encoder_layer.c).

A 16-token text through six layers is ~40 small ops; one ctypes call each, plus their buffer
bookkeeping, costs about as much as the arithmetic. `FusedLayers` describes every layer once
at load (a ctypes array of te_layer structs pointing at the packed weights) and runs them all
in one call on the calling thread: the same kernels, in the same order, as COps' ops one by
one, so a text gets the same vector whichever path its batch takes.

With two or more threads, a batch of several sequences is cut at a sequence boundary into one
part per thread (sequences never mix in an encoder), each part one call: one hand-off per
batch instead of one per op. A batch that cannot be cut evenly enough (one long text beside
short ones) goes op by op, where every op is split over the threads instead.
"""

from __future__ import annotations

import ctypes
from ctypes import c_float, c_int, c_void_p

import numpy as np

from tinyembed.engine.ops.c_int8 import PackedLinear


class _Linear(ctypes.Structure):
    _fields_ = [("w", c_void_p), ("scale", c_void_p), ("sum", c_void_p), ("bias", c_void_p),
                ("k", c_int), ("n", c_int)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Linear), ("out", _Linear), ("ffn_in", _Linear), ("ffn_out", _Linear),
                ("ln1_w", c_void_p), ("ln1_b", c_void_p), ("ln2_w", c_void_p), ("ln2_b", c_void_p)]


def _linear(w: PackedLinear, bias: np.ndarray) -> _Linear:
    data = w.f32 if w.q is None else w.q
    scale = None if w.scale is None else w.scale.ctypes.data
    total = None if w.sum is None else w.sum.ctypes.data
    return _Linear(data.ctypes.data, scale, total, bias.ctypes.data, w.k, w.n)


class FusedLayers:
    """Callable (x, cu_seqlens) -> x after every layer, x (T, H) float32 updated in place."""

    def __init__(self, ops, layers: list[dict], num_heads: int, eps: float, max_tokens_alone: int = 48,
                 min_share: float = 0.35):
        self.ops = ops
        self.max_tokens_alone, self.min_share = max_tokens_alone, min_share
        self.heads, self.eps = num_heads, float(eps)
        self.keep = layers  # the arrays the structs point into stay alive with them
        self.structs = (_Layer * len(layers))(*[
            _Layer(_linear(p["qkv_w"], p["qkv_b"]), _linear(p["out_w"], p["out_b"]),
                   _linear(p["ffn_in_w"], p["ffn_in_b"]), _linear(p["ffn_out_w"], p["ffn_out_b"]),
                   p["ln1_w"].ctypes.data, p["ln1_b"].ctypes.data, p["ln2_w"].ctypes.data, p["ln2_b"].ctypes.data)
            for p in layers])
        first = layers[0]
        self.width, self.inner = first["qkv_w"].k, first["ffn_in_w"].n
        self.kp = max(first["ffn_out_w"].kp, first["qkv_w"].kp)
        self.precision = 0 if ops.precision == "fp32" else (1 if ops.int8_isa else 2)

    def _cut(self, cu: np.ndarray) -> int:
        """The sequence index where a two-thread split divides the tokens most evenly, else 0."""
        if self.ops.threads < 2 or len(cu) < 3:
            return 0
        total = int(cu[-1])
        middle = int(np.searchsorted(cu, total / 2))  # the first boundary at or past half the tokens
        cuts = [i for i in (middle - 1, middle) if 0 < i < len(cu) - 1]
        k = min(cuts, key=lambda i: abs(2 * int(cu[i]) - total), default=0)
        return k if k and min(int(cu[k]), total - int(cu[k])) >= self.min_share * total else 0

    def takes(self, cu_seqlens: np.ndarray) -> bool:
        """Whether this batch runs here: one thread, a small batch, or an even cut for two."""
        total = int(cu_seqlens[-1])
        return self.ops.threads == 1 or total <= self.max_tokens_alone or self._cut(np.asarray(cu_seqlens)) > 0

    def __call__(self, x: np.ndarray, cu_seqlens: np.ndarray) -> np.ndarray:
        cu = np.ascontiguousarray(cu_seqlens, dtype=np.int32)
        k = self._cut(cu) if cu[-1] > self.max_tokens_alone else 0
        if not k:
            return self._run(x, cu)
        a = int(cu[k])
        job = self.ops._pool.submit(self._run, x[a:], cu[k:] - cu[k])  # rows a.. are contiguous
        self._run(x[:a], cu[:k + 1])
        job.result()
        return x

    def _run(self, x: np.ndarray, cu: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        cu = np.ascontiguousarray(cu, dtype=np.int32)
        # Beside the op-by-op path (2+ threads), this one runs only batches of up to
        # max_tokens_alone: its buffers need no more rows than that, on each thread.
        hint = self.max_tokens_alone if self.ops.threads > 1 else None
        buf = lambda r, c, dtype=np.float32: self.ops._buffer(r, c, dtype, hint)  # noqa: E731
        qkv, ctx, h = buf(rows, 3 * self.width), buf(rows, self.width), buf(rows, self.inner)
        xq, xs = buf(rows, self.kp, np.uint8), buf(rows, 2)  # xs, flat: T scales, then T int32 zero points
        status = self.ops._fn["encoder_layers"](
            self.structs, len(self.structs), self.heads, self.eps, self.precision, x.ctypes.data,
            cu.ctypes.data, len(cu) - 1, rows, qkv.ctypes.data, ctx.ctypes.data, h.ctypes.data,
            xq.ctypes.data, xs.ctypes.data)
        if status:
            raise MemoryError(f"encoder_layers failed (status {status}): head size {self.width // self.heads}?")
        return x
