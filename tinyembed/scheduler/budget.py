"""The batch budget, set by time: how many tokens the next batch may hold.

A request waits for the batch computing when it arrives and then for its own batch, so the
time one batch takes bounds the latency of every short request. The scheduler therefore
learns how batch time grows with batch size on this device and sizes batches by time.

What is learned: batch compute time as a line in batch size,

    time(n) = overhead + n / peak_rate

fitted by least squares over recent batches, each weighted by 0.97^age (an EWMA of the sums
the fit needs, so about the last 30 batches count). That is the throughput curve
rate(n) = n / time(n): low for small batches (the fixed cost of a forward pass dominates),
approaching peak_rate for large ones. (A separate rate per batch-size bucket was tried first: a
bucket hit by a slow outlier pushed the budget below it and was then never measured again. A
line through recent batches of all sizes corrects itself.) The rule, with
k = overhead * peak_rate (the batch size at which half the time is overhead):

    latency fit   n_lat  = (max_batch_latency - overhead) * peak_rate   one batch within the target
    near peak     n_peak = k * 0.95 / 0.05 (= 19 k)                    95% of peak throughput: larger
                                                                       batches gain almost nothing
    floor         n_min  = k * 0.85 / 0.15 (~ 5.7 k)                   below 85% of peak, smaller
                                                                       batches cost more throughput
                                                                       than they save in latency
    budget        max(n_min, min(n_lat, max(n_peak, n_lat / 2))), within [16, max_batch_tokens]

(n_peak may halve the latency fit, no more: it rests on the overhead, the part of the line that
noise moves most, and smaller batches measure it worse still, so an unbounded cut ratchets down.)

On a 2-core CPU the overhead is a few ms and the latency fit decides (a few hundred tokens at
~50-100 ms); on a GPU peak_rate is far higher, the curve flattens late and n_peak decides
(thousands of tokens). When the device is too slow for the target even at an efficient size,
the floor keeps throughput, and so the queue, from collapsing. `max_batch_tokens` is the hard
cap either way.

Before any measurement the budget is `initial_tokens` (256: conservative on a CPU, cheap on a
GPU). While recent batches are all about one size (steady bulk load fills every batch to the
budget) the slope cannot be told from the overhead: the line then goes through the origin and
every other batch is a probe at 0.6x the budget, which gives the next fits two sizes. Without
the probes a slow machine spirals: the line through the origin blames all of a batch's time on
its tokens, the budget shrinks, the fixed overhead weighs more, and it shrinks again.
"""

from __future__ import annotations

import math

INITIAL_TOKENS = 256
MIN_TOKENS = 16
NEAR_PEAK = 0.95  # efficiency beyond which a larger batch is not worth its latency
FLOOR_EFFICIENCY = 0.85  # efficiency below which a smaller batch is not worth its throughput
DECAY = 0.97  # weight kept by the older batches at each new one
MIN_SPREAD = 0.15  # batch sizes' coefficient of variation needed to fit the overhead
PROBE = 0.6  # a probe batch's size, relative to the budget


class BatchBudget:
    def __init__(self, max_batch_tokens: int, max_batch_latency: float | None, *,
                 initial_tokens: int = INITIAL_TOKENS, min_tokens: int = MIN_TOKENS):
        """max_batch_latency None: no time rule, the budget is max_batch_tokens (a fixed budget)."""
        if max_batch_latency is not None and max_batch_latency <= 0:
            raise ValueError("max_batch_latency must be > 0 seconds (or None for a fixed budget)")
        self.cap = max_batch_tokens
        self.latency = max_batch_latency
        self.min_tokens = min(min_tokens, max_batch_tokens)
        self.sums = [0.0] * 5  # decayed sums of 1, n, t, n*n, n*t over batches
        self.overhead, self.peak_rate = 0.0, 0.0  # the fitted line (0: not measured yet)
        self.fitted = False  # the overhead is known (recent batches had different sizes)
        self.probing = False  # the next batch is a probe
        self.tokens = max_batch_tokens if max_batch_latency is None else min(initial_tokens, max_batch_tokens)

    @property
    def adaptive(self) -> bool:
        return self.latency is not None

    def observe(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` took `seconds` on the compute thread."""
        if not self.adaptive or tokens <= 0:
            return
        n, t = float(tokens), max(seconds, 1e-6)
        self.sums = [DECAY * old + new for old, new in zip(self.sums, (1.0, n, t, n * n, n * t))]
        self.overhead, self.peak_rate, self.fitted = self._fit()
        budget = self._decide()
        # (at the cap no probe is needed: the line through the origin overestimates batch time)
        self.probing = not self.fitted and not self.probing and budget < self.cap
        self.tokens = max(self.min_tokens, int(budget * PROBE)) if self.probing else budget

    def predicted_seconds(self, tokens: int) -> float | None:
        return None if not self.peak_rate else self.overhead + tokens / self.peak_rate

    def _fit(self) -> tuple[float, float, bool]:
        """(overhead seconds, peak tokens/s, fitted) of the weighted least-squares line."""
        w, sn, st, snn, snt = self.sums
        mean_n, mean_t = sn / w, st / w
        var = snn / w - mean_n * mean_n
        if var > (MIN_SPREAD * mean_n) ** 2:
            slope = (snt / w - mean_n * mean_t) / var
            overhead = mean_t - slope * mean_n
            if slope > 0 and overhead >= 0:
                return overhead, 1.0 / slope, True
        return 0.0, snn / snt, False  # one size only, or a fit that noise bent: the line through the origin

    def _decide(self) -> int:
        half = self.overhead * self.peak_rate  # tokens at which half of a batch's time is overhead
        n_lat = (self.latency - self.overhead) * self.peak_rate
        n_peak = half * NEAR_PEAK / (1 - NEAR_PEAK) if half else math.inf
        n_min = half * FLOOR_EFFICIENCY / (1 - FLOOR_EFFICIENCY)
        budget = max(n_min, min(n_lat, max(n_peak, n_lat / 2)))
        return int(max(self.min_tokens, min(budget, self.cap)))
