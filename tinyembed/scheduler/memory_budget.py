"""The memory budget (issue 27): `--max-memory` bytes for the whole process, split at start into

    limit = baseline (weights, code, libraries: RSS measured once the models are loaded)
          + work buffers (the engines' arenas at the batch cap: Engine.work_bytes)
          + slack (what no request owns: connections, metrics, sqlite, allocator overhead)
          + capacity (the requests in flight: what this class hands out)

A request reserves its cost (`request_bytes`: its body, its token ids, its vectors, its reply
as it is held while written) before the heavy work and releases it once its reply is written.
The invariant, checked by `check()` and by tests/test_memory_budget.py over random
interleavings of admit / resize / finish / cancel / timeout:

    0 <= reserved == sum of live reservations <= capacity, and reserved == 0 when none is live.

Admission: a cost above `capacity` can never fit (TooLarge: the app answers 400 and says how
much to send instead); a cost that does not fit beside what is reserved, or any cost while the
process's RSS is already above the limit and something is in flight (memory that no
reservation accounts for: the guard that keeps an estimate honest), is refused with
Overloaded (503 + Retry-After). An idle budget always admits a cost that fits `capacity`, so
the server never stalls behind its own accounting.
"""

from __future__ import annotations

import os

from tinyembed.scheduler.runner import Overloaded

MIB = 1 << 20
SLACK_BYTES = 16 * MIB
RETRY_AFTER_S = 1.0

# what one request holds, in bytes (measured with tracemalloc on MiniLM; see docs/memory.md)
BODY_COPIES = 2  # the body, and the strings msgspec decodes from it (reserved by the HTTP gate from 64 KiB)
PER_INPUT = 256  # a str / ndarray / list entry per input
TOKEN_BYTES = 16  # int32 ids, and the tokenizer's per-token state of the slice being tokenized
REQUEST_OVERHEAD = 64 * 1024  # the Request, its future, a tokenizer slice's fixed cost
FLOAT_JSON_BYTES = 23  # one float32 as JSON: up to 20 digits, a sign, a comma
FLOAT_OBJECT_BYTES = 32  # one float as a Python object in a list: what .tolist() builds
ROW_JSON_BYTES = 48  # {"object":"embedding","index":N,"embedding":...}
STREAM_MIN_BYTES = 1 * MIB  # replies above this are written in blocks (server/reply_writer.py)
BLOCK_FLOATS = 64 * 1024  # floats encoded at once when streaming


def reply_bytes(inputs: int, dims: int, base64: bool) -> int:
    """The encoded reply's size (an upper estimate)."""
    per_row = 4 * ((4 * dims + 2) // 3) if base64 else FLOAT_JSON_BYTES * dims
    return inputs * (per_row + ROW_JSON_BYTES) + 512


def streamed(inputs: int, dims: int, base64: bool) -> bool:
    return reply_bytes(inputs, dims, base64) > STREAM_MIN_BYTES


def reply_held_bytes(inputs: int, dims: int, base64: bool, send_buffer: int) -> int:
    """What the reply holds at once: all of it (and one copy) when small; a streamed reply
    holds one block as Python floats and as JSON, and the connection's send buffer."""
    if not streamed(inputs, dims, base64):
        return 2 * reply_bytes(inputs, dims, base64) + (inputs * dims * FLOAT_OBJECT_BYTES if not base64 else 0)
    block = min(inputs * dims, BLOCK_FLOATS)
    return block * (FLOAT_OBJECT_BYTES + FLOAT_JSON_BYTES) + send_buffer


def request_bytes(*, body: int, inputs: int, tokens: int, native_dims: int, dims: int, base64: bool,
                  send_buffer: int) -> int:
    """A request's cost: what it holds from admission until its reply is written."""
    vectors = inputs * native_dims * 4 + (inputs * dims * 4 if dims != native_dims else 0)
    return (BODY_COPIES * body + inputs * PER_INPUT + tokens * TOKEN_BYTES + REQUEST_OVERHEAD + vectors
            + reply_held_bytes(inputs, dims, base64, send_buffer))


class TooLarge(Exception):
    """A cost above the whole capacity for requests: it can never be admitted."""

    def __init__(self, nbytes: int, capacity: int):
        super().__init__(f"needs {nbytes} bytes; requests may hold {capacity}")
        self.nbytes, self.capacity = nbytes, capacity


def process_rss() -> int:
    """This process's resident set size in bytes (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Reservation:
    """Bytes held by one request; `release` is idempotent (and runs if the holder forgets)."""

    __slots__ = ("budget", "nbytes", "__weakref__")

    def __init__(self, budget: "MemoryBudget", nbytes: int):
        self.budget, self.nbytes = budget, nbytes

    @property
    def live(self) -> bool:
        return self.budget is not None

    def resize(self, nbytes: int) -> None:
        """The cost is now known better (after tokenizing): shrinking always succeeds; growing
        is admitted like a new cost (Overloaded / TooLarge leave the reservation as it was)."""
        if self.budget is not None:
            self.budget._resize(self, max(0, int(nbytes)))

    def release(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget._release(self)

    def __del__(self):
        if self.budget is not None:
            self.budget.forgotten += 1
            self.release()


class MemoryBudget:
    def __init__(self, limit: int, baseline: int = 0, work: int = 0, slack: int = SLACK_BYTES, rss=process_rss):
        self.limit, self.baseline, self.work, self.slack = int(limit), int(baseline), int(work), int(slack)
        self.capacity = max(0, self.limit - self.baseline - self.work - self.slack)
        self.rss = rss
        self.reserved = 0
        self.live = 0  # reservations not yet released
        self.peak_reserved = 0
        self.refused = {"full": 0, "rss": 0, "too_large": 0}
        self.forgotten = 0  # reservations released by the garbage collector: a bug upstream

    def reserve(self, nbytes: int) -> Reservation:
        nbytes = max(0, int(nbytes))
        self._admit(nbytes, 0)
        self.reserved += nbytes
        self.live += 1
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return Reservation(self, nbytes)

    def _admit(self, nbytes: int, held: int) -> None:
        """May a reservation holding `held` bytes now hold `nbytes`? Raises if not."""
        if nbytes > self.capacity:
            self.refused["too_large"] += 1
            raise TooLarge(nbytes, self.capacity)
        others = self.reserved - held
        if others and others + nbytes > self.capacity:
            self.refused["full"] += 1
            raise Overloaded(RETRY_AFTER_S)
        if others and nbytes > held and self.rss() > self.limit:
            self.refused["rss"] += 1
            raise Overloaded(RETRY_AFTER_S)

    def _resize(self, reservation: Reservation, nbytes: int) -> None:
        if nbytes > reservation.nbytes:
            self._admit(nbytes, reservation.nbytes)
        self.reserved += nbytes - reservation.nbytes
        reservation.nbytes = nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.nbytes
        self.live -= 1

    def check(self) -> None:
        """The invariant (see the module docstring); raises AssertionError when broken."""
        if not (0 <= self.reserved <= self.capacity) or self.live < 0 or (self.live == 0 and self.reserved):
            raise AssertionError(f"memory budget broken: reserved {self.reserved} of {self.capacity}, "
                                 f"{self.live} live")

    def describe(self) -> str:
        return (f"{self.limit / MIB:.0f} MB = {self.baseline / MIB:.0f} MB loaded + {self.work / MIB:.0f} MB work "
                f"buffers + {self.slack / MIB:.0f} MB slack + {self.capacity / MIB:.0f} MB for requests in flight")
