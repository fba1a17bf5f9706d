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
import weakref

import numpy as np

from tinyembed.engine.build.cuda_emu_build import sanitizing
from tinyembed.engine.build.cuda_emu_launch import EmulatorError, KernelLibrary
from tinyembed.engine.ops import cuda_emu_cublas as tinyembed_cublas  # noqa: F401 (cuda_ops.matmul reads it)

float16, float32, float64, int32, int64, uint16, uint32, uint8 = (
    np.float16, np.float32, np.float64, np.int32, np.int64, np.uint16, np.uint32, np.uint8)
MULTIPROCESSORS = 4
GUARD = 256  # bytes before and after every allocation; CuPy aligns allocations to 256 bytes too
_GUARD_BYTE = 0xA5
# id -> (owner, first byte, end, guarded): every buffer a DeviceArray lives in. Those made here
# carry guard zones of GUARD bytes before `first` and after `end`; those numpy makes for results
# (astype, <<, copy) are registered by DeviceArray.__array_finalize__, without guards.
_allocations: dict[int, tuple[weakref.ref, int, int, bool]] = {}
_hosts: dict[int, tuple[object, int, int]] = {}  # pinned host buffers (kept: few, reused by CudaOps)
_ids = itertools.count()
launched: collections.Counter = collections.Counter()  # kernel name -> launches (tests spy on it)


class _Pointer:
    def __init__(self, ptr: int):
        self.ptr = ptr


class DeviceArray(np.ndarray):
    """A numpy array standing for a CuPy array: `.data.ptr`, `.get()`, `.set()`."""

    @property
    def data(self):
        return _Pointer(self.__array_interface__["data"][0])

    def __array_finalize__(self, obj):
        if self.base is None and self.nbytes:  # numpy allocated a result: device memory too
            first = self.__array_interface__["data"][0]
            _allocations[next(_ids)] = (weakref.ref(self), first, first + self.nbytes, False)

    def get(self, stream=None, out=None):
        return np.array(self.view(np.ndarray), copy=True)

    def set(self, array, stream=None):
        self.view(np.ndarray)[...] = array


def _allocate(shape, dtype) -> DeviceArray:
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if sanitizing():  # each array its own malloc: AddressSanitizer's redzones catch reads too
        own = np.empty(shape, dtype)
        first = own.ctypes.data
        _allocations[next(_ids)] = (weakref.ref(own), first, first + nbytes, False)
        return own.view(DeviceArray)
    raw = np.empty(nbytes + 3 * GUARD, dtype=np.uint8)
    start = (-raw.ctypes.data) % GUARD  # the array itself 256-aligned, as CuPy's allocations
    raw[:] = _GUARD_BYTE
    body = raw[start + GUARD:start + GUARD + nbytes]
    first = raw.ctypes.data + start + GUARD
    _allocations[next(_ids)] = (weakref.ref(raw), first, first + nbytes, True)
    return body.view(dtype).reshape(shape).view(DeviceArray)


def check_guards():
    """Raise EmulatorError if any live allocation's guard zones were written."""
    for key, (ref, first, end, guarded) in list(_allocations.items()):
        raw = ref()
        if raw is None:
            del _allocations[key]
            continue
        if not guarded:
            continue
        lo = first - raw.ctypes.data
        hi = lo + (end - first)
        before, after = raw[lo - GUARD:lo], raw[hi:hi + GUARD]
        if (before != _GUARD_BYTE).any() or (after != _GUARD_BYTE).any():
            raw[lo - GUARD:lo] = _GUARD_BYTE
            raw[hi:hi + GUARD] = _GUARD_BYTE
            raise EmulatorError(f"a write outside an allocation of {end - first} bytes (guard zone changed)")


def find_allocation(ptr: int, nbytes: int) -> bool:
    """True when [ptr, ptr + nbytes) lies inside one live device allocation."""
    return any(first <= ptr and ptr + nbytes <= end and ref() is not None
               for ref, first, end, _ in list(_allocations.values()))


def _is_host(ptr: int, nbytes: int) -> bool:
    return any(start <= ptr and ptr + nbytes <= end for _, start, end in _hosts.values())


# -- array creation ---------------------------------------------------------------------------
def empty(shape, dtype=np.float32):
    return _allocate(shape, dtype)


def full(shape, fill_value, dtype=np.float32):
    out = _allocate(shape, dtype)
    out.view(np.ndarray)[...] = fill_value
    return out


def zeros(shape, dtype=np.float32):
    return full(shape, 0, dtype)


def asarray(array, dtype=None):
    if isinstance(array, DeviceArray) and (dtype is None or np.dtype(dtype) == array.dtype):
        return array
    host = np.asarray(array, dtype=dtype)
    out = _allocate(host.shape, host.dtype)
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
        wants = {1: (_is_host, find_allocation), 3: (find_allocation, find_allocation)}.get(kind)
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
