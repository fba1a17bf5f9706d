"""bfloat16 weights on the CPU (`--precision bf16`): kept as the checkpoint stores them,
memory-mapped, and widened to float32 one fused matrix at a time right before its GEMM.

A bf16 number is the high half of a float32, so widening is exact and a bf16 checkpoint
computes the same vectors either way; a float32 checkpoint asked to run in bf16 is rounded to
nearest even here (as torch's `.to(torch.bfloat16)`), tensor by tensor.

`choose_precision` picks bf16 by itself when the checkpoint is bf16 and its float32 weights
would not fit in the memory this process may use (cgroup limit or MemAvailable).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tinyembed.common.errors import ModelLoadError

log = logging.getLogger("tinyembed")
PRECISIONS = ("fp32", "bf16")
FIT_FRACTION = 0.85  # float32 weights may take this much of the memory left: activations need the rest


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bits, rounded to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    out = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def available_memory() -> int | None:
    """Bytes this process may still use: the smaller of MemAvailable and the cgroup's room."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def choose_precision(requested: str | None, bf16_share: float, float32_bytes: int, where: Path) -> str:
    """fp32 or bf16 for a decoder checkpoint. None: bf16 only when the checkpoint is bf16 (at
    least 90% of its numbers: some keep a float32 buffer or norm) and its float32 weights would
    not fit; an explicit choice is kept."""
    if requested not in (None, *PRECISIONS):
        raise ModelLoadError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested is not None:
        return requested
    room = available_memory()
    if bf16_share >= 0.9 and room is not None and float32_bytes > FIT_FRACTION * room:
        log.warning("%s: float32 weights need %.1f GiB, %.1f GiB available: keeping the bf16 weights "
                    "memory-mapped (--precision bf16)", where, float32_bytes / 2**30, room / 2**30)
        return "bf16"
    return "fp32"


def mapped_file(file: Path) -> np.ndarray:
    """A read-only byte map of a whole file (pages are read on first touch, and the kernel may
    drop them again under memory pressure: they are the file's)."""
    if os.path.getsize(file) == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(file, dtype=np.uint8, mode="r")


def write_safetensors(file: Path, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], tensor) -> None:
    """Stream a safetensors file one tensor at a time: `tensor(name)` returns its array (uint16
    bits for "BF16", float32 for "F32"), written and dropped before the next. Used to make
    checkpoints of real shapes (bench/decoder.py) and bf16 test fixtures without torch."""
    import json
    import struct

    header, offset = {}, 0
    for name, shape in shapes.items():
        size = (2 if dtypes[name] == "BF16" else 4) * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtypes[name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-aligned, as the safetensors library writes it
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            array = np.ascontiguousarray(tensor(name), dtype=np.uint16 if dtypes[name] == "BF16" else np.float32)
            if array.shape != tuple(shape):
                raise ValueError(f"{name}: got shape {array.shape}, declared {tuple(shape)}")
            f.write(memoryview(array).cast("B"))
