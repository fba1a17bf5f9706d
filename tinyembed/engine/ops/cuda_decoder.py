"""GPU decoder ops: the DecoderNumpyOps contract (numpy_decoder.py) on CuPy, with the kernels
of kernels/cuda/decoder.cu and decoder_attention.cu. CudaOps inherits them and provides
_compiled, _launch, _empty, _enter, sm_count and pool_normalize.

STATUS: written without a GPU: never compiled, never run. tests/test_ops_cuda_decoder.py checks
each op against its numpy twin where CuPy sees a device.
"""

from __future__ import annotations

import numpy as np

from tinyembed.common.errors import TinyEmbedError

DECODER_KERNELS = {
    "decoder.cu": ("embedding", "rmsnorm", "add_rmsnorm", "head_rmsnorm", "rope", "gated_activation", "last_token"),
    "decoder_attention.cu": ("decoder_attention",),
}
ACTIVATION_KINDS = {"silu": 0, "gelu_tanh": 1}
MAX_HEAD_DIM = 256  # 32 lanes x DA_MAX_PER_LANE in decoder_attention.cu


def _grid(items: int, sm_count: int) -> int:
    return max(1, min((items + 255) // 256, sm_count * 16))  # grid-stride beyond that


class CudaDecoderOps:
    def prepare_decoder_kernels(self):
        """Compile the decoder kernels (once per dtype; the encoders never need them, so a
        decoder kernel can never stop an encoder from loading). Called by the decoder models."""
        for file, names in DECODER_KERNELS.items():
            module = self._compiled(file)
            for name in names:
                self._kernels.setdefault(name, module.get_function(name))

    def embedding(self, input_ids, table, scale=None):
        tokens, width = int(input_ids.size), int(table.shape[1])
        out = self._empty((tokens, width))
        if tokens:
            self._launch("embedding", (tokens,), 256, (input_ids, table, out, np.int32(width),
                                                       np.int32(table.shape[0]), np.float32(scale or 1.0)))
        return out

    def rmsnorm(self, x, w, eps):
        out = self._empty(x.shape)
        if x.shape[0]:
            self._launch("rmsnorm", (x.shape[0],), 256, (x, out, w, np.int32(x.shape[1]), np.float32(eps)))
        return out

    def add_rmsnorm(self, y, residual, w, eps):
        if y.shape[0]:
            self._launch("add_rmsnorm", (y.shape[0],), 256, (y, residual, w, np.int32(y.shape[1]), np.float32(eps)))
        return y, residual

    def head_rmsnorm(self, qkv, q_w, k_w, num_heads, num_kv_heads, eps):
        tokens, d = int(qkv.shape[0]), int(q_w.shape[0])
        warps = tokens * (num_heads + num_kv_heads)
        if warps:
            self._launch("head_rmsnorm", ((warps + 3) // 4,), 128,
                         (qkv, q_w, k_w, np.int32(tokens), np.int32(num_heads), np.int32(num_kv_heads),
                          np.int32(d), np.float32(eps)))
        return qkv

    def rope(self, qkv, position_ids, cos, sin, num_heads, num_kv_heads):
        tokens, width = int(qkv.shape[0]), int(qkv.shape[1])
        half = width // (num_heads + 2 * num_kv_heads) // 2
        total = tokens * (num_heads + num_kv_heads) * half
        if total:
            self._launch("rope", (_grid(total, self.sm_count),), 256,
                         (qkv, position_ids, cos, sin, np.int64(total), np.int32(num_heads + num_kv_heads),
                          np.int32(width), np.int32(half)))
        return qkv

    def gated_activation(self, gate_up, activation):
        if activation not in ACTIVATION_KINDS:
            raise ValueError(f"unknown activation {activation!r}")
        tokens, inner = int(gate_up.shape[0]), int(gate_up.shape[1]) // 2
        out = self._empty((tokens, inner))  # contiguous: cuBLAS reads it with ld = I
        if tokens:
            self._launch("gated_activation", (_grid(tokens * inner, self.sm_count),), 256,
                         (gate_up, out, np.int64(tokens * inner), np.int32(inner),
                          np.int32(ACTIVATION_KINDS[activation])))
        return out

    def decoder_attention(self, qkv, cu_seqlens, num_heads, num_kv_heads, scale, causal=True, window=None,
                          softcap=None):
        tokens = int(qkv.shape[0])
        d = int(qkv.shape[1]) // (num_heads + 2 * num_kv_heads)
        if d > MAX_HEAD_DIM:
            raise TinyEmbedError(f"decoder_attention: head_dim {d} > {MAX_HEAD_DIM} is not supported")
        out = self._empty((tokens, num_heads * d))
        n = int(cu_seqlens.size) - 1
        if tokens and n:
            warps = tokens * num_heads
            self._launch("decoder_attention", ((warps + 3) // 4,), 128,
                         (qkv, cu_seqlens, np.int32(n), out, np.int32(tokens), np.int32(num_heads),
                          np.int32(num_kv_heads), np.int32(d), np.float32(scale), np.int32(bool(causal)),
                          np.int32(window or 0), np.float32(softcap or 0.0)))
        return out

    def last_token(self, hidden, cu_seqlens):
        n, width = int(cu_seqlens.size) - 1, int(hidden.shape[1])
        out = self._empty((n, width))
        if n:
            self._launch("last_token", (n,), 256, (hidden, cu_seqlens, out, np.int32(width)))
        return out

    def l2_normalize(self, x):
        """(n, H) storage dtype -> (n, H) float32 unit rows: pool_normalize with one row per sequence."""
        import cupy

        self._enter()
        one_row_each = cupy.arange(int(x.shape[0]) + 1, dtype=cupy.int32)
        return self.pool_normalize(x, one_row_each, "cls")
