"""The batch budget, set by time: how many tokens the next batch may hold.

A request waits for the batch computing when it arrives and then for its own batch, so the
time one batch takes bounds the latency of every short request. The scheduler therefore
learns the device's throughput as a function of batch size and sizes batches by time:

    rate(b)      tokens/s of batches in size bucket b (EWMA per bucket; buckets step by sqrt 2)
    fits         the largest bucket whose predicted time b / rate(b) <= max_batch_latency
                 (an unmeasured bucket is predicted with the rate of the nearest measured one
                 below it: throughput grows with batch size, so this errs on the short side)
    near_peak    the smallest measured bucket reaching `near_peak` (95%) of the best rate seen
    budget       min(fits, near_peak), within [min_tokens, max_batch_tokens]

`near_peak` only applies once a larger bucket has been measured and found no better: while
the best rate is at the largest measured bucket, throughput may still grow, so the budget
goes up to `fits` (that is how larger buckets get measured). On a 2-core CPU throughput is
flat beyond a few hundred tokens and `fits` decides (~50-100 ms -> a few hundred tokens); on a
GPU the rate keeps growing to thousands of tokens and `near_peak` stops the budget where the
curve flattens. `max_batch_tokens` stays the hard cap either way.

Before any measurement the budget is `initial_tokens` (conservative: 256, or the cap if
smaller). Batches that hold fewer tokens than a bucket's lower edge are attributed to their
own (smaller) bucket, so light load teaches the small end of the curve and heavy load the
large end.
"""

from __future__ import annotations

import math

INITIAL_TOKENS = 256
MIN_TOKENS = 16
NEAR_PEAK = 0.95
EWMA_WEIGHT = 0.2  # of the newest batch


class BatchBudget:
    def __init__(self, max_batch_tokens: int, max_batch_latency: float | None, *,
                 initial_tokens: int = INITIAL_TOKENS, min_tokens: int = MIN_TOKENS, near_peak: float = NEAR_PEAK):
        """max_batch_latency None: no time rule, the budget is max_batch_tokens (a fixed budget)."""
        if max_batch_latency is not None and max_batch_latency <= 0:
            raise ValueError("max_batch_latency must be > 0 seconds (or None for a fixed budget)")
        self.cap = max_batch_tokens
        self.latency = max_batch_latency
        self.near_peak = near_peak
        self.min_tokens = min(min_tokens, max_batch_tokens)
        # bucket upper edges: min_tokens * sqrt(2)^k, the last one the cap itself
        edges, edge = [], float(self.min_tokens)
        while edge < max_batch_tokens:
            edges.append(int(round(edge)))
            edge *= math.sqrt(2)
        edges.append(max_batch_tokens)
        self.edges = sorted(set(edges))
        self.rates: list[float | None] = [None] * len(self.edges)  # tokens/s per bucket
        self.tokens = max_batch_tokens if max_batch_latency is None else min(initial_tokens, max_batch_tokens)

    @property
    def adaptive(self) -> bool:
        return self.latency is not None

    def bucket(self, tokens: int) -> int:
        """Index of the smallest bucket whose upper edge holds `tokens`."""
        for i, edge in enumerate(self.edges):
            if tokens <= edge:
                return i
        return len(self.edges) - 1

    def observe(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` took `seconds` on the compute thread."""
        if not self.adaptive or tokens <= 0:
            return
        i = self.bucket(tokens)
        rate = tokens / max(seconds, 1e-6)
        old = self.rates[i]
        self.rates[i] = rate if old is None else (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * rate
        self.tokens = self._decide()

    def predicted_seconds(self, tokens: int) -> float | None:
        rate = self._rate_for(self.bucket(tokens))
        return None if rate is None else tokens / rate

    def _rate_for(self, i: int) -> float | None:
        """The bucket's rate, or the nearest measured one below it (else above it)."""
        for j in range(i, -1, -1):
            if self.rates[j] is not None:
                return self.rates[j]
        return next((r for r in self.rates[i:] if r is not None), None)

    def _decide(self) -> int:
        measured = [i for i, r in enumerate(self.rates) if r is not None]
        fits = 0
        for i, edge in enumerate(self.edges):
            if edge / self._rate_for(i) <= self.latency:
                fits = i
        best = max(measured, key=lambda i: self.rates[i])
        choice = fits
        if best < measured[-1]:  # a larger batch was measured and is no faster: the curve is flat
            enough = next(i for i in measured if self.rates[i] >= self.near_peak * self.rates[best])
            choice = min(fits, enough)
        return max(self.min_tokens, min(self.edges[choice], self.cap))
