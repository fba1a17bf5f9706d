"""A stand-in for CuPy that runs the CUDA ops on the CPU: `CudaOps(device_module=cuda_emu_device)`.

Everything CudaOps (cuda_runtime.py, cuda_ops.py, cuda_decoder.py) takes from CuPy is here, and
nothing else: an attribute CuPy has and this module lacks raises AttributeError, a feature it
does not emulate raises NotImplementedError. So the same Python code that sizes grids, chooses
kernels, packs arguments, computes cuBLAS leading dimensions and moves batches runs unchanged:
    * RawModule compiles the exact NVRTC source text with g++ and the emulator header
      (kernels/cuda/emulate/) and launches through build/cuda_emu_launch.py, which checks every
      argument against the kernel's C signature;
    * device arrays are numpy arrays (DeviceArray) in allocations with 256-byte guard zones on
      both sides; after every launch and GEMM the guards are checked, so a kernel writing past
      an array it was given is an error;
    * gemmEx is cuda_emu_cublas.py (numpy, float32 accumulation, reading raw pointers with the
      leading dimensions given);
    * streams, events and pinned memory exist and are synchronous (everything runs in order);
      CUDA graph capture is not emulated (NotImplementedError).
The device has MULTIPROCESSORS SMs, few, so grid-stride loops really loop.
"""

from __future__ import annotations

import collections
import ctypes
import itertools

import numpy as np

from tinyembed.engine.build.cuda_emu_launch import EmulatorError, KernelLibrary
from tinyembed.engine.ops import cuda_emu_cublas as tinyembed_cublas  # noqa: F401 (cuda_ops.matmul reads it)
from tinyembed.engine.ops.cuda_emu_memory import (  # noqa: F401 (the CuPy-like face: tests use these)
    GUARD, DeviceArray, allocate, check_guards, find_allocation, is_host, _hosts, _ids)

float16, float32, float64, int32, int64, uint16, uint32, uint8 = (
    np.float16, np.float32, np.float64, np.int32, np.int64, np.uint16, np.uint32, np.uint8)
MULTIPROCESSORS = 4
launched: collections.Counter = collections.Counter()  # kernel name -> launches (tests spy on it)


# -- array creation ---------------------------------------------------------------------------
def empty(shape, dtype=np.float32):
    return allocate(shape, dtype)


def full(shape, fill_value, dtype=np.float32):
    out = allocate(shape, dtype)
    out.view(np.ndarray)[...] = fill_value
    return out


def zeros(shape, dtype=np.float32):
    return full(shape, 0, dtype)


def asarray(array, dtype=None):
    if isinstance(array, DeviceArray) and (dtype is None or np.dtype(dtype) == array.dtype):
        return array
    host = np.asarray(array, dtype=dtype)
    out = allocate(host.shape, host.dtype)
    out.view(np.ndarray)[...] = host
    return out


def arange(*args, dtype=None):
    return asarray(np.arange(*args, dtype=dtype))


def ascontiguousarray(array, dtype=None):
    if isinstance(array, DeviceArray) and array.flags.c_contiguous and (dtype is None or np.dtype(dtype) == array.dtype):
        return array
    return asarray(np.ascontiguousarray(array.view(np.ndarray) if isinstance(array, DeviceArray) else array, dtype))


# -- kernels ----------------------------------------------------------------------------------
class RawModule:
    """cupy.RawModule(code=..., options=..., backend=...): the code compiled for the CPU."""

    def __init__(self, code: str, options=(), backend: str = "nvrtc"):
        first = code.lstrip().split("\n", 1)[0]  # "// attention.cu: ..." names the cache file
        name = first[3:].split(":")[0].strip() if first.startswith("// ") and ".cu:" in first else "kernel.cu"
        defines = {}
        for option in options:
            if option.startswith("-D"):
                key, _, value = option[2:].partition("=")
                defines[key] = value or "1"
            elif option not in ("-std=c++17",):
                raise NotImplementedError(f"RawModule option {option!r} is not emulated")
        self.library = KernelLibrary.from_source(code, name, defines)

    def get_function(self, name: str):
        if name not in self.library.kernels:
            raise EmulatorError(f"no kernel {name!r} in this module (has {', '.join(self.library.kernels)})")
        return RawKernel(self.library, name)


class RawKernel:
    def __init__(self, library: KernelLibrary, name: str):
        self.library, self.name = library, name

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None):
        for i, arg in enumerate(args):
            if isinstance(arg, np.ndarray) and not isinstance(arg, DeviceArray):
                raise EmulatorError(f"{self.name}: argument {i} is a host numpy array, not a device array")
        launched[self.name] += 1
        self.library.launch(self.name, grid, block, args, shared_mem)
        check_guards()


class ElementwiseKernel:
    """Only the elementwise kernels CudaOps defines, by name, each with its numpy twin."""

    def __init__(self, in_params, out_params, operation, name):
        if name != "tinyembed_float32_to_bfloat16":
            raise NotImplementedError(f"ElementwiseKernel {name!r} is not emulated")
        self.name = name

    def __call__(self, x):
        bits = x.view(np.ndarray).astype(np.float32).view(np.uint32)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded[np.isnan(x.view(np.ndarray))] = 0x7FC0
        return asarray(rounded)


# -- the runtime: one device, synchronous streams ---------------------------------------------
class _Runtime:
    memcpyHostToHost, memcpyHostToDevice, memcpyDeviceToHost, memcpyDeviceToDevice = 0, 1, 2, 3
    CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
    _device = 0

    def getDeviceCount(self):
        return 1

    def getDevice(self):
        return self._device

    def memcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int):
        wants = {1: (is_host, find_allocation), 3: (find_allocation, find_allocation)}.get(kind)
        if wants is None:
            raise NotImplementedError(f"memcpyAsync kind {kind} is not emulated")
        src_ok, dst_ok = wants
        if not src_ok(src, nbytes) or not dst_ok(dst, nbytes):
            raise EmulatorError(f"memcpyAsync kind {kind}: {nbytes} bytes {src:#x} -> {dst:#x} outside the buffers")
        ctypes.memmove(dst, src, nbytes)


class Device:
    def __init__(self, index: int = 0):
        if index != 0:
            raise EmulatorError(f"the emulator has one device (asked for {index})")
        self.id = index
        self.attributes = {"MultiProcessorCount": MULTIPROCESSORS}

    def use(self):
        _Runtime._device = self.id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_stream_ids = itertools.count(1)
_current = None


class Stream:
    def __init__(self, non_blocking: bool = False, null: bool = False):
        self.ptr = 0 if null else next(_stream_ids)

    def use(self):
        global _current
        _current = self
        return self

    def synchronize(self):
        pass

    def wait_event(self, event):
        pass

    def begin_capture(self, *args, **kwargs):
        raise NotImplementedError("CUDA graph capture is not emulated (cuda_graphs.py runs on a GPU only)")


class Event:
    def __init__(self, disable_timing: bool = False):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


def _get_current_stream():
    global _current
    if _current is None:
        _current = Stream(null=True)
    return _current


def _alloc_pinned_memory(nbytes: int):
    buffer = (ctypes.c_char * int(nbytes))()
    start = ctypes.addressof(buffer)
    _hosts[next(_ids)] = (buffer, start, start + int(nbytes))
    return buffer


class _Cuda:
    runtime = _Runtime()
    Device, Stream, Event = Device, Stream, Event
    get_current_stream = staticmethod(_get_current_stream)
    alloc_pinned_memory = staticmethod(_alloc_pinned_memory)

    class device:  # noqa: N801 (cupy.cuda.device)
        @staticmethod
        def get_cublas_handle():
            return 1


cuda = _Cuda()
