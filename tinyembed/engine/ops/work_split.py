"""Cutting a C kernel's work items (one per (sequence, head)) into contiguous ranges of about equal
cost, one per thread: attention's cost grows with L^2, so equal item counts would leave one
thread with the long sequence and the others idle. Shared by the encoder and decoder attention."""

from __future__ import annotations

import numpy as np


def cost_bounds(cost: np.ndarray, threads: int) -> tuple[int, list[int] | None]:
    """-> (threads used, item bounds [0, ..., len(cost)]), or (1, None) for one thread."""
    items = len(cost)
    if threads <= 1:
        return 1, None
    cum = np.cumsum(cost)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, threads) / threads)
    bounds = [0, *sorted(set(int(c) + 1 for c in cuts if 0 <= c < items - 1)), items]
    return len(bounds) - 1, bounds
