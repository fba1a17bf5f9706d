"""The CUDA runtime side of CudaOps: finding CuPy and a device, compiling kernels/cuda/*.cu with
NVRTC, launching a kernel, allocating outputs, and moving data (weights up, batch inputs through
pinned double-buffered slots, results down). The ops themselves, and how each one sizes its
grid, are in cuda_ops.py.

Host side: one compute stream per CudaOps; every op is enqueued asynchronously on it and only
`to_host` waits. Batch inputs go through two slots (a pinned host buffer and a device buffer,
used in turn, each guarded by events). With `overlap` (TINYEMBED_CUDA_OVERLAP=1) the host-to-
device copy runs on a second stream, so batch N+1's upload proceeds while batch N computes: the
compute stream waits for the copy's event, and a slot is overwritten only after the compute
that read it is done (`release_batch`, called at the end of each forward). Without it the copy
is enqueued on the compute stream, behind N's work.

CuPy is imported lazily: importing this module never needs CuPy; `available()` says whether
it is installed and sees a device, and never raises.
"""
from __future__ import annotations

import importlib.util
import os
import re
import threading
from pathlib import Path

import numpy as np

from tinyembed.common.errors import TinyEmbedError
from tinyembed.engine.build.kernel_paths import candidate_folders
from tinyembed.engine.ops.cuda_decoder import DECODER_KERNELS

DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}  # -> TE_DTYPE in kernels/cuda/common.cuh
# file -> its entry points (each fast kernel beside its naive teaching version)
KERNELS = {
    "embed.cu": ("embed", "embed_naive"),
    "gelu.cu": ("bias_gelu", "bias_gelu_naive", "bias_add", "bias_add_naive"),
    "layernorm.cu": ("bias_residual_layernorm", "bias_residual_layernorm_naive"),
    "attention.cu": ("attention_naive", "attention_d32", "attention_d64", "attention_d128"),
    "pool.cu": ("pool_normalize", "pool_normalize_naive"),
    **DECODER_KERNELS,
}
KERNEL_FILES = tuple(KERNELS)

_cupy = None
_modules: dict[tuple[str, int], object] = {}  # (file, TE_DTYPE) -> RawModule, shared by all CudaOps
_modules_lock = threading.Lock()
_to_bf16 = None  # ElementwiseKernel float32 -> bfloat16 bits, built on first use


def _cp():
    global _cupy
    if _cupy is None:
        import cupy

        _cupy = cupy
    return _cupy


def unavailable_reason() -> str | None:
    """None when CuPy is importable and sees a CUDA device; otherwise why not. Never raises."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    try:
        count = _cp().cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver library, ...
        return f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    return None if count > 0 else "CuPy sees no CUDA device (device count is 0)"


def device_count() -> int:
    """How many CUDA devices CuPy sees (0 without CuPy or a driver). Never raises."""
    if unavailable_reason() is not None:
        return 0
    return int(_cp().cuda.runtime.getDeviceCount())


def available() -> bool:
    """True when CuPy is importable and a CUDA device is visible (used by --device auto)."""
    try:
        return unavailable_reason() is None
    except Exception:
        return False


def kernel_dir() -> Path:
    """Where the .cu files are: kernels/cuda/ in the checkout or the installed package."""
    candidates = candidate_folders("cuda")
    for path in candidates:
        if all((path / name).is_file() for name in KERNEL_FILES):
            return path
    raise TinyEmbedError(
        "CUDA kernels not found (looked in " + ", ".join(str(p) for p in candidates) + "); reinstall tinyembed"
    )


def kernel_source(name: str) -> str:
    """A kernel file with its local #include "x.cuh" lines inlined: CuPy's on-disk compile cache
    is keyed by the source text, so an edited header must change the text it sees."""
    folder = kernel_dir()

    def expand(file: str, seen: set[str]) -> str:
        lines = []
        for number, line in enumerate((folder / file).read_text().splitlines(), 1):
            match = re.match(r'\s*#include\s+"([^"]+)"', line)
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                lines += [f'#line 1 "{match.group(1)}"', expand(match.group(1), seen), f'#line {number + 1} "{file}"']
            elif not match:
                lines.append(line)
        return "\n".join(lines)

    return expand(name, set())


def _module(file: str, te_dtype: int):
    key = (file, te_dtype)
    with _modules_lock:
        if key not in _modules:
            cp = _cp()
            options = ("-std=c++17", f"-DTE_DTYPE={te_dtype}")
            backend = os.environ.get("TINYEMBED_CUDA_BACKEND", "nvrtc")  # "nvcc" to use the toolkit's
            _modules[key] = cp.RawModule(code=kernel_source(file), options=options, backend=backend)
        return _modules[key]


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _mark(stream):
    """An event recorded now on `stream` (no timing: cheaper to record and to wait on)."""
    event = _cp().cuda.Event(disable_timing=True)
    event.record(stream)
    return event


class _UploadSlot:
    """A pinned host buffer and a device buffer for batch inputs, and the events that guard them:
    `copied` (the H2D copy out of `host` is done), `consumed` (the compute that read `device`)."""

    def __init__(self):
        self.host = self.device = self.copied = self.consumed = None
        self.unreleased = False


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


class CudaRuntime:
    """One GPU, one compute stream, the compiled kernels and the data movement CudaOps runs on.
    `kernels="naive"` (or TINYEMBED_KERNELS=naive) selects every kernel's teaching version."""

    def __init__(self, device_index: int = 0, dtype: str = "float16", kernels: str | None = None,
                 poison_outputs: bool = False, graphs: bool | None = None, overlap: bool | None = None):
        reason = unavailable_reason()
        if reason is not None:
            raise TinyEmbedError(f"--device cuda:{device_index}: {reason}")
        if dtype not in DTYPES:
            raise TinyEmbedError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        cp = _cp()
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= device_index < count:
            raise TinyEmbedError(f"--device cuda:{device_index}: CuPy sees {count} device(s) (cuda:0..cuda:{count - 1})")
        kernels = kernels or os.environ.get("TINYEMBED_KERNELS", "fast")
        if kernels not in ("fast", "naive"):
            raise TinyEmbedError(f"kernels={kernels!r}: use 'fast' or 'naive'")
        self.index = device_index
        self.name = f"cuda:{device_index}"
        self.dtype = dtype
        self.naive = kernels == "naive"
        self.poison_outputs = poison_outputs  # tests: outputs start as NaN, so unwritten ones show
        self.graphs = _flag("TINYEMBED_CUDA_GRAPHS") if graphs is None else bool(graphs)
        self.overlap = _flag("TINYEMBED_CUDA_OVERLAP") if overlap is None else bool(overlap)
        self._te = DTYPES[dtype]
        self.storage = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
        self.vec = 16 // np.dtype(self.storage).itemsize  # VEC in common.cuh
        self.device = cp.cuda.Device(device_index)
        with self.device:
            self.stream = cp.cuda.Stream(non_blocking=True)
            self.copy_stream = cp.cuda.Stream(non_blocking=True) if self.overlap else self.stream
            self.sm_count = self.device.attributes["MultiProcessorCount"]
        self._enter()
        self._kernels = {}
        try:
            for file, names in KERNELS.items():  # compile now: errors surface at load, not at a request
                if file in DECODER_KERNELS:
                    continue  # compiled when a decoder model first uses them (cuda_decoder.py)
                module = _module(file, self._te)
                for name in names:
                    if name.startswith("attention_d") and self._te == DTYPES["float32"]:
                        continue  # the tensor-core kernels exist for fp16 and bf16 storage only
                    self._kernels[name] = module.get_function(name)
        except Exception as exc:  # NVRTC without the CUDA headers, a driver too old for the PTX, ...
            raise TinyEmbedError(f"--device cuda:{device_index}: the CUDA kernels did not compile or load "
                                 f"({type(exc).__name__}: {str(exc)[:2000]})") from exc
        # cublasGemmEx scalars: float32 because the compute type is CUBLAS_COMPUTE_32F.
        self._one = np.ones(1, np.float32)
        self._zero = np.zeros(1, np.float32)
        self._slots = [_UploadSlot(), _UploadSlot()]  # batch uploads, used in turn
        self._turn = 0
        self._staging_lock = threading.Lock()  # forwards from several threads share the slots

    # -- device context ---------------------------------------------------------------------------
    def _enter(self):
        """Make this GPU and this ops' stream current in the calling thread. CuPy's current device
        and stream are thread-local, and kernels and CuPy ops run on the current stream, so every
        op checks (a few microseconds): another CudaOps or caller may have changed them."""
        cp = _cp()
        if cp.cuda.runtime.getDevice() != self.index:
            self.device.use()
        if cp.cuda.get_current_stream().ptr != self.stream.ptr:
            self.stream.use()

    def synchronize(self):
        self.stream.synchronize()

    def _empty(self, shape, dtype=None):
        cp = _cp()
        self._enter()
        dtype = dtype or self.storage
        if not self.poison_outputs:
            return cp.empty(shape, dtype=dtype)
        if dtype == np.uint16:
            return cp.full(shape, 0x7FC0, dtype=np.uint16)  # a bfloat16 NaN
        return cp.full(shape, np.nan, dtype=dtype)

    def _compiled(self, file: str):
        """The RawModule of one kernel file for this ops' storage dtype."""
        return _module(file, self._te)

    def _launch(self, name: str, grid, block, args):
        self._enter()
        self._kernels[name](tuple(int(g) for g in grid), (int(block),), args)

    # -- moving data ------------------------------------------------------------------------------
    def param(self, array: np.ndarray):
        """Upload a weight once: 1-D (biases, LayerNorm, token type) as float32, matrices in the
        compute dtype (rounded to nearest even on the device)."""
        self._enter()
        cp = _cp()
        x = cp.asarray(np.ascontiguousarray(array, dtype=np.float32))
        return x if x.ndim == 1 else self.from_float32(x)

    def from_float32(self, x):
        """A device float32 array in the storage dtype (bf16: round to nearest even, by bits)."""
        cp = _cp()
        if self.storage == np.float32:
            return x
        if self.storage == np.float16:
            return x.astype(cp.float16)
        global _to_bf16
        if _to_bf16 is None:
            _to_bf16 = cp.ElementwiseKernel(
                "float32 x", "uint16 y",
                "unsigned int b = __float_as_uint(x);"
                "y = isnan(x) ? 0x7FC0 : (unsigned short)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16)",
                "tinyembed_float32_to_bfloat16")
        return _to_bf16(x)

    def to_float32(self, x):
        """A device array of the storage dtype widened to float32 (on the device)."""
        cp = _cp()
        if x.dtype == cp.uint16:  # bf16 bits are the high half of a float32
            return (x.astype(cp.uint32) << 16).view(cp.float32)
        return x.astype(cp.float32, copy=False)

    def to_host(self, array) -> np.ndarray:
        """Device array -> float32 numpy array; waits for everything enqueued before it."""
        self._enter()
        return self.to_float32(array).get(stream=self.stream)

    def upload_batch(self, batch):
        """(input_ids, position_ids, cu_seqlens) of a packed batch on the device."""
        return self.upload_arrays(batch.input_ids, batch.position_ids, batch.cu_seqlens)

    def upload_arrays(self, *arrays):
        """Int32 host arrays -> device views, copied asynchronously from a pinned staging buffer
        into one device buffer (one copy). The compute stream is made to wait for the copy; with
        `overlap` the copy itself runs on the copy stream, beside whatever is computing."""
        self._enter()
        cp = _cp()
        sizes = [int(np.size(a)) for a in arrays]
        count = sum(sizes)
        with self._staging_lock:
            slot = self._slots[self._turn]
            self._turn ^= 1
            if slot.copied is not None:
                slot.copied.synchronize()  # the copy that last read this pinned buffer is done
            if slot.unreleased:  # its last batch never called release_batch: wait for all of it
                slot.consumed = _mark(self.stream)
            if slot.host is None or slot.host.size < count:
                size = _round_up(max(count, 1 << 16), 1 << 16)
                slot.host = np.frombuffer(cp.cuda.alloc_pinned_memory(4 * size), dtype=np.int32)
                # allocated on the compute stream: CuPy's pool reuses a freed block only in that
                # stream's order, so the old buffer cannot be handed out while a kernel reads it
                slot.device = cp.empty(size, dtype=cp.int32)
                # ... but the copy stream could write it while a compute kernel still reads the
                # block's former owner: the first copy into it waits for everything enqueued
                slot.consumed = _mark(self.stream)
            offset = 0
            for array, size in zip(arrays, sizes):
                slot.host[offset:offset + size] = array
                offset += size
            if self.overlap and slot.consumed is not None:
                self.copy_stream.wait_event(slot.consumed)  # the compute that read it is done
            cp.cuda.runtime.memcpyAsync(slot.device.data.ptr, slot.host.ctypes.data, 4 * count,
                                        cp.cuda.runtime.memcpyHostToDevice, self.copy_stream.ptr)
            slot.copied = _mark(self.copy_stream)
            if self.overlap:
                self.stream.wait_event(slot.copied)
            slot.unreleased = True
            views, offset = [], 0
            for size in sizes:
                views.append(slot.device[offset:offset + size])
                offset += size
        return tuple(views)

    def release_batch(self, uploaded):
        """Everything that reads `uploaded` (an array upload_arrays returned) is now enqueued: its
        slot may be overwritten once the compute stream gets here (an event, no wait). Found by
        address, so forwards from several threads each release their own slot."""
        address = uploaded.data.ptr
        with self._staging_lock:
            for slot in self._slots:
                start = slot.device.data.ptr if slot.device is not None else -1
                if slot.unreleased and start <= address < start + 4 * slot.device.size:
                    slot.consumed = _mark(self.stream)
                    slot.unreleased = False
