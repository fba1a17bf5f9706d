"""CPU ops on our C kernels (kernels/cpu/*.c): NumpyOps' contract, with every non-GEMM op fused.

A model's linear layers run on our GEMMs over weights packed once at load (`linear_weight`:
float32 panels, or int8 with `precision="int8"`; ops/c_int8.py); a plain ndarray weight still
goes to numpy's BLAS. Outputs land in reused buffers: a fresh 100 MB activation costs as much
in page faults as a GELU pass. Small batches run all layers in one C call (`encoder_layers`,
kernels/cpu/encoder_layer.c) on the calling thread. Embedding, bias + GELU, bias + residual
+ LayerNorm, attention and pooling are one C call each per row range; ctypes releases the GIL,
so the calling thread and NumpyOps' pool threads run ranges side by side. Small work runs in the
calling thread alone: a pool hand-off costs tens of microseconds.

`make_cpu_ops()` picks this class when the kernels build (cpu_compile.py) and NumpyOps otherwise
(no compiler, a failed build, or TINYEMBED_CPU_KERNELS=numpy), logging one line that says which.
int8 uses AVX-512 VNNI / AVX-VNNI when the CPU has them and portable C otherwise (or when
TINYEMBED_CPU_INT8=portable), said in the same line; both give bit-identical vectors.
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
from tinyembed.engine.ops.c_decoder import DecoderCOps
from tinyembed.engine.ops.c_fused import FusedLayers
from tinyembed.engine.ops.c_int8 import PackedLinear, pack_f32, pack_int8
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.ops.work_split import cost_bounds

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
    "gemm_f32_packed": ((_P, _P, _P, _P, _I, _I, _I, _L, _L), None),
    "quantize_rows": ((_P, _I, _I, _P, _P, _P, _L, _L), None),
    "gemm_int8": ((_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _L, _L), None),
    "gemm_int8_portable": ((_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _L, _L), None),
    "int8_isa": ((), _I),
    "encoder_layers": ((_P, _I, _I, _F, _I, _P, _P, _I, _L, _P, _P, _P, _P, _P), _I),
}
NAIVE = {name: name + "_naive" for name in ("embed", "bias_gelu", "bias_residual_layernorm", "attention",
                                            "pool_normalize")}
NAIVE["gemm_f32_packed"] = "gemm_f32_naive"
PRECISIONS = ("fp32", "int8")
EPILOGUE = {None: 0, "bias": 1, "gelu": 2}  # what a GEMM does to its rows after the sums
# All layers in one C call on the calling thread up to this many tokens (with 1 thread: always):
# below it, splitting each GEMM over the pool costs more hand-offs than a second core saves.
# Above it, a batch of several sequences is cut at a sequence boundary into one part per thread,
# each part one C call (sequences never mix in an encoder), when the cut is this even or better.
FUSED_MAX_TOKENS = 48
FUSED_MIN_SHARE = 0.35
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


class COps(DecoderCOps, NumpyOps):  # decoder ops: c_decoder.py
    kernels = "c"

    def __init__(self, lib: ctypes.CDLL, threads: int | None = None, naive: bool = False,
                 precision: str = "fp32", int8_portable: bool = False):
        super().__init__(threads or available_cores())
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.library = lib
        self.naive = naive
        self.precision = precision
        self.int8_isa = 0 if int8_portable else lib.int8_isa()  # 512 / 256: VNNI; 0: portable C
        self._fn = {}
        for name, (argtypes, restype) in SIGNATURES.items():
            fn = getattr(lib, NAIVE.get(name, name) if naive else name)
            fn.argtypes, fn.restype = argtypes, restype
            self._fn[name] = fn
        self._gemm_int8 = self._fn["gemm_int8" if self.int8_isa else "gemm_int8_portable"]
        self.arena = Arena()  # work buffers, sized by Engine.reserve_work from the batch cap
        # BLAS and the kernels take turns, so each may use every available core, but no more:
        # an OpenBLAS sized by os.cpu_count() in a 1-CPU container spins threads on one core.
        self._set_blas_threads(self.threads)

    # -- buffers ------------------------------------------------------------------------------
    def _buffer(self, rows: int, cols: int, dtype=np.float32, rows_hint: int | None = None) -> np.ndarray:
        """A (rows, cols) work buffer from the arena (ops/arena.py): reused between batches."""
        return self.arena.take(rows, cols, dtype, rows_hint)

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

    def linear_weight(self, w: np.ndarray) -> PackedLinear:
        """A (K, N) GEMM weight packed once at load for this ops' precision."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        return pack_int8(w) if self.precision == "int8" else pack_f32(w)

    def matmul(self, x, w, bias=None, epilogue=None):
        """(T, K) @ (K, N); a packed weight may fuse `epilogue` ("bias" or "gelu") with `bias`."""
        if isinstance(w, PackedLinear):
            return self._packed_gemm(x, w, bias, EPILOGUE[epilogue])
        out = self._buffer(x.shape[0], w.shape[1])
        flops = 2.0 * x.shape[0] * x.shape[1] * w.shape[1]
        self._set_blas_threads(max(1, min(self.threads, int(flops // MIN_GEMM_FLOPS_PER_THREAD))))
        return np.matmul(x, w, out=out)

    def _packed_gemm(self, x, w: PackedLinear, bias, epilogue: int):
        rows = x.shape[0]
        if x.shape[1] != w.k:
            raise ValueError(f"x has {x.shape[1]} columns, the weight {w.k} rows")
        out = self._buffer(rows, w.n)
        b = _ptr(bias) if epilogue else None
        threads = max(1, min(self.threads, rows, int(2.0 * rows * w.k * w.n // MIN_GEMM_FLOPS_PER_THREAD)))
        if w.q is None:
            args = (_ptr(x), _ptr(w.f32), b, _ptr(out), w.k, w.n, epilogue)
            self._split(self._fn["gemm_f32_packed"], args, rows, threads)
            return out
        xq, xs, xz = self._buffer(rows, w.kp, np.uint8), self._buffer(rows, 1), self._buffer(rows, 1, np.int32)
        quantize, gemm = self._fn["quantize_rows"], self._gemm_int8
        xargs = (_ptr(xq, np.uint8), _ptr(xs), _ptr(xz, np.int32))
        wargs = (_ptr(w.q, np.int8), _ptr(w.scale), _ptr(w.sum, np.int32), b, _ptr(out), w.kp, w.n, epilogue)

        def run(begin, end):
            quantize(_ptr(x), w.k, w.kp, *xargs, begin, end)
            gemm(*xargs, *wargs, begin, end)

        self._split(run, (), rows, threads)
        return out

    def fuse_layers(self, layers: list[dict], num_heads: int, eps: float):
        """The encoder's layers as one C call per thread (c_fused.py): a callable (x, cu_seqlens)
        -> x with a `takes(cu_seqlens)` test, or None when the weights are not packed."""
        gemms = ("qkv_w", "out_w", "ffn_in_w", "ffn_out_w")
        if self.naive or not layers or not all(isinstance(p[name], PackedLinear) for p in layers for name in gemms):
            return None
        return FusedLayers(self, layers, num_heads, eps, FUSED_MAX_TOKENS, FUSED_MIN_SHARE)

    def linear(self, x, w, b):
        if isinstance(w, PackedLinear):
            return self._packed_gemm(x, w, b, EPILOGUE["bias"])
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
        threads, bounds = cost_bounds(cost, threads)  # contiguous item ranges of about equal cost
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


def make_cpu_ops(threads: int | None = None, precision: str = "fp32"):
    """COps when the C kernels build and load, else NumpyOps; one log line says which and why
    (and, for int8, which instructions run it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    choice = os.environ.get("TINYEMBED_CPU_KERNELS", "c").strip().lower()
    int8_note = ", int8 needs the C kernels: running fp32" if precision == "int8" else ""
    if choice == "numpy":
        ops = NumpyOps(threads or available_cores())
        log.info("cpu kernels: numpy (TINYEMBED_CPU_KERNELS=numpy)%s, %d threads", int8_note, ops.threads)
        return ops
    try:
        lib, path, built = cpu_compile.load(tuple(SIGNATURES) + tuple(NAIVE.values()))
    except cpu_compile.CpuBuildError as exc:
        ops = NumpyOps(threads or available_cores())
        log.warning("cpu kernels: numpy (C kernels unavailable: %s)%s, %d threads", exc, int8_note, ops.threads)
        return ops
    forced = os.environ.get("TINYEMBED_CPU_INT8", "").strip().lower() == "portable"
    ops = COps(lib, threads, naive=choice == "naive", precision=precision, int8_portable=forced)
    log.info("cpu kernels: C%s (%s %s), %s, %d threads", " naive" if ops.naive else "",
             "built" if built else "cached", path, describe_precision(ops, forced), ops.threads)
    return ops


def describe_precision(ops: COps, forced: bool) -> str:
    if ops.precision == "fp32":
        return "fp32"
    if ops.int8_isa:
        return f"int8 on {'AVX-512 VNNI' if ops.int8_isa == 512 else 'AVX-VNNI'}"
    why = "TINYEMBED_CPU_INT8=portable" if forced else "this CPU has no AVX-512 VNNI / AVX-VNNI"
    return f"int8 on portable C ({why}; same vectors, slower than fp32)"
