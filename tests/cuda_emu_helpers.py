"""Shared by the CUDA emulator tests (tests/test_cuda_emu_*.py): the probe kernels, emulated
CudaOps per (dtype, kernels), and the skip when there is no C++ compiler (.ci/run installs g++,
so in CI that skip fails the run: tests/ci_skips.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinyembed.engine.build.cuda_emu_launch import KernelLibrary
from tinyembed.engine.ops import cuda_emu_device
from tinyembed.engine.ops.cuda_ops import CudaOps

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "tests" / "fixtures" / "cuda_emu" / "probes.cu"
HAVE_CXX = shutil.which("g++") is not None
needs_cxx = pytest.mark.skipif(not HAVE_CXX, reason="needs g++ for the CUDA emulator (apt-get install g++)")
_OPS: dict[tuple[str, str], CudaOps] = {}


def probes() -> KernelLibrary:
    return KernelLibrary.from_source(PROBES.read_text(), "probes.cu", {})


def emulated_ops(dtype: str, kernels: str = "fast") -> CudaOps:
    """CudaOps on the CPU emulator, outputs poisoned (NaN until a kernel writes them)."""
    key = (dtype, kernels)
    if key not in _OPS:
        _OPS[key] = CudaOps(0, dtype, kernels=kernels, poison_outputs=True, device_module=cuda_emu_device)
        _OPS[key].prepare_decoder_kernels()
    return _OPS[key]
