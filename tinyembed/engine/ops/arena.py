"""Work buffers of the forward pass: allocated once, sized from the batch budget, reused.

An op asks for a (rows, cols) float32 array with `take`; it gets a view of a buffer (a "base")
that nothing else holds. A base is free again once no view of it is alive (its reference count
falls back), so the model code stays functional (ops return arrays) and never frees anything.

Sizing (issue 27): `reserve(rows)` says how many rows (tokens) the largest allowed batch has.
Every base is allocated at that size the first time it is needed, so a growing batch size
never allocates again; a batch larger than the reservation (a single sequence longer than the
batch cap) grows the one base it needs, in place of a free one, never next to it. The number of
bases per width is the number the forward holds at once (3 of width H, 1 of 3H, 1 of I for an
encoder), so the arena's bytes are `rows x (sum of those widths) x 4` and `nbytes` says so.

Before this, bases were appended as batches grew and a base still in use was kept next to the
new one: after one 2048-input request the arena held 17 bases, 432 MiB (tracemalloc, MiniLM),
and RSS stayed there for good.

Pages of a base are touched only as rows are used (np.empty maps memory; the kernel backs it
on first write), so RSS grows with the largest batch really run, up to `nbytes`.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# A base referenced only by the pool list, the loop variable and getrefcount's argument is free.
_FREE_REFS = 3


class Arena:
    def __init__(self, reserved_rows: int = 0):
        self.reserved_rows = max(0, int(reserved_rows))
        self._local = threading.local()  # one set of bases per compute thread
        self._lock = threading.Lock()  # guards the byte count across threads
        self._bytes = 0
        self.allocations = 0  # bases allocated so far: a steady load allocates none

    @property
    def nbytes(self) -> int:
        """Bytes of every base held (their pages may not all be touched yet)."""
        return self._bytes

    def reserve(self, rows: int) -> None:
        """The largest batch (in rows = tokens) the scheduler may form from now on. Bases
        already held keep their size until a batch needs more; new ones get this size."""
        self.reserved_rows = max(0, int(rows))

    def take(self, rows: int, cols: int, dtype=np.float32, rows_hint: int | None = None) -> np.ndarray:
        """A (rows, cols) view of a base no live array refers to (float32 unless asked: the
        int8 GEMM's quantized activations and scales come from here too). A new base gets
        `rows_hint` rows when given (a path that only ever runs small batches, such as the fused
        layers on each of two threads), else the reservation."""
        pools = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = {}
        bases = pools.setdefault((cols, np.dtype(dtype).str), [])
        spare = None  # a free base too small for this batch
        for i in range(len(bases)):  # (not enumerate: its cached tuple would hold a reference)
            base = bases[i]
            if sys.getrefcount(base) <= _FREE_REFS:
                if base.shape[0] >= rows:
                    return base[:rows]
                spare = i
        base = None
        size = max(rows, self.reserved_rows if rows_hint is None else rows_hint)
        if spare is not None:  # grow in place of the free base: drop it first, then allocate
            old, bases[spare] = bases[spare], None
            self._count(-old.nbytes)
            del old
            bases[spare] = self._new(size, cols, dtype)
            return bases[spare][:rows]
        bases.append(self._new(size, cols, dtype))
        return bases[-1][:rows]

    def _new(self, rows: int, cols: int, dtype=np.float32) -> np.ndarray:
        base = np.empty((rows, cols), dtype=dtype)
        self._count(base.nbytes)
        self.allocations += 1
        return base

    def _count(self, delta: int) -> None:
        with self._lock:
            self._bytes += delta
