"""Weights packed once at load for kernels/cpu/gemm_packed.c (float32) and gemm_int8.c (int8),
and the numpy twins that define both layouts and the int8 arithmetic.

float32: ceil(N/16) panels of 16 columns, each (K, 16) contiguous; columns past N are zero.
int8:    per output column w ~ wq * ws (symmetric, ws = max|w| / 127), panels of 16 columns,
         each (ceil(K/4), 16, 4): four consecutive k of one column side by side (one 32-bit lane
         of VPDPBUSD); wsum = column sums of wq, to undo the +128 that makes activations unsigned.
Activations are quantized per row (per token) at run time, asymmetric over the row's range
[min(x, 0), max(x, 0)]: xq = rint(x / s) + z, s = range / 255, z = rint(-min / s) (uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PANEL = 16


@dataclass
class PackedLinear:
    """One linear layer's weight, ready for the C GEMMs: `k` inputs, `n` outputs."""

    k: int
    n: int
    f32: np.ndarray | None = None  # (panels, K, 16) float32
    q: np.ndarray | None = None  # (panels, K4, 16, 4) int8
    scale: np.ndarray | None = None  # (panels * 16,) float32, zero past n
    sum: np.ndarray | None = None  # (panels * 16,) int32: undoes each row's zero point

    @property
    def kp(self) -> int:
        """K rounded up to a multiple of 4: the row stride of quantized activations."""
        return -(-self.k // 4) * 4

    @property
    def shape(self) -> tuple[int, int]:
        return self.k, self.n


def pack_f32(w: np.ndarray) -> PackedLinear:
    k, n = w.shape
    panels = -(-n // PANEL)
    wide = np.zeros((k, panels * PANEL), np.float32)
    wide[:, :n] = w
    return PackedLinear(k, n, f32=np.ascontiguousarray(wide.reshape(k, panels, PANEL).transpose(1, 0, 2)))


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> (K, N) int8 and (N,) float32 scales, per column, symmetric."""
    w = np.asarray(w, np.float32)
    scale = np.abs(w).max(axis=0) / np.float32(127.0)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def pack_int8(w: np.ndarray) -> PackedLinear:
    k, n = w.shape
    wq, scale = quantize_weight(w)
    panels, k4 = -(-n // PANEL), -(-k // 4)
    wide = np.zeros((k4 * 4, panels * PANEL), np.int8)
    wide[:k, :n] = wq
    packed = wide.reshape(k4, 4, panels, PANEL).transpose(2, 0, 3, 1)  # (panels, K4, 16, 4)
    scales = np.zeros(panels * PANEL, np.float32)
    scales[:n] = scale
    sums = wide.astype(np.int32).sum(axis=0)
    return PackedLinear(k, n, q=np.ascontiguousarray(packed), scale=scales, sum=sums.astype(np.int32))


def unpack_int8(packed: PackedLinear) -> np.ndarray:
    """(panels, K4, 16, 4) -> (K, N) int8: the inverse of pack_int8's layout (tests read it)."""
    panels, k4 = packed.q.shape[:2]
    return packed.q.transpose(1, 3, 0, 2).reshape(k4 * 4, panels * PANEL)[:packed.k, :packed.n]


def quantize_rows_numpy(x: np.ndarray, kp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The twin of quantize_rows: (T, K) float32 -> (T, kp) uint8, (T,) scales, (T,) int32 zero points."""
    lo = np.minimum(x.min(axis=1, initial=0.0), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1, initial=0.0), 0).astype(np.float32)
    s = np.where(hi > lo, (hi - lo) / np.float32(255.0), np.float32(1.0)).astype(np.float32)
    inv = (np.float32(1.0) / s).astype(np.float32)
    z = np.rint(-lo * inv).astype(np.float32)
    xq = np.zeros((x.shape[0], kp), np.uint8)
    xq[:, :x.shape[1]] = np.clip(np.rint(x * inv[:, None]) + z[:, None], 0, 255).astype(np.uint8)
    return xq, s, z.astype(np.int32)


def gemm_int8_numpy(xq: np.ndarray, xs: np.ndarray, xz: np.ndarray, packed: PackedLinear) -> np.ndarray:
    """The twin of gemm_int8 (epilogue 0): exact int32 sums, then the same dequantization."""
    wq = unpack_int8(packed).astype(np.int32)
    acc = xq[:, :packed.k].astype(np.int32) @ wq - xz[:, None] * packed.sum[:packed.n]
    return (acc.astype(np.float32) * xs[:, None]) * packed.scale[:packed.n]
