"""Device memory of the CPU emulator (cuda_emu_device.py): DeviceArray, the numpy array that
stands for a CuPy array, and the registry of live allocations that launches (guard zones) and
gemmEx and memcpy (extents) check against."""

from __future__ import annotations

import itertools
import weakref

import numpy as np

from tinyembed.engine.build.cuda_emu_build import sanitizing
from tinyembed.engine.build.cuda_emu_launch import EmulatorError

GUARD = 256  # bytes before and after every allocation; CuPy aligns allocations to 256 bytes too
_GUARD_BYTE = 0xA5
# id -> (owner, first byte, end, guarded): every buffer a DeviceArray lives in. Those made here
# carry guard zones of GUARD bytes before `first` and after `end`; those numpy makes for results
# (astype, <<, copy) are registered by DeviceArray.__array_finalize__, without guards.
_allocations: dict[int, tuple[weakref.ref, int, int, bool]] = {}
_hosts: dict[int, tuple[object, int, int]] = {}  # pinned host buffers (kept: few, reused by CudaOps)
_ids = itertools.count()


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


def allocate(shape, dtype) -> DeviceArray:
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


def is_host(ptr: int, nbytes: int) -> bool:
    return any(start <= ptr and ptr + nbytes <= end for _, start, end in _hosts.values())
