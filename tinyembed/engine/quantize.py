"""Quantized outputs: `output_dtype` int8 / uint8 / binary / ubinary, with the semantics of
sentence-transformers' `quantize_embeddings` (tests/test_quantize.py checks them against its
committed outputs: binary bit for bit, int8 within one step).

    binary   sign bits (x > 0) packed 8 per byte, big-endian bit order, then -128 (int8)
    ubinary  the same bytes without the offset (uint8)
    uint8    floor((x - min_d) / step_d) clipped to 0..255, step_d = (max_d - min_d) / 255
    int8     the uint8 value - 128

int8/uint8 need per-dimension ranges (min_d, max_d). They come from a calibration corpus shipped
with tinyembed (calibration_corpus.txt), embedded once per model: the unit vectors are kept (a
few hundred rows), so the ranges of any Matryoshka `dimensions` are those of the truncated and
renormalized calibration vectors, as a client quantizing `dimensions`-wide vectors would compute.
The vectors are stored beside the model (tinyembed_calibration.npz) when that file is there, else
in the user cache (model folders are often read-only: the HF cache, site-packages).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from tinyembed.engine.ops.numpy_ops import normalize

log = logging.getLogger("tinyembed")

OUTPUT_DTYPES = ("float", "int8", "uint8", "binary", "ubinary")
CALIBRATION_FILE = "tinyembed_calibration.npz"
CORPUS_NAME = "tinyembed-calibration-v1"


def corpus() -> list[str]:
    text = resources.files("tinyembed.engine").joinpath("calibration_corpus.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """(n, d) float32 -> (n, d) int8/uint8 or (n, ceil(d/8)) packed bits; `ranges` (2, d) for int8/uint8."""
    if dtype == "float":
        return vectors
    if dtype in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)  # (n, ceil(d/8)) uint8
        return (packed - 128).astype(np.int8) if dtype == "binary" else packed
    if dtype in ("int8", "uint8"):
        ranges = np.asarray(ranges, dtype=np.float32)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value maps to step 0
        steps = steps.astype(np.float32)
        levels = np.clip(np.floor((vectors - starts) / steps), 0, 255)  # values outside the range clip
        return levels.astype(np.uint8) if dtype == "uint8" else (levels - 128).astype(np.int8)
    raise ValueError(f"output_dtype {dtype!r}: use one of {', '.join(OUTPUT_DTYPES)}")


def ranges_for(calibration: np.ndarray, dimensions: int | None = None) -> np.ndarray:
    """(2, d) float32 per-dimension [min; max] of the calibration vectors cut to `dimensions`
    and renormalized (what `dimensions` does to a response's vectors)."""
    vectors = calibration
    if dimensions is not None and dimensions < calibration.shape[1]:
        vectors = normalize(np.ascontiguousarray(calibration[:, :dimensions]))
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


class Calibration:
    """A model's calibration vectors and the int8 ranges derived from them, per width."""

    def __init__(self, vectors: np.ndarray, source: str, corpus_id: str = ""):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, H) unit rows
        self.source = source  # the file it was read from or written to ("" when kept in memory only)
        self.corpus_id = corpus_id  # which corpus (name:hash) the vectors embed
        self._ranges: dict[int | None, np.ndarray] = {}

    def ranges(self, dimensions: int | None = None) -> np.ndarray:
        key = None if dimensions is None or dimensions >= self.vectors.shape[1] else dimensions
        if key not in self._ranges:
            self._ranges[key] = ranges_for(self.vectors, key)
        return self._ranges[key]

    def quantize(self, vectors: np.ndarray, dtype: str, dimensions: int | None = None) -> np.ndarray:
        """Quantize vectors already cut to `dimensions` (and renormalized)."""
        return quantize(vectors, dtype, self.ranges(dimensions) if dtype.endswith("int8") else None)


def load_or_calibrate(model_dir: Path, embed_texts) -> Calibration:
    """The model's calibration: read beside the model or from the cache, else computed with
    `embed_texts(texts) -> (N, H) unit vectors` and written to the cache."""
    texts = corpus()
    beside = Path(model_dir) / CALIBRATION_FILE
    cached = _cache_dir() / f"{_key(model_dir, texts)}.npz"
    for file in (beside, cached):
        vectors = _read(file, texts)
        if vectors is not None:
            return Calibration(vectors, str(file), _corpus_id(texts))
    vectors = np.asarray(embed_texts(texts), dtype=np.float32)
    return Calibration(vectors, _write(cached, vectors, texts), _corpus_id(texts))


def write_beside(model_dir: Path, calibration: Calibration) -> Path:
    """Store a calibration beside the model, e.g. before shipping a model folder read-only:
    write_beside(path, load_engine(path).calibration)."""
    file = Path(model_dir) / CALIBRATION_FILE
    _write(file, calibration.vectors, corpus())
    return file


def _read(file: Path, texts: list[str]) -> np.ndarray | None:
    if not file.is_file():
        return None
    try:
        with np.load(file) as data:
            if str(data["corpus"]) != _corpus_id(texts):
                return None  # another corpus version: calibrate again
            return data["vectors"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable calibration (%s); calibrating again", file, exc)
        return None


def _write(file: Path, vectors: np.ndarray, texts: list[str]) -> str:
    """Atomically (several servers may calibrate the same model at once); "" when not writable."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, vectors=vectors, ranges=ranges_for(vectors), corpus=np.array(_corpus_id(texts)))
        os.replace(tmp, file)
        return str(file)
    except OSError as exc:
        log.warning("could not store the int8 calibration at %s (%s); kept in memory", file, exc)
        return ""


def _corpus_id(texts: list[str]) -> str:
    return f"{CORPUS_NAME}:{hashlib.sha256(chr(10).join(texts).encode()).hexdigest()[:16]}"


def _key(model_dir: Path, texts: list[str]) -> str:
    """Model folder + its config and weight files' sizes and times + the corpus."""
    model_dir = Path(model_dir).resolve()
    parts = [str(model_dir), _corpus_id(texts)]
    for file in sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors")):
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _cache_dir() -> Path:
    root = os.environ.get("TINYEMBED_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tinyembed")
    return Path(root) / "calibration"

