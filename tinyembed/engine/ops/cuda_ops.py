"""GPU ops: the same contract as NumpyOps (numpy_ops.py), run on an NVIDIA GPU through CuPy.

GEMMs go to cuBLAS (cublasGemmEx, fp32 accumulation); every other op is one of our kernels in
kernels/cuda/*.cu (same names as their numpy twins), compiled once per storage dtype with NVRTC by
cupy.RawModule and cached on disk by CuPy.

Storage: activations and matrix weights in the compute dtype (float16 by default, bfloat16 or
float32); biases, LayerNorm parameters and the token-type row stay float32 (1-D parameters).
CuPy has no bfloat16 dtype, so bf16 arrays are CuPy uint16 arrays holding the bits: only our
kernels and cuBLAS ever read them, and `to_host` widens them to float32.

The device, the kernel compile, launches and data movement are in cuda_runtime.py; this file
holds the ops and the launch configuration of each (grid, block, shared memory). CUDA graphs for small token buckets live
in cuda_graphs.py (TINYEMBED_CUDA_GRAPHS=1). Both are off by default until a GPU run has shown
they give the eager path's vectors (tests/test_cuda_graphs.py).
"""
from __future__ import annotations

import math

import numpy as np

from tinyembed.common.errors import TinyEmbedError
from tinyembed.engine.ops.cuda_decoder import CudaDecoderOps
from tinyembed.engine.ops.cuda_runtime import (  # noqa: F401 (the module's face: backend.py and tests use these)
    DTYPES, KERNEL_FILES, KERNELS, CudaRuntime, _cp, _round_up, available, device_count, kernel_dir, kernel_source,
    unavailable_reason)

POOL_MODES = {"cls": 0, "mean": 1, "last": 2}
TC_HEAD_DIMS = (32, 64, 128)  # head sizes with a tensor-core attention kernel
TC_BLOCK_M = 64  # queries per attention block (TC_BM in attention.cu)
NAIVE_MAX_HEAD_DIM = 256  # 32 * NAIVE_CHUNKS in attention.cu
MAX_GRID_Z = 65535


class CudaOps(CudaRuntime, CudaDecoderOps):
    """The ops contract of families/bert.py (and the decoders) on one GPU."""

    # -- the ops ----------------------------------------------------------------------------------
    def _rows_block(self, width: int) -> int | None:
        """Threads for a one-row-per-block fast kernel, or None when the row does not fit it."""
        if width % self.vec or width // self.vec > 1024:
            return None
        return _round_up(width // self.vec, 32)

    def embed(self, input_ids, position_ids, word, position, token_type0, ln_w, ln_b, eps):
        """(T,) ids -> (T, H): word + position + token-type-0 embeddings, then LayerNorm."""
        tokens, width = int(input_ids.size), int(word.shape[1])
        out = self._empty((tokens, width))
        if tokens == 0:
            return out
        block = None if self.naive else self._rows_block(width)
        args = (input_ids, position_ids, word, position, token_type0, ln_w, ln_b, out,
                np.int32(width), np.int32(word.shape[0]), np.int32(position.shape[0]), np.float32(eps))
        self._launch("embed" if block else "embed_naive", (tokens,), block or 256, args)
        return out

    def matmul(self, x, w):
        """(T, K) @ (K, N) -> (T, N) on cuBLAS, fp32 accumulation, output in the storage dtype."""
        cp = _cp()
        from cupy_backends.cuda.libs import cublas

        tokens, k = x.shape
        k2, n = w.shape
        if k != k2:
            raise ValueError(f"matmul: ({tokens}, {k}) @ ({k2}, {n})")
        y = self._empty((tokens, n))
        if tokens == 0:
            return y
        self._enter()
        cuda_type = {np.float32: cp.cuda.runtime.CUDA_R_32F, np.float16: cp.cuda.runtime.CUDA_R_16F,
                     np.uint16: cp.cuda.runtime.CUDA_R_16BF}[self.storage]
        handle = cp.cuda.device.get_cublas_handle()
        cublas.setStream(handle, self.stream.ptr)
        cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)  # alpha/beta are host floats
        # Row-major Y = X W is column-major Y^T = W^T X^T: W^T is W's buffer with ld = N.
        cublas.gemmEx(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, tokens, k,
                      self._one.ctypes.data, w.data.ptr, cuda_type, n,
                      x.data.ptr, cuda_type, k,
                      self._zero.ctypes.data, y.data.ptr, cuda_type, n,
                      cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT)
        return y

    def _bias_epilogue(self, kernel: str, y, b):
        tokens, width = y.shape
        total = tokens * width
        if total == 0:
            return y
        fast = not self.naive and width % self.vec == 0
        items = total // self.vec if fast else total
        grid = min((items + 255) // 256, self.sm_count * 16)  # grid-stride beyond that
        self._launch(kernel if fast else kernel + "_naive", (grid,), 256,
                     (y, b, np.int64(total), np.int32(width)))
        return y

    def linear(self, x, w, b):
        """(T, K) @ (K, N) + b -> (T, N)."""
        return self._bias_epilogue("bias_add", self.matmul(x, w), b)

    def bias_gelu(self, y, b):
        """(T, I): y + b, then exact (erf) GELU, in place."""
        return self._bias_epilogue("bias_gelu", y, b)

    def bias_residual_layernorm(self, y, b, residual, ln_w, ln_b, eps):
        """(T, H): LayerNorm(y + b + residual), in place in y."""
        tokens, width = y.shape
        if tokens == 0:
            return y
        block = None if self.naive else self._rows_block(width)
        self._launch("bias_residual_layernorm" if block else "bias_residual_layernorm_naive", (tokens,),
                     block or 256, (y, b, residual, ln_w, ln_b, np.int32(width), np.float32(eps)))
        return y

    def attention(self, qkv, cu_seqlens, max_len, num_heads):
        """(T, 3H) fused Q|K|V -> (T, H): softmax(QK^T / sqrt(d)) V within each sequence.
        `max_len` must be at least the longest sequence (Batch.max_len)."""
        tokens, width3 = qkv.shape
        width = width3 // 3
        head_dim = width // num_heads
        out = self._empty((tokens, width))
        n = int(cu_seqlens.size) - 1
        if tokens == 0 or n == 0:
            return out
        scale = 1.0 / math.sqrt(head_dim)
        tensor_cores = (not self.naive and self.storage != np.float32 and head_dim in TC_HEAD_DIMS
                        and width % 8 == 0)
        if tensor_cores:
            q_tiles = max(1, (int(max_len) + TC_BLOCK_M - 1) // TC_BLOCK_M)  # never a zero-sized grid
            scale_log2 = np.float32(scale * math.log2(math.e))
            for first in range(0, n, MAX_GRID_Z):  # grid.z is the sequence (at most 65535)
                self._launch(f"attention_d{head_dim}", (q_tiles, num_heads, min(MAX_GRID_Z, n - first)), 128,
                             (qkv, cu_seqlens[first:], out, np.int32(num_heads), scale_log2))
            return out
        if head_dim > NAIVE_MAX_HEAD_DIM:
            raise TinyEmbedError(f"attention: head_dim {head_dim} > {NAIVE_MAX_HEAD_DIM} is not supported")
        warps = tokens * num_heads
        self._launch("attention_naive", ((warps + 3) // 4,), 128,
                     (qkv, cu_seqlens, np.int32(n), out, np.int32(tokens), np.int32(num_heads),
                      np.int32(head_dim), np.float32(scale)))
        return out

    def pool_normalize(self, hidden, cu_seqlens, mode, dimensions: int | None = None):
        """(T, H) -> (n, dims) float32: CLS / mean / last-token pooling of the first `dimensions`
        columns (all when None), then L2 normalization (Matryoshka truncation in one pass)."""
        width = int(hidden.shape[1])
        dims = width if dimensions is None else int(dimensions)
        if not 1 <= dims <= width:
            raise TinyEmbedError(f"dimensions must be in 1..{width}, got {dims}")
        if mode not in POOL_MODES:
            raise TinyEmbedError(f"pooling mode {mode!r}: use one of {', '.join(POOL_MODES)}")
        n = int(cu_seqlens.size) - 1
        out = self._empty((n, dims), np.float32)
        if n == 0:
            return out
        vectors = (dims + self.vec - 1) // self.vec
        fast = not self.naive and width % self.vec == 0 and vectors <= 1024
        self._launch("pool_normalize" if fast else "pool_normalize_naive", (n,),
                     _round_up(vectors, 32) if fast else 256,
                     (hidden, cu_seqlens, out, np.int32(width), np.int32(dims), np.int32(POOL_MODES[mode])))
        return out
