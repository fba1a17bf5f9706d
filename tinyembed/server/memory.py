"""Give memory back to the OS after large requests.

glibc's malloc keeps freed memory in its arenas (one per thread that allocated, up to 8 per
core): after a burst of large requests the process would hold its peak RSS for good. Two
remedies, both through ctypes and both no-ops where glibc is absent:
- at start, cap the number of arenas (M_ARENA_MAX): tokenizer, compute and Rust worker threads
  then share a few arenas instead of each keeping its own high-water mark;
- after a request that moved at least `threshold` bytes (body in or out, plus ~1 KiB per token
  of compute, for the forward pass's activations), `malloc_trim(0)` shortly afterwards, on a
  worker thread: it returns free pages of every arena to the OS;
- and every PERIODIC_S seconds regardless, for work that is not a request: batch jobs, and the
  replies of clients that were cut off.
Measured by tests/test_probes_http.py (RSS after a 15 MB text) and bench/soak.py (RSS curve).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger("tinyembed.memory")

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENA_MAX = 4
TRIM_THRESHOLD_BYTES = 1 << 20
TRIM_DELAY_S = 0.2  # after the response: its buffers are freed once the reply is written
TRIM_MIN_INTERVAL_S = 1.0
PERIODIC_S = 5.0
TOKEN_BYTES = 1024  # what one token of compute is counted as, for the threshold


def _libc():
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


class MemoryReturner:
    def __init__(self, threshold: int = TRIM_THRESHOLD_BYTES):
        self.threshold = threshold
        self.libc = _libc()
        self._pending = False
        self._periodic = False
        self._last = 0.0
        self.trims = 0
        if self.libc is not None:
            self.libc.mallopt(M_ARENA_MAX, ARENA_MAX)

    def after(self, nbytes: int, tokens: int = 0) -> None:
        """Called on the event loop after each request with the bytes it moved and its tokens."""
        if self.libc is None:
            return
        if not self._periodic:
            self._periodic = True
            asyncio.get_running_loop().call_later(PERIODIC_S, self._every)
        if nbytes + tokens * TOKEN_BYTES < self.threshold or self._pending:
            return
        self._pending = True
        delay = max(TRIM_DELAY_S, self._last + TRIM_MIN_INTERVAL_S - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._trim)

    def _trim(self) -> None:
        self._pending = False
        self._last = time.monotonic()
        self.trims += 1
        try:
            asyncio.get_running_loop().run_in_executor(None, self.libc.malloc_trim, 0)
        except RuntimeError:  # the loop is shutting down: nothing left to give back
            pass

    def _every(self) -> None:
        if time.monotonic() - self._last >= PERIODIC_S and not self._pending:
            self._pending = True
            self._trim()
        asyncio.get_running_loop().call_later(PERIODIC_S, self._every)

    def trim_now(self) -> None:
        if self.libc is not None:
            self.libc.malloc_trim(0)


def trim() -> None:
    """Give free heap pages back to the OS now (blocking; a no-op without glibc)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
