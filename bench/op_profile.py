"""Per-op time, FLOPs and bytes for one forward pass: wraps an `ops` object and times each call.

On the CPU every op is synchronous, so a wall clock around each call is the op's time. FLOPs
and bytes are counted from the arguments' shapes (the fewest bytes each op must move: inputs
read once, output written once), so achieved GFLOP/s and GB/s can be set against the machine's
measured peaks.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

# op name -> the category a reader looks for in the breakdown
CATEGORIES = {
    "linear": "GEMM",
    "matmul": "GEMM",
    "attention": "attention",
    "bias_gelu": "GELU",
    "bias_residual_layernorm": "LayerNorm",
    "embed": "other",
    "pool_normalize": "other",
}


def _gemm_cost(x, w, *rest):
    t, k = x.shape
    n = w.shape[1]
    return 2.0 * t * k * n, 4.0 * (t * k + k * n + t * n)


def _attention_cost(qkv, cu_seqlens, max_len, num_heads):
    lengths = np.diff(np.asarray(cu_seqlens)).astype(np.float64)
    hidden = qkv.shape[1] // 3
    flops = 4.0 * float((lengths**2).sum()) * hidden  # QK^T and PV
    return flops, 4.0 * (qkv.size + qkv.shape[0] * hidden)


def _elementwise_cost(y, *rest):
    return 0.0, 4.0 * 2 * y.size


COSTS = {
    "linear": _gemm_cost,
    "matmul": _gemm_cost,
    "attention": _attention_cost,
    "bias_gelu": _elementwise_cost,
    "bias_residual_layernorm": lambda y, *r: (0.0, 4.0 * 3 * y.size),
    "embed": lambda ids, *r: (0.0, 4.0 * 2 * len(ids) * r[1].shape[1]),
    "pool_normalize": _elementwise_cost,
}


class OpProfiler:
    """Install on an engine's model; `totals()` gives seconds, FLOPs and bytes per op."""

    def __init__(self, ops):
        self.ops = ops
        self.seconds = defaultdict(float)
        self.flops = defaultdict(float)
        self.bytes = defaultdict(float)
        self.calls = defaultdict(int)
        for name in CATEGORIES:
            setattr(self, name, self._timed(name, getattr(ops, name)))

    def __getattr__(self, name):  # param, upload_batch, to_host, name ...: pass through
        return getattr(self.ops, name)

    def _timed(self, name, fn):
        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            self.seconds[name] += time.perf_counter() - start
            self._count(name, args)
            return out

        return call

    def _count(self, name, args) -> None:
        flops, nbytes = COSTS[name](*args)
        self.flops[name] += flops
        self.bytes[name] += nbytes
        self.calls[name] += 1

    def by_category(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, seconds in self.seconds.items():
            row = out.setdefault(CATEGORIES[name], {"seconds": 0.0, "flops": 0.0, "bytes": 0.0})
            row["seconds"] += seconds
            row["flops"] += self.flops[name]
            row["bytes"] += self.bytes[name]
        return out
