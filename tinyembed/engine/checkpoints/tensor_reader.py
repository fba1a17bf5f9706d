"""Read a safetensors checkpoint one tensor at a time, for models too large to map whole.

Only the headers are read up front (names, dtypes, shapes, offsets across shards). Each
`read(name)` then reads that tensor's bytes with a plain file read and widens them to float32,
so converting a model never holds more than the finished float32 weights plus the one tensor in
flight (a memory-mapped file would keep every page it touched resident next to the copies).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyembed.common.errors import ModelLoadError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    offset: int  # absolute byte offset in the file
    dtype: str  # safetensors name: F32, F16, BF16, F64
    shape: tuple[int, ...]


class CheckpointReader:
    def __init__(self, path: Path, prefixes: tuple[str, ...] = ()):
        self.path = path
        self.tensors: dict[str, TensorInfo] = {}
        for file in checkpoint_files(path):
            self.tensors.update(_header(file))
        # Strip the first prefix (e.g. "model.") that the checkpoint's names really carry.
        for prefix in prefixes:
            if any(name.startswith(prefix) for name in self.tensors):
                self.tensors = {name[len(prefix):]: t for name, t in self.tensors.items() if name.startswith(prefix)}
                break

    def shape(self, name: str) -> tuple[int, ...] | None:
        info = self.tensors.get(name)
        return None if info is None else info.shape

    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    def read(self, name: str) -> np.ndarray:
        """One tensor as a float32 array that owns its memory."""
        info = self.tensors[name]
        dtype = _DTYPES[info.dtype]
        count = int(np.prod(info.shape, dtype=np.int64))
        try:
            raw = np.fromfile(info.file, dtype=dtype, count=count, offset=info.offset)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{info.file}: cannot read tensor {name} ({exc})") from None
        if raw.size != count:
            raise ModelLoadError(f"{info.file}: tensor {name} is truncated")
        if info.dtype == "BF16":  # bf16 is the high half of a float32
            wide = raw.astype(np.uint32)
            del raw
            wide <<= 16
            return wide.view(np.float32).reshape(info.shape)
        return raw.astype(np.float32, copy=False).reshape(info.shape)


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a model dir: model.safetensors, or the shards of its index."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [path / shard for shard in shards]
        for file in files:
            if not file.is_file():
                raise ModelLoadError(f"{file}: shard named in the index is missing")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise ModelLoadError(
        f"{path}: no weights (looked for model.safetensors and model.safetensors.index.json; "
        "convert .bin checkpoints to safetensors first)"
    )


def _header(file: Path) -> dict[str, TensorInfo]:
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        size = file.stat().st_size
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{file}: not a readable safetensors file ({exc})") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            continue  # metadata, or a dtype no weight uses (bool, int ...): never needed
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(n) for n in info["shape"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{file}: tensor {name} is malformed ({exc})") from None
        itemsize = np.dtype(_DTYPES[info["dtype"]]).itemsize
        if end - start != itemsize * int(np.prod(shape, dtype=np.int64)) or 8 + header_len + end > size:
            raise ModelLoadError(f"{file}: tensor {name} is truncated or malformed")
        tensors[name] = TensorInfo(file, 8 + header_len + start, info["dtype"], shape)
    return tensors
