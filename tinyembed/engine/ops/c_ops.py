"""CPU ops on our C kernels (kernels/cpu/*.c): NumpyOps' contract, with every non-GEMM op fused.

GEMMs stay in numpy's BLAS, written into reused buffers (np.matmul(out=...)): a fresh 100 MB
activation costs as much in page faults as a GELU pass. Embedding, bias + GELU, bias + residual
+ LayerNorm, attention and pooling are one C call each per row range; ctypes releases the GIL,
so the calling thread and NumpyOps' pool threads run ranges side by side. Small work runs in the
calling thread alone: a pool hand-off costs tens of microseconds.

`make_cpu_ops()` picks this class when the kernels build (cpu_compile.py) and NumpyOps otherwise
(no compiler, a failed build, or TINYEMBED_CPU_KERNELS=numpy), logging one line that says which.
"""

from __future__ import annotations

import ctypes
import logging
import os
from ctypes import c_float, c_int, c_long, c_void_p

import numpy as np

from tinyembed.engine.build import cpu_compile
from tinyembed.engine.build.cpu_threads import available_cores
from tinyembed.engine.ops.arena import Arena
from tinyembed.engine.ops.numpy_ops import NumpyOps

log = logging.getLogger("tinyembed")

POOL_MODES = {"cls": 0, "mean": 1, "last": 2}
_P, _I, _L, _F = c_void_p, c_int, c_long, c_float
SIGNATURES = {  # C entry point -> (argtypes, restype)
    "embed": ((_P, _P, _P, _P, _P, _P, _P, _F, _I, _P, _L, _L), None),
    "bias_gelu": ((_P, _P, _I, _L, _L), None),
    "bias_add": ((_P, _P, _I, _L, _L), None),
    "bias_residual_layernorm": ((_P, _P, _P, _P, _P, _F, _I, _L, _L), None),
    "attention": ((_P, _P, _P, _I, _I, _L, _L), _I),
    "pool_normalize": ((_P, _P, _I, _I, _P, _L, _L), None),
}
NAIVE = {name: name + "_naive" for name in SIGNATURES if name != "bias_add"}
MIN_ELEMENTS_PER_THREAD = 96 * 1024  # elementwise work below this runs in the calling thread
MIN_ATTENTION_FLOPS_PER_THREAD = 4e6
# A GEMM below this many FLOPs runs on one BLAS thread: waking a second thread costs more than
# it saves, and when a neighbour holds the other core, a multi-threaded OpenBLAS waits for it
# for whole scheduler time slices (measured: a 16-token forward 250 ms instead of 3 ms).
MIN_GEMM_FLOPS_PER_THREAD = 48e6


def _ptr(array: np.ndarray, dtype=np.float32) -> int:
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"C kernels need C-contiguous {np.dtype(dtype).name} arrays, got {array.dtype}")
    return array.ctypes.data


class COps(NumpyOps):
    kernels = "c"

    def __init__(self, lib: ctypes.CDLL, threads: int | None = None, naive: bool = False):
        super().__init__(threads or available_cores())
        self.library = lib
        self.naive = naive
        self._fn = {}
        for name, (argtypes, restype) in SIGNATURES.items():
            fn = getattr(lib, NAIVE.get(name, name) if naive else name)
            fn.argtypes, fn.restype = argtypes, restype
            self._fn[name] = fn
        self.arena = Arena()  # work buffers, sized by Engine.reserve_work from the batch cap
        # BLAS and the kernels take turns, so each may use every available core, but no more:
        # an OpenBLAS sized by os.cpu_count() in a 1-CPU container spins threads on one core.
        self._set_blas_threads(self.threads)

    # -- buffers ------------------------------------------------------------------------------
    def _buffer(self, rows: int, cols: int) -> np.ndarray:
        """A (rows, cols) float32 work buffer from the arena (ops/arena.py): reused between batches."""
        return self.arena.take(rows, cols)

    def _new_output(self, rows: int, cols: int) -> np.ndarray:
        return np.empty((rows, cols), dtype=np.float32)

    # -- splitting work -----------------------------------------------------------------------
    def _split(self, fn, args: tuple, total: int, threads: int, bounds=None) -> None:
        """fn(*args, begin, end) over 0..total in `threads` ranges: the calling thread runs the
        first, the pool the others."""
        if threads <= 1 or total <= 1:
            fn(*args, 0, total)
            return
        if bounds is None:
            bounds = [total * i // threads for i in range(threads + 1)]
        jobs = [self._pool.submit(fn, *args, bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)]
        fn(*args, bounds[0], bounds[1])
        for job in jobs:
            job.result()

    def _rows_threads(self, rows: int, width: int) -> int:
        return max(1, min(self.threads, rows, rows * width // MIN_ELEMENTS_PER_THREAD))

    # -- the ops ------------------------------------------------------------------------------
    def embed(self, input_ids, position_ids, word, position, token_type0, ln_w, ln_b, eps):
        ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        pos = np.ascontiguousarray(position_ids, dtype=np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= word.shape[0] or pos.min() < 0 or pos.max() >= position.shape[0]):
            raise IndexError("token or position id out of range of the embedding table")
        rows, width = ids.shape[0], word.shape[1]
        out = self._buffer(rows, width)
        args = (_ptr(ids, np.int32), _ptr(pos, np.int32), _ptr(word), _ptr(position), _ptr(token_type0),
                _ptr(ln_w), _ptr(ln_b), eps, width, _ptr(out))
        self._split(self._fn["embed"], args, rows, self._rows_threads(rows, width))
        return out

    def _set_blas_threads(self, n: int) -> None:
        # For the calling thread, on every call (about a microsecond; ops/blas_threads.py says
        # why the process-wide setting is not enough): OpenBLAS's result depends on its thread
        # count, so every GEMM of one shape must run with the same count on any thread.
        self._gemm_threads.set(n)

    def matmul(self, x, w):
        out = self._buffer(x.shape[0], w.shape[1])
        flops = 2.0 * x.shape[0] * x.shape[1] * w.shape[1]
        self._set_blas_threads(max(1, min(self.threads, int(flops // MIN_GEMM_FLOPS_PER_THREAD))))
        return np.matmul(x, w, out=out)

    def linear(self, x, w, b):
        y = self.matmul(x, w)
        rows, width = y.shape
        self._split(self._fn["bias_add"], (_ptr(y), _ptr(b), width), rows, self._rows_threads(rows, width))
        return y

    def bias_gelu(self, y, b):
        rows, width = y.shape
        self._split(self._fn["bias_gelu"], (_ptr(y), _ptr(b), width), rows, self._rows_threads(rows, 2 * width))
        return y

    def bias_residual_layernorm(self, y, b, residual, ln_w, ln_b, eps):
        rows, width = y.shape
        if residual.shape != y.shape:
            raise ValueError(f"residual {residual.shape} does not match {y.shape}")
        args = (_ptr(y), _ptr(b), _ptr(residual), _ptr(ln_w), _ptr(ln_b), eps, width)
        self._split(self._fn["bias_residual_layernorm"], args, rows, self._rows_threads(rows, width))
        return y

    def attention(self, qkv, cu_seqlens, max_len, num_heads):
        total, width3 = qkv.shape
        width = width3 // 3
        cu = np.ascontiguousarray(cu_seqlens, dtype=np.int32)
        out = self._buffer(total, width)
        items = (len(cu) - 1) * num_heads
        # cost per (sequence, head): the L^2 score work plus the L packing work
        lengths = np.diff(cu).astype(np.float64)
        cost = np.repeat(lengths * (lengths + 8.0), num_heads)
        flops = 4.0 * float(cost.sum()) * (width // num_heads)
        threads = max(1, min(self.threads, items, int(flops // MIN_ATTENTION_FLOPS_PER_THREAD)))
        bounds = None
        if threads > 1:  # contiguous item ranges of about equal cost
            cum = np.cumsum(cost)
            cuts = np.searchsorted(cum, cum[-1] * np.arange(1, threads) / threads)
            bounds = [0, *sorted(set(int(c) + 1 for c in cuts if 0 <= c < items - 1)), items]
            threads = len(bounds) - 1
        status = []
        fn = self._fn["attention"]

        def run(*args):
            status.append(fn(*args))

        self._split(run, (_ptr(qkv), _ptr(out), _ptr(cu, np.int32), num_heads, width), items, threads, bounds)
        if any(status):
            raise MemoryError(f"attention kernel failed (status {status}): head size {width // num_heads}?")
        return out

    def pool_normalize(self, hidden, cu_seqlens, mode):
        cu = np.ascontiguousarray(cu_seqlens, dtype=np.int32)
        n, width = len(cu) - 1, hidden.shape[1]
        out = self._new_output(n, width)  # returned to the caller: never a reused buffer
        self._fn["pool_normalize"](_ptr(hidden), _ptr(cu, np.int32), width, POOL_MODES[mode], _ptr(out), 0, n)
        return out


def make_cpu_ops(threads: int | None = None):
    """COps when the C kernels build and load, else NumpyOps; one log line says which and why."""
    choice = os.environ.get("TINYEMBED_CPU_KERNELS", "c").strip().lower()
    if choice == "numpy":
        ops = NumpyOps(threads or available_cores())
        log.info("cpu kernels: numpy (TINYEMBED_CPU_KERNELS=numpy), %d threads", ops.threads)
        return ops
    try:
        lib, path, built = cpu_compile.load(tuple(SIGNATURES) + tuple(NAIVE.values()))
    except cpu_compile.CpuBuildError as exc:
        ops = NumpyOps(threads or available_cores())
        log.warning("cpu kernels: numpy (C kernels unavailable: %s), %d threads", exc, ops.threads)
        return ops
    ops = COps(lib, threads, naive=choice == "naive")
    log.info("cpu kernels: C%s (%s %s), %d threads", " naive" if ops.naive else "",
             "built" if built else "cached", path, ops.threads)
    return ops
