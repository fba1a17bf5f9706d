"""The decoder ops on our C kernels (kernels/cpu/decoder_*.c): DecoderNumpyOps' contract, with
the same names and arguments, mixed into COps ahead of NumpyOps.

    rmsnorm, add_rmsnorm, head_rmsnorm   decoder_rmsnorm.c
    rope                                 decoder_rope.c      (in place, from the cos/sin table)
    gated_activation                     decoder_gated.c     (into a contiguous (T, I) buffer)
    decoder_attention                    decoder_attention.c (causal / window / softcap / GQA)
    last_token, l2_normalize             decoder_pool.c
    embedding (bf16 tables), widen_bf16  decoder_bf16.c
    bf16_matmul                          decoder_bf16_gemm.c (AVX512_BF16; else widen + BLAS)

The symbols are bound on first use from the library COps loaded (all kernels/cpu/*.c build into
one), so the encoder path never depends on them. Row ranges go through COps._split: ctypes
releases the GIL, so the calling thread and the pool run ranges side by side.
"""

from __future__ import annotations

from ctypes import c_float, c_int, c_long, c_void_p

import numpy as np

from tinyembed.engine.ops.work_split import cost_bounds

ACTIVATION_KINDS = {"silu": 0, "gelu_tanh": 1}
_P, _I, _L, _F = c_void_p, c_int, c_long, c_float
DECODER_SIGNATURES = {  # C entry point -> (argtypes, restype)
    "rmsnorm": ((_P, _P, _F, _I, _P, _L, _L), None),
    "add_rmsnorm": ((_P, _P, _P, _F, _I, _L, _L), None),
    "head_rmsnorm": ((_P, _P, _P, _I, _I, _I, _F, _L, _L), None),
    "rope": ((_P, _P, _P, _P, _I, _I, _I, _L, _L), None),
    "gated_activation": ((_P, _P, _I, _I, _L, _L), None),
    "decoder_attention": ((_P, _P, _P, _I, _I, _I, _F, _I, _I, _F, _L, _L), _I),
    "last_token": ((_P, _P, _I, _P, _L, _L), None),
    "l2_normalize": ((_P, _I, _L, _L), None),
    "widen_bf16": ((_P, _P, _L, _L), None),
    "embedding_bf16": ((_P, _P, _I, _F, _P, _L, _L), None),
    "bf16_matmul": ((_P, _P, _P, _I, _I, _L, _L, _L), _I),
}
MIN_ATTENTION_FLOPS_PER_THREAD = 4e6
MIN_WIDEN_PER_THREAD = 256 * 1024  # weights widened per thread, at least
MIN_GEMM_FLOPS_PER_THREAD = 48e6  # as c_ops: below this a second thread costs more than it saves


def _ptr(array: np.ndarray, dtype=np.float32) -> int:
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"C kernels need C-contiguous {np.dtype(dtype).name} arrays, got {array.dtype}"
                        f"{'' if array.flags.c_contiguous else ' (not contiguous)'}")
    return array.ctypes.data


class DecoderCOps:
    """Mixin for COps: needs self.library, self.naive, self.threads, _split, _buffer,
    _rows_threads; falls back to nothing (every op here has its C kernel)."""

    def _dfn(self, name: str):
        fns = self.__dict__.setdefault("_decoder_fn", {})
        fn = fns.get(name)
        if fn is None:
            argtypes, restype = DECODER_SIGNATURES[name]
            fn = getattr(self.library, name + "_naive" if self.naive else name)
            fn.argtypes, fn.restype = argtypes, restype
            fns[name] = fn
        return fn

    def _row_split(self, name: str, args: tuple, rows: int, width: int) -> None:
        self._split(self._dfn(name), args, rows, self._rows_threads(rows, width))

    # -- norms --------------------------------------------------------------------------------
    def rmsnorm(self, x, w, eps):
        rows, width = x.shape
        out = self._buffer(rows, width)
        self._row_split("rmsnorm", (_ptr(x), _ptr(w), eps, width, _ptr(out)), rows, width)
        return out

    def add_rmsnorm(self, y, residual, w, eps):
        rows, width = y.shape
        if residual.shape != y.shape:
            raise ValueError(f"residual {residual.shape} does not match {y.shape}")
        self._row_split("add_rmsnorm", (_ptr(y), _ptr(residual), _ptr(w), eps, width), rows, 2 * width)
        return y, residual

    def head_rmsnorm(self, qkv, q_w, k_w, num_heads, num_kv_heads, eps):
        rows, width = qkv.shape
        args = (_ptr(qkv), _ptr(q_w), _ptr(k_w), num_heads, num_kv_heads, q_w.shape[0], eps)
        self._row_split("head_rmsnorm", args, rows, width)
        return qkv

    # -- RoPE and the MLP epilogue --------------------------------------------------------------
    def rope(self, qkv, position_ids, cos, sin, num_heads, num_kv_heads):
        rows, width = qkv.shape
        total_heads = num_heads + 2 * num_kv_heads
        half = width // total_heads // 2
        pos = np.ascontiguousarray(position_ids, dtype=np.int32)
        if pos.size and (pos.min() < 0 or (int(pos.max()) + 1) * half > cos.size):
            raise IndexError(f"position {int(pos.max())} is past the rotary table ({cos.size // half} positions)")
        args = (_ptr(qkv), _ptr(pos, np.int32), _ptr(cos), _ptr(sin), num_heads + num_kv_heads, total_heads, half)
        self._row_split("rope", args, rows, width)
        return qkv

    def gated_activation(self, gate_up, activation):
        if activation not in ACTIVATION_KINDS:
            raise ValueError(f"unknown activation {activation!r}")
        rows, width = gate_up.shape
        out = self._buffer(rows, width // 2)
        args = (_ptr(gate_up), _ptr(out), width // 2, ACTIVATION_KINDS[activation])
        self._row_split("gated_activation", args, rows, 2 * width)  # exp / tanh: costlier than a copy
        return out

    # -- attention ------------------------------------------------------------------------------
    def decoder_attention(self, qkv, cu_seqlens, num_heads, num_kv_heads, scale, causal=True,
                          window=None, softcap=None):
        total, width = qkv.shape
        d = width // (num_heads + 2 * num_kv_heads)
        cu = np.ascontiguousarray(cu_seqlens, dtype=np.int32)
        out = self._buffer(total, num_heads * d)
        items = (len(cu) - 1) * num_kv_heads
        if items == 0:
            return out
        lengths = np.diff(cu).astype(np.float64)
        seen = np.minimum(lengths, window) if (causal and window) else lengths
        per_seq = lengths * (seen / (2.0 if causal else 1.0) + 8.0)  # score work + packing
        cost = np.repeat(per_seq, num_kv_heads)
        flops = 4.0 * float(cost.sum()) * d * (num_heads // num_kv_heads)
        threads = max(1, min(self.threads, items, int(flops // MIN_ATTENTION_FLOPS_PER_THREAD)))
        threads, bounds = cost_bounds(cost, threads)  # contiguous item ranges of about equal cost
        status = []
        fn = self._dfn("decoder_attention")

        def run(*args):
            status.append(fn(*args))

        args = (_ptr(qkv), _ptr(out), _ptr(cu, np.int32), num_heads, num_kv_heads, d, scale, int(bool(causal)),
                int(window or 0), float(softcap or 0.0))
        self._split(run, args, items, threads, bounds)
        if any(status):
            raise MemoryError(f"decoder attention kernel failed (status {status}): head_dim {d} > 256?")
        return out

    # -- pooling --------------------------------------------------------------------------------
    def last_token(self, hidden, cu_seqlens):
        cu = np.ascontiguousarray(cu_seqlens, dtype=np.int32)
        n, width = len(cu) - 1, hidden.shape[1]
        out = np.empty((n, width), dtype=np.float32)  # small, and may outlive the forward
        self._dfn("last_token")(_ptr(hidden), _ptr(cu, np.int32), width, _ptr(out), 0, n)
        return out

    def l2_normalize(self, x):
        out = np.array(x, dtype=np.float32, order="C")  # returned to the caller: never a reused buffer
        self._dfn("l2_normalize")(_ptr(out), out.shape[1], 0, out.shape[0])
        return out

    # -- bfloat16 weights -----------------------------------------------------------------------
    def embedding(self, input_ids, table, scale=None):
        if table.dtype != np.uint16:
            return super().embedding(input_ids, table, scale)
        ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise IndexError("token id out of range of the embedding table")
        rows, width = ids.shape[0], table.shape[1]
        out = self._buffer(rows, width)
        args = (_ptr(ids, np.int32), _ptr(table, np.uint16), width, np.float32(1.0 if scale is None else scale), _ptr(out))
        self._row_split("embedding_bf16", args, rows, width)
        return out

    def widen_bf16(self, parts):
        """bf16 (out_i, in) parts -> their (in, sum out_i) float32 product matrix: a transposed
        view of one reused work buffer, widened in parallel."""
        rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
        work = self._buffer(rows, cols)
        start = 0
        for part in parts:
            n = part.size
            threads = max(1, min(self.threads, n // MIN_WIDEN_PER_THREAD))
            dst = work[start:start + part.shape[0]]
            self._split(self._dfn("widen_bf16"), (_ptr(part, np.uint16), dst.ctypes.data), n, threads)
            start += part.shape[0]
        return work.T

    def bf16_matmul(self, x, parts):
        """(T, K) float32 x bf16 (out_i, K) parts -> (T, sum out_i): bf16(x) . w, float32 sums.
        VDPBF16PS on the weights in place where the CPU has AVX512_BF16; else x is rounded the
        same way and BLAS runs on the widened weights (DecoderNumpyOps.bf16_matmul)."""
        rows, k = x.shape
        n_total = sum(p.shape[0] for p in parts)
        if getattr(self, "_bf16_gemm", None) is False:
            return self._bf16_matmul_blas(x, parts)
        out = self._buffer(rows, n_total)
        fn, start, status = self._dfn("bf16_matmul"), 0, []
        for part in parts:
            flops = 2.0 * rows * k * part.shape[0]
            threads = max(1, min(self.threads, rows // 32 or 1, int(flops // MIN_GEMM_FLOPS_PER_THREAD)))
            bounds = [rows * i // threads // 32 * 32 for i in range(threads)] + [rows]

            def run(*args):
                status.append(fn(*args))

            args = (_ptr(x), _ptr(part, np.uint16), out[:, start:].ctypes.data, k, part.shape[0], n_total)
            self._split(run, args, rows, threads, bounds)
            if any(status):
                if status[0] == -1 and not self.naive:  # built without AVX512_BF16: BLAS from now on
                    self._bf16_gemm = False
                    return self._bf16_matmul_blas(x, parts)
                raise MemoryError(f"bf16_matmul failed (status {status})")
            start += part.shape[0]
        return out

    def _bf16_matmul_blas(self, x, parts):
        from tinyembed.engine.checkpoints.bf16 import bf16_to_float32, float32_to_bf16

        return self.matmul(bf16_to_float32(float32_to_bf16(x)), self.widen_bf16(parts))
