"""Per-key rate limits: a token bucket for requests/min and one for tokens/min.

A bucket holds up to one minute's budget and refills continuously, so a client may burst up to
its per-minute limit and then proceeds at the steady rate. A refused take says how long to wait,
which becomes Retry-After (and retry-after-ms, which the OpenAI SDKs read first).

Service tiers decide what "over the limit" means for a request (`admit_request`, then
`admit_tokens` once its tokens are counted):

    default, priority, unset   over the limit -> 429 rate_limit_exceeded
    auto                       over the limit -> runs at the `over-limit` tier (after default and
                               priority, before flex) and the response says so; it takes nothing
                               from the buckets, so the key's budget refills as usual
    flex                       takes nothing from the buckets and is never refused for them; it
                               runs at the lowest tier
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from tinyembed.server.config import RateLimits


class TokenBucket:
    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: int, now: float):
        self.rate = per_minute / 60.0  # units per second
        self.capacity = float(per_minute)
        self.level = self.capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` if available -> 0.0; else leave the bucket as is -> seconds to wait
        (inf when the amount exceeds what the bucket can ever hold)."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount <= self.level:
            self.level -= amount
            return 0.0
        if amount > self.capacity:
            return math.inf
        return (amount - self.level) / self.rate

    def full(self, now: float) -> bool:
        return self.level + (now - self.stamp) * self.rate >= self.capacity


class RateLimited(Exception):
    def __init__(self, retry_after: float, message: str, kind: str):
        super().__init__(message)
        self.retry_after, self.message, self.kind = retry_after, message, kind


OVER_LIMIT = "over-limit"


class RateLimiter:
    MAX_KEYS = 100_000  # bounded memory: full buckets are forgotten first (they carry no state)

    def __init__(self, limits: RateLimits, clock=time.monotonic):
        self.limits = limits
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[TokenBucket | None, TokenBucket | None]] = OrderedDict()

    def _pair(self, key: str, now: float):
        pair = self._buckets.get(key)
        if pair is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._forget(now)
            rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
            pair = (TokenBucket(rpm, now) if rpm > 0 else None, TokenBucket(tpm, now) if tpm > 0 else None)
            self._buckets[key] = pair
        else:
            self._buckets.move_to_end(key)
        return pair

    def _forget(self, now: float) -> None:
        for key in [k for k, pair in self._buckets.items() if all(b is None or b.full(now) for b in pair)]:
            del self._buckets[key]
        while len(self._buckets) >= self.MAX_KEYS:
            self._buckets.popitem(last=False)

    def admit_request(self, key: str, tier: str) -> str:
        """Before tokenizing: the tier the request runs at as far as its count is concerned
        (`tier` is what the client asked for, "default" when unset). Raises RateLimited."""
        if tier in ("flex", OVER_LIMIT):
            return tier
        try:
            self.check_request(key)
        except RateLimited:
            if tier == "auto":
                return OVER_LIMIT
            raise
        return tier

    def admit_tokens(self, key: str, tokens: int, tier: str) -> str:
        """Once tokenized: the same for its tokens (tier as returned by admit_request)."""
        if tier in ("flex", OVER_LIMIT):
            return tier
        try:
            self.check_tokens(key, tokens)
        except RateLimited:
            if tier == "auto":
                return OVER_LIMIT
            raise
        return tier

    def check_request(self, key: str) -> None:
        now = self.clock()
        bucket = self._pair(key, now)[0]
        if bucket is not None:
            wait = bucket.take(1, now)
            if wait:
                limit = self.limits.requests_per_minute
                raise RateLimited(wait, f"Rate limit reached: {limit} requests per minute. "
                                        f"Retry in {wait:.2f}s.", "requests")

    def check_tokens(self, key: str, tokens: int) -> None:
        now = self.clock()
        bucket = self._pair(key, now)[1]
        if bucket is not None:
            wait = bucket.take(tokens, now)
            if wait:
                limit = self.limits.tokens_per_minute
                if math.isinf(wait):
                    raise RateLimited(wait, f"Request too large: {tokens} tokens, more than the limit of "
                                            f"{limit} tokens per minute. Send fewer inputs per request.", "tokens")
                raise RateLimited(wait, f"Rate limit reached: {limit} tokens per minute, this request has "
                                        f"{tokens}. Retry in {wait:.2f}s.", "tokens")
