"""Load an emulated kernel library (build.py) and launch its kernels on numpy buffers.

    lib = KernelLibrary.from_source(text, "gelu.cu", {"TE_DTYPE": "1"})
    lib.launch("bias_gelu", grid=(4,), block=(256,), args=(y, bias, np.int64(n), np.int32(w)))

Arguments are checked against the kernel's C signature before anything runs: an array's dtype
must be the pointee type (float16 for __half*, uint16 for the bits of __nv_bfloat16*, int32 for
int*), a scalar must be the numpy type of the parameter's exact width (np.int32 for int,
np.int64 for long long, np.float32 for float). A GPU would take the wrong width silently and
read garbage; here it is an EmulatorError, as is every fault the emulator finds in a kernel.

The order in which a block's threads run between meetings (emu_runtime.h) is set per thread of
the caller with `schedule(order, seed)`: "forward" (the default), "reversed" or "shuffled".
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path

import numpy as np

from tinyembed.engine.build.cuda_emu_build import build

ORDERS = {"forward": 0, "reversed": 1, "shuffled": 2}
_SCALARS = {"i32": np.int32, "u32": np.uint32, "i64": np.int64, "u64": np.uint64, "f32": np.float32,
            "f64": np.float64, "i16": np.int16, "u16": np.uint16, "i8": np.int8, "u8": np.uint8}
_POINTEES = {"f32": (np.float32,), "f16": (np.float16,), "bf16": (np.uint16,), "i32": (np.int32,),
             "u32": (np.uint32,), "i64": (np.int64,), "u64": (np.uint64,), "u16": (np.uint16,), "f64": (np.float64,),
             "u8": (np.uint8,), "i8": (np.int8,), "f32x4": (np.float32,), "f16x2": (np.float16,), "bf16x2": (np.uint16,)}
_lock = threading.Lock()  # one launch at a time: the runtime is one static object per library
_settings = threading.local()


class EmulatorError(RuntimeError):
    """A kernel fault found by the emulator, or a launch a GPU would reject or misread."""


@contextlib.contextmanager
def schedule(order: str = "forward", seed: int = 0):
    """Run the launches inside in this thread order (see the module docstring)."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: use one of {', '.join(ORDERS)}")
    saved = getattr(_settings, "value", ("forward", 0))
    _settings.value = (order, seed)
    try:
        yield
    finally:
        _settings.value = saved


def current_schedule() -> tuple[str, int]:
    return getattr(_settings, "value", ("forward", 0))


def _dims(value) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    if not 1 <= len(dims) <= 3:
        raise EmulatorError(f"grid/block {value!r}: 1 to 3 dimensions")
    return dims + (1,) * (3 - len(dims))


class KernelLibrary:
    _loaded: dict[Path, "KernelLibrary"] = {}

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        lib = self.lib
        lib.te_kernel_name.restype = ctypes.c_char_p
        lib.te_kernel_signature.restype = ctypes.c_char_p
        lib.te_static_shared_bytes.restype = ctypes.c_size_t
        lib.te_launch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                  ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_size_t]
        self.kernels: dict[str, tuple[int, list[str]]] = {}
        for i in range(lib.te_kernel_count()):
            sig = lib.te_kernel_signature(i).decode()
            self.kernels[lib.te_kernel_name(i).decode()] = (i, sig.split(",") if sig else [])
        self.static_shared_bytes = int(lib.te_static_shared_bytes())

    @classmethod
    def from_source(cls, source: str, name: str, defines: dict[str, str], sanitize: bool | None = None) -> "KernelLibrary":
        path = build(source, name, defines, sanitize)
        with _lock:
            if path not in cls._loaded:
                cls._loaded[path] = cls(path)
            return cls._loaded[path]

    def _pack(self, name: str, signature: list[str], args) -> tuple[list, list]:
        if len(args) != len(signature):
            raise EmulatorError(f"{name}: {len(args)} arguments for {len(signature)} parameters ({', '.join(signature)})")
        keep, argv = [], []
        for i, (code, arg) in enumerate(zip(signature, args)):
            if code.startswith("p:"):
                if not isinstance(arg, np.ndarray):
                    raise EmulatorError(f"{name}: argument {i} must be an array ({code}), got {type(arg).__name__}")
                allowed = _POINTEES.get(code[2:], ())
                if arg.dtype.type not in allowed:
                    raise EmulatorError(f"{name}: argument {i} is a {arg.dtype} array; the kernel reads {code[2:]}")
                if not arg.flags.c_contiguous:
                    raise EmulatorError(f"{name}: argument {i} is not contiguous (the kernel indexes rows densely)")
                value = ctypes.c_void_p(arg.__array_interface__["data"][0])
            else:
                kind = _SCALARS.get(code)
                if kind is None:
                    raise EmulatorError(f"{name}: parameter {i} has a type the emulator cannot pass ({code})")
                if type(arg) is not kind:
                    raise EmulatorError(f"{name}: argument {i} is {type(arg).__name__}; the parameter is {code} "
                                        f"(pass {kind.__name__})")
                value = np.ctypeslib.as_ctypes(np.array(arg, dtype=kind).reshape(1))
            keep.append(value)
            argv.append(ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
        return keep, argv

    def launch(self, name: str, grid, block, args, shared_mem: int = 0):
        if name not in self.kernels:
            raise EmulatorError(f"{self.path.name}: no kernel {name!r} (has {', '.join(self.kernels)})")
        index, signature = self.kernels[name]
        keep, argv = self._pack(name, signature, tuple(args))
        grid3, block3 = _dims(grid), _dims(block)
        order, seed = current_schedule()
        err = ctypes.create_string_buffer(2048)
        with _lock:
            rc = self.lib.te_launch(index, (ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3), int(shared_mem),
                                    (ctypes.c_void_p * max(1, len(argv)))(*argv), ORDERS[order], int(seed), err,
                                    len(err))
        del keep
        if rc:
            raise EmulatorError(err.value.decode(errors="replace"))
