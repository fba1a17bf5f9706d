"""The emulated CuPy (tinyembed/engine/ops/cuda_emu_device.py) fails loudly where it does not
emulate something or where a GPU would misbehave, instead of computing on."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine.build.cuda_emu_launch import EmulatorError
from tinyembed.engine.ops import cuda_emu_cublas as cublas
from tinyembed.engine.ops import cuda_emu_device as dev
from cuda_emu_helpers import emulated_ops, needs_cxx, probes

pytestmark = needs_cxx


def test_what_is_not_emulated_raises():
    with pytest.raises(NotImplementedError, match="graph capture"):
        dev.cuda.Stream().begin_capture()
    with pytest.raises(NotImplementedError, match="not emulated"):
        dev.ElementwiseKernel("float32 x", "float32 y", "y = x", "some_other_kernel")
    with pytest.raises(NotImplementedError, match="option"):
        dev.RawModule("// k.cu: x\n", ("-use_fast_math",))
    with pytest.raises(AttributeError):
        dev.cuda.runtime.deviceSynchronize()


def test_a_host_array_passed_to_a_kernel_is_an_error():
    ops = emulated_ops("float32")
    y = dev.zeros((2, 8), np.float32)
    with pytest.raises(EmulatorError, match="host numpy array"):
        ops._kernels["bias_add"]((1,), (32,), (y, np.zeros(8, np.float32), np.int64(16), np.int32(8)))


def test_a_write_past_an_allocation_is_caught_by_its_guard_zone():
    out = dev.zeros(40, np.int32)
    body = out.view(np.ndarray)
    kernel = dev.RawKernel(probes(), "probe_exit_before_barrier")
    kernel((1,), (64,), (out,))  # writes 40 ints: inside
    spill = np.lib.stride_tricks.as_strided(body, shape=(41,), strides=(4,))
    spill[40] = 1  # what a kernel writing one element too many does
    with pytest.raises(EmulatorError, match="guard zone"):
        dev.check_guards()


def test_gemm_arguments_outside_the_allocations_are_errors():
    a, b, c = dev.zeros((4, 8), np.float32), dev.zeros((8, 3), np.float32), dev.zeros((4, 3), np.float32)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)

    def gemm(m, n, k, lda, ldb, ldc, types=(0, 0, 0)):
        cublas.gemmEx(1, 0, 0, m, n, k, one.ctypes.data, b.data.ptr, types[0], lda, a.data.ptr, types[1], ldb,
                      zero.ctypes.data, c.data.ptr, types[2], ldc, cublas.CUBLAS_COMPUTE_32F, -1)

    gemm(3, 4, 8, 3, 8, 3)  # row-major C = A B as column-major C^T = B^T A^T: fits
    with pytest.raises(EmulatorError, match="not inside one device allocation"):
        gemm(3, 4, 8, 4, 8, 3)  # ld of B one too large: reads past b
    with pytest.raises(EmulatorError, match="data types"):
        gemm(3, 4, 8, 3, 8, 3, types=(2, 0, 0))
