"""cublasGemmEx for the CPU emulator (cuda_emu_device.py), in numpy, on raw device pointers.

Column-major, as cuBLAS: C (m x n, ldc) = alpha op(A) op(B) + beta C with op(A) m x k and op(B)
k x n, each read through its pointer and leading dimension exactly as cuBLAS would read it.
Every matrix must lie inside one live device allocation (a wrong leading dimension or a swapped
m/n reads past it: EmulatorError), the three data types must be the same storage type, the
compute type float32 and the pointer mode host. Products are summed in float32 and rounded
once to the storage type (round to nearest even), as CUBLAS_COMPUTE_32F does, though not in the
same order: compare with tolerances.
"""

from __future__ import annotations

import ctypes

import numpy as np

from tinyembed.engine.build.cuda_emu_launch import EmulatorError
from tinyembed.engine.ops.cuda_emu_memory import check_guards, find_allocation

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_POINTER_MODE_HOST, CUBLAS_POINTER_MODE_DEVICE = 0, 1
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1
_TYPES = {0: np.float32, 2: np.float16, 14: np.uint16}  # CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF
_pointer_mode = {}


def setStream(handle, stream):  # noqa: N802 (cuBLAS names)
    pass


def setPointerMode(handle, mode):  # noqa: N802
    _pointer_mode[handle] = mode


def _matrix(ptr: int, storage, rows: int, cols: int, ld: int, what: str) -> np.ndarray:
    """The rows x cols column-major matrix at ptr with leading dimension ld, as float32."""
    if ld < max(1, rows):
        raise EmulatorError(f"gemmEx: ld{what} = {ld} < {rows} rows")
    item = np.dtype(storage).itemsize
    count = ld * (cols - 1) + rows
    if not find_allocation(ptr, count * item):
        raise EmulatorError(f"gemmEx: {what} ({rows} x {cols}, ld {ld}) is not inside one device allocation")
    flat = np.ctypeslib.as_array((ctypes.c_uint8 * (count * item)).from_address(ptr)).view(storage)
    m = np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(item, ld * item))
    if storage == np.uint16:
        return (m.astype(np.uint32) << 16).view(np.float32)
    return m.astype(np.float32)


def _store(ptr: int, storage, values: np.ndarray, ld: int):
    rows, cols = values.shape
    item = np.dtype(storage).itemsize
    count = ld * (cols - 1) + rows
    flat = np.ctypeslib.as_array((ctypes.c_uint8 * (count * item)).from_address(ptr)).view(storage)
    out = np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(item, ld * item))
    if storage == np.uint16:
        bits = values.astype(np.float32).view(np.uint32)
        out[...] = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    else:
        out[...] = values.astype(storage)


def gemmEx(handle, transa, transb, m, n, k, alpha, A, atype, lda, B, btype, ldb, beta, C, ctype, ldc,  # noqa: N802
           compute_type, algo):
    if _pointer_mode.get(handle, CUBLAS_POINTER_MODE_HOST) != CUBLAS_POINTER_MODE_HOST:
        raise NotImplementedError("gemmEx with device-side alpha/beta is not emulated")
    if compute_type != CUBLAS_COMPUTE_32F:
        raise NotImplementedError(f"gemmEx compute type {compute_type} is not emulated")
    if not atype == btype == ctype or atype not in _TYPES:
        raise EmulatorError(f"gemmEx: data types {atype}/{btype}/{ctype}: the ops use one storage type")
    storage = _TYPES[atype]
    if min(m, n, k) <= 0:
        raise EmulatorError(f"gemmEx: m, n, k = {m}, {n}, {k}")
    a = _matrix(A, storage, *((m, k) if transa == CUBLAS_OP_N else (k, m)), lda, "A")
    b = _matrix(B, storage, *((k, n) if transb == CUBLAS_OP_N else (n, k)), ldb, "B")
    a = a if transa == CUBLAS_OP_N else a.T
    b = b if transb == CUBLAS_OP_N else b.T
    alpha_v = ctypes.c_float.from_address(alpha).value
    beta_v = ctypes.c_float.from_address(beta).value
    product = alpha_v * (a @ b)
    if beta_v != 0.0:
        product = product + beta_v * _matrix(C, storage, m, n, ldc, "C")
    elif not _matrix_fits(C, storage, m, n, ldc):
        raise EmulatorError(f"gemmEx: C ({m} x {n}, ld {ldc}) is not inside one device allocation")
    _store(C, storage, product.astype(np.float32), ldc)
    check_guards()


def _matrix_fits(ptr: int, storage, rows: int, cols: int, ld: int) -> bool:
    return ld >= rows and find_allocation(ptr, (ld * (cols - 1) + rows) * np.dtype(storage).itemsize)
