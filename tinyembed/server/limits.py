"""What one request may cost, checked before the heavy work: bounded error messages, strict
query integers, and a request deadline that grows with the request's size.

The deadline rule (see README "Limits that fit together"): `--request-timeout` bounds how long a
request may *wait*; its own compute time is added on top, estimated from the measured drain rate
of its model (tokens/s over recent batches) with a 2x margin, or from a conservative floor before
anything was measured. So a request the server admits (<= --max-tokens-per-request) can always
finish on an otherwise idle server; a 408 means it waited behind other work for too long.
"""

from __future__ import annotations

import time

from tinyembed.scheduler.runner import DeadlineExceeded

MAX_MESSAGE_CHARS = 1000  # an error message never echoes more than this
MAX_ECHO_CHARS = 64  # a client value (model name, id) quoted in a message
DRAIN_FLOOR_TOKENS_PER_S = 1000.0  # assumed before the first batch was measured: slow on purpose
DRAIN_MARGIN = 2.0  # other tiers and requests share the device: budget twice the bare compute time


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, cut to `limit` characters with a marker saying how much was left out."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def echo(value) -> str:
    """A client-supplied value, quoted safely in a message: short, never megabytes."""
    return shorten(str(value), MAX_ECHO_CHARS)


def query_int(text: str | None, default: int, lo: int, hi: int) -> int | None:
    """A query parameter or form field as an integer in [lo, hi]: ASCII digits only, nothing
    around them (int() would also take '3_600', '+3600', ' 3600 ' and '٣٦٠٠'; str.isdigit() would
    take '²'). None when `text` is not such an integer."""
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def drain_rate(runner, engine) -> float:
    """The runner's measured tokens/s for `engine` (0.0 when unknown)."""
    try:
        snapshot = runner.snapshot(engine)
        return float(next(iter(snapshot.values())).get("drain_tokens_per_second", 0.0) or 0.0)
    except Exception:  # another Runner, or nothing measured yet
        return float(getattr(runner, "_tokens_per_second", 0.0) or 0.0)


def deadline(arrived: float, request_timeout: float, tokens: int, rate: float) -> float:
    """Arrival + the wait budget + the request's own estimated compute time (with margin).
    A request whose wait budget is already spent (behind its connection's earlier requests, or
    in tokenization) is refused here, before it joins a queue."""
    if time.monotonic() >= arrived + request_timeout:
        raise DeadlineExceeded()
    own = DRAIN_MARGIN * tokens / (rate if rate > 0 else DRAIN_FLOOR_TOKENS_PER_S)
    return arrived + request_timeout + own


TOKENIZE_SLICE = 64  # inputs per tokenizer call of one request


def slices(items: list, size: int = TOKENIZE_SLICE) -> list[tuple[int, list]]:
    """A request's inputs in turns for the tokenizer pool: (index of the first, slice)."""
    return [(i, items[i:i + size]) for i in range(0, len(items), size)]
