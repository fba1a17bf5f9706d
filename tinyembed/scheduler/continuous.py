"""Continuous batching: many concurrent requests -> full, padding-free batches, one compute
thread per device, the event loop never blocked.

    embed() --admission--> TierQueues (scheduler/queues.py) --form--> staged batch
            --launch--> compute thread: engine.embed(batch) --done--> vectors scattered
            back to each request on the loop; a request's future resolves when all its
            sequences are in.

Per model (one `_Lane` per engine): its queues, at most one batch computing per device (one;
several for a DevicePool, scheduler/devices.py) and at most one batch staged behind them.
Models on the same device share its compute thread. The staged batch
is formed (and, once it is large, packed) on the loop while the current one computes, and
launched the moment the compute thread is free (pipelining). It is not final until launched:
an arrival that ranks behind everything in it joins it if it fits; one ranked ahead of work in
it that needs that room (a first chunk vs. others' later chunks, a better tier), or the
cancellation of one of its requests, takes it back (every request keeps its rank) and it is
formed again, so the batch that launches is always what the former would make at that moment.

The invariant (checked at every launch: TierQueues.closed_to; property-tested over random
interleavings in tests/test_scheduler_invariant.py). Every batch launched while a request r of
tier T still has sequences waiting (and is neither cancelled nor past its deadline) either
carries some of r, or is closed to r: the work in it ranked ahead of r, plus r's next sequence,
does not fit the batch's limit for T (or it holds max_batch_sequences). Ranked ahead of r's
first chunk: better tiers, aged work (at most aged_share of a batch) and the first chunks of
T admitted before r; ahead of a later chunk, also the round-robin turns of T before r's. Nothing
admitted after r, and no worse-tier work beyond the aged share, ever takes r's room. The bound
that follows, in the terms of the batches-waited histogram: a request waits for the batches
computing when it arrives (one per device), then for its own batches (chunk count), plus only
the batches closed to it; so K = 1 (one device) for a request that fits in one batch when
nothing ranked ahead fills the next one, chunks + 1 otherwise. A request a launched batch leaves
out while open to it counts in tinyembed_scheduler_bound_violations_total (must stay 0); the
longest current wait is exported too (tinyembed_scheduler_longest_wait_seconds / _batches).

Why the bound broke before (the sidecar bench's p99 of seconds): when a newcomer did not fit
the staged batch, `make_room` evicted the tail of the largest other request's share, and the
evicted sequences queued behind every newer first chunk. A long single text in the staged
batch was that largest share, so each short arrival during a batch pushed it out again: it ran
only when arrivals paused (tests: test_a_single_text_is_never_pushed_out_by_later_arrivals).
A take-back (better-tier arrival, cancellation) put its picks ahead of older first chunks too.

Batch size: each lane's `BatchBudget` (scheduler/budget.py) learns how batch time grows with
batch size (a line fitted to recent batches: fixed overhead + tokens / peak rate) and sets the
token budget of the next batches so that one batch stays within `max_batch_latency` seconds and
is no larger than needed for near-peak throughput; `max_batch_tokens` is the hard cap. Without
a latency target the budget is max_batch_tokens. Round-robin chunks (a request's share per
turn) are budget // 8.

Backpressure: a lane holds at most `max_queue_tokens` admitted-but-unfinished tokens (queued,
staged and computing). An embed() that would pass the bound raises Overloaded(retry_after),
retry_after = the excess over the bound / the measured drain rate (EWMA of tokens/s of recent
batches, times the devices of a DevicePool: they drain the queue together). An empty lane
admits any request, so a request larger than the bound still runs.

Cancellation: when the awaiting task is cancelled (the client went away; its future is
cancelled at that moment) or its deadline passes, the request's not-yet-launched sequences
are dropped and never computed (the staged batch is checked just before it launches); a
batch already computing finishes and its vectors for that request are discarded. A deadline
only fails a request that still has sequences waiting (DeadlineExceeded): once all of it is
computing, finishing is cheaper than throwing the work away.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from tinyembed.common.metrics import LATENCY_BUCKETS, Registry
from tinyembed.scheduler.budget import BatchBudget
from tinyembed.scheduler.devices import compute_executor
from tinyembed.scheduler.runner import DeadlineExceeded, Overloaded
from tinyembed.scheduler.queues import ADDED, REFORM, TIER_RANK, TIERS, FormedBatch, Request, TierQueues

__all__ = ["Scheduler", "Overloaded", "DeadlineExceeded"]

BATCH_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
BATCH_SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCHES_WAITED_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256, 1024)
SIZE_CLASSES = ((1, "1"), (32, "2-32"), (256, "33-256"))  # inputs per request -> label; above: "257+"
ANONYMOUS = "anonymous"
MAX_USAGE_KEYS = 1000  # distinct usage labels; later keys are counted under "other"


class Scheduler:
    """The continuous-batching Runner (see runner.py for the contract)."""

    def __init__(self, max_batch_tokens: int = 16384, max_batch_sequences: int | None = None,
                 max_queue_tokens: int | None = None, *, priority_batch_tokens: int | None = None,
                 chunk_tokens: int | None = None, aging_batches: int = 8, aged_share: float = 0.25,
                 priority_hold_batches: int = 8, max_retry_after: float = 60.0,
                 max_batch_latency: float | None = None):
        """max_batch_tokens / max_batch_sequences: the budget of one batch.
        max_queue_tokens: admitted-but-unfinished tokens per model (default 16 batches).
        priority_batch_tokens: while priority work is waiting or was admitted within the last
        priority_hold_batches batches, a batch takes default/flex work only up to this many
        tokens (default max_batch_tokens // 4), so a priority request never waits behind a
        long batch. chunk_tokens: what one request gives per round-robin turn (default
        max_batch_tokens // 8). aging_batches, aged_share: a default/flex request passed over
        by aging_batches batches gets up to aged_share of the next batches ahead of better
        tiers (flex is never starved). See queues.py for the batch former.
        max_batch_latency: seconds one batch should take; the budget of a batch is then learned
        (budget.py) and max_batch_tokens is only its cap. None: every batch may fill to
        max_batch_tokens."""
        self._queue_args = dict(max_batch_tokens=max_batch_tokens, max_batch_sequences=max_batch_sequences,
                                priority_batch_tokens=priority_batch_tokens, chunk_tokens=chunk_tokens,
                                aging_batches=aging_batches, aged_share=aged_share,
                                priority_hold_batches=priority_hold_batches)
        TierQueues(**self._queue_args)  # validate the arguments now, not at the first request
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_latency = max_batch_latency
        BatchBudget(max_batch_tokens, max_batch_latency)  # validate now too
        self.max_queue_tokens = max_queue_tokens or 16 * max_batch_tokens
        self.max_retry_after = max_retry_after
        self._lanes: dict[object, _Lane] = {}  # engine -> lane (held: ids are never reused)
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stats = _Stats()

    # -- the Runner contract -------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def embed(self, engine, sequences: list[np.ndarray], *, tier: str = "default",
                    deadline: float | None = None, key: str | None = None) -> np.ndarray:
        rank = TIER_RANK.get(tier)
        if rank is None:
            raise ValueError(f"unknown service tier {tier!r}: use one of {', '.join(TIER_RANK)}")
        if not sequences:
            return np.zeros((0, engine.info.dimensions), dtype=np.float32)
        for s in sequences:  # so that packing a batch cannot fail later, far from the caller
            if not isinstance(s, np.ndarray) or s.ndim != 1 or s.dtype.kind not in "iu" or not len(s):
                raise ValueError("each sequence must be a non-empty 1-D integer numpy array of token ids")
        if self._closed:
            self._stats.rejected.inc(engine.info.name, "stopping")
            raise Overloaded(1.0)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._stats.rejected.inc(engine.info.name, "deadline")
            raise DeadlineExceeded()
        lane = self._lane(engine)
        req = Request(sequences, rank, key, deadline, now)
        lane.admit(req)  # raises Overloaded
        try:
            return await req.future
        except asyncio.CancelledError:
            lane.cancel(req)
            raise

    async def stop(self) -> None:
        """Refuse new work (Overloaded), finish everything admitted, then release the threads."""
        self._closed = True
        for lane in list(self._lanes.values()):
            await lane.idle.wait()
        for lane in self._lanes.values():
            lane.export_gauges()  # the final values stay visible in metrics()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()
        self._lanes.clear()  # a later start() gets fresh lanes and threads

    def metrics(self) -> str:
        for lane in self._lanes.values():
            lane.export_gauges()
        return self._stats.registry.render()

    def cap_batch_tokens(self, tokens: int) -> None:
        """Issue 27 hook: the memory budget's cap on a forward pass, set before the first request."""
        self.max_batch_tokens = min(self.max_batch_tokens, tokens)
        self._queue_args["max_batch_tokens"] = self.max_batch_tokens

    # -- for tests, benches and the curious ----------------------------------------------------
    def snapshot(self, engine=None) -> dict:
        """Per model: queued tokens/sequences per tier, unfinished tokens, its peak, drain rate."""
        lanes = self._lanes.values() if engine is None else [self._lanes[engine]]
        return {lane.name: lane.snapshot() for lane in lanes}

    def batch_budget(self, engine) -> int:
        """Tokens the model's next batches may hold (the time-set budget, or the cap)."""
        lane = self._lanes.get(engine)
        return lane.budget.tokens if lane is not None else BatchBudget(
            self.max_batch_tokens, self.max_batch_latency).tokens

    def _lane(self, engine) -> _Lane:
        lane = self._lanes.get(engine)
        if lane is None:
            if self._loop is None:
                self.start()
            device = str(getattr(engine.info, "device", "cpu"))
            executor = self._executors.get(device)
            if executor is None:  # one compute thread per device, shared by its models
                executor = self._executors[device] = compute_executor(engine)
            lane = self._lanes[engine] = _Lane(self, engine, executor)
        return lane


class _Lane:
    """One model: its queues, the batch computing and the batch staged behind it."""

    def __init__(self, scheduler: Scheduler, engine, executor: ThreadPoolExecutor):
        self.scheduler = scheduler
        self.loop = scheduler._loop
        self.engine = engine
        self.name = engine.info.name
        self.dimensions = engine.info.dimensions
        self.executor = executor
        self.stats = scheduler._stats
        self.queues = TierQueues(**scheduler._queue_args)
        self.budget = BatchBudget(scheduler.max_batch_tokens, scheduler.max_batch_latency)
        self.queues.set_budget(self.budget.tokens)
        for tier in TIERS:  # present from the start: an alert on it needs the series
            self.stats.bound_violations.inc(self.name, tier, by=0)
        self.max_tokens = scheduler.max_queue_tokens
        self.workers = getattr(engine, "workers", 1)  # devices: batches that may compute at once
        self.computing: list[FormedBatch] = []
        self.staged: FormedBatch | None = None
        self.peak_unfinished_tokens = 0
        self.device_rate = 0.0  # tokens/s of one device, EWMA over batches
        self.kick_pending = False
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def drain_rate(self) -> float:
        """Tokens/s the lane drains: a batch's rate on one device times the devices computing at
        once (a queue long enough to refuse requests keeps every device busy)."""
        return self.device_rate * self.workers

    @property
    def unfinished_tokens(self) -> int:
        """Admitted and not finished: queued (staged included) + computing."""
        return self.queues.total_tokens + sum(batch.tokens for batch in self.computing)

    # -- admission -----------------------------------------------------------------------------
    def admit(self, req: Request) -> None:
        unfinished = self.unfinished_tokens
        if unfinished and unfinished + req.tokens > self.max_tokens:
            self.stats.rejected.inc(self.name, "queue_full")
            raise Overloaded(self.retry_after(req.tokens))
        req.future = self.loop.create_future()
        req.seen_batch = self.queues.batches_launched - len(self.computing)
        if req.deadline is not None:
            req.timer = self.loop.call_later(max(0.0, req.deadline - time.monotonic()), self.expire, req)
        self.queues.add(req)
        self.peak_unfinished_tokens = max(self.peak_unfinished_tokens, unfinished + req.tokens)
        self.idle.clear()
        staged = self.staged
        if staged is not None:  # keep the staged batch what the former would make now
            action = self.queues.offer(staged, req)
            if action == REFORM:
                self.unstage()  # formed again in step(), ranks kept
            elif action == ADDED:
                staged.packed = None  # packed again in step()
        self.kick()

    def retry_after(self, tokens: int) -> float:
        """Seconds until the queue has drained enough to admit `tokens` more."""
        if tokens > self.max_tokens:  # admitted only into an empty lane
            excess = self.unfinished_tokens
        else:
            excess = self.unfinished_tokens + tokens - self.max_tokens
        seconds = excess / self.drain_rate if self.drain_rate > 0 else 1.0
        return min(max(seconds, 0.001), self.scheduler.max_retry_after)

    # -- cancellation and deadlines ------------------------------------------------------------
    def cancel(self, req: Request) -> None:
        """The awaiting task was cancelled: forget whatever of it has not been launched."""
        if req.unfinished and not req.dropped:
            self.stats.rejected.inc(self.name, "cancelled")
            self.drop(req)

    def expire(self, req: Request) -> None:
        """Deadline timer: fail the request if some of it is still waiting."""
        if req.dropped or req.future.done() or req.queued_seqs == 0:
            return
        self.stats.rejected.inc(self.name, "deadline")
        self.drop(req)
        req.future.set_exception(DeadlineExceeded())

    def drop(self, req: Request) -> None:
        if self.staged is not None and req in self.staged.requests():
            self.unstage()
        self.queues.drop(req)  # what of it is computing stays counted until that batch ends
        if req.timer is not None:
            req.timer.cancel()
        self.kick()

    # -- forming, launching, finishing batches -------------------------------------------------
    def kick(self) -> None:
        """Schedule one step of batch work; arrivals within a loop iteration share it."""
        if not self.kick_pending:
            self.kick_pending = True
            self.loop.call_soon(self.step)

    def step(self) -> None:
        self.kick_pending = False
        self.purge_staged()
        while len(self.computing) < self.workers:
            batch, self.staged = self.staged, None
            if batch is None:
                batch = self.form()
            if batch is None:
                break
            self.launch(batch)
        if self.computing and self.staged is None:
            self.staged = self.form()  # pipelining: ready before the compute thread is free
        staged = self.staged
        if staged is not None and staged.packed is None and 2 * staged.tokens >= staged.lower_limit:
            # pack now, off the critical path; a small batch that may still grow by top-ups is
            # packed on the compute thread at launch instead (cheap), not after every arrival
            staged.packed = self.engine.pack(staged.sequences())
        if not self.computing and self.staged is None and not self.queues.has_work():
            self.idle.set()

    def form(self) -> FormedBatch | None:
        batch, expired = self.queues.form(time.monotonic())
        for req in expired:  # TierQueues already dropped them
            if req.timer is not None:
                req.timer.cancel()
            if req.future.cancelled():  # its task has not run its `except` yet
                self.stats.rejected.inc(self.name, "cancelled")
            elif not req.future.done():
                self.stats.rejected.inc(self.name, "deadline")
                req.future.set_exception(DeadlineExceeded())
        return batch

    def purge_staged(self) -> None:
        """Before the staged batch runs: a request whose task was cancelled since it was formed
        (its future is cancelled at once; the task's `except` runs later) must not be computed."""
        staged = self.staged
        if staged is None:
            return
        for req in {p.request for p in staged.picks if p.request.future.cancelled()}:
            self.cancel(req)

    def unstage(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            self.queues.restore(staged)

    def launch(self, batch: FormedBatch) -> None:
        now = time.monotonic()
        for req in self.queues.closed_to(batch, now):  # the invariant: must stay empty
            self.stats.bound_violations.inc(self.name, TIERS[req.tier])
        self.queues.launched(batch)
        number = self.queues.batches_launched  # this batch's
        for req in batch.requests():
            if req.started is None:
                req.started = now
            if req.queued_seqs == 0:  # its last batch
                req.batches_waited = number - 1 - req.seen_batch
                req.last_launch = now
        self.computing.append(batch)
        work = batch.packed if batch.packed is not None else batch.sequences()  # small: packed there
        future = self.loop.run_in_executor(self.executor, _compute, self.engine, work)
        future.add_done_callback(partial(self.finished, batch))

    def finished(self, batch: FormedBatch, future: asyncio.Future) -> None:
        self.computing.remove(batch)
        try:
            vectors, started, ended = future.result()
        except BaseException as exc:  # noqa: BLE001 - a compute failure fails its requests
            self.fail_batch(batch, exc)  # (their staged sequences too)
            vectors = None
        self.purge_staged()
        if self.staged is not None:  # the compute thread is free: feed it first
            staged, self.staged = self.staged, None
            self.launch(staged)
        if vectors is not None:
            self.record_batch(batch, started, ended)
            self.deliver(batch, vectors)  # response assembly, while the next batch computes
        self.kick()

    def deliver(self, batch: FormedBatch, vectors: np.ndarray) -> None:
        offset = 0
        for pick in batch.picks:
            req, count = pick.request, len(pick.indices)
            rows = vectors[offset:offset + count]
            offset += count
            if req.dropped or req.future.done():
                continue
            if req.out is None:
                if count == req.unfinished == 1:  # a single text: no copy
                    req.out = rows
                    req.unfinished = 0
                    self.complete(req)
                    continue
                req.out = np.empty((len(req.sequences), vectors.shape[1]), dtype=np.float32)
            req.out[pick.indices] = rows
            req.unfinished -= count
            if req.unfinished == 0:
                self.complete(req)

    def complete(self, req: Request) -> None:
        if req.timer is not None:
            req.timer.cancel()
        now = time.monotonic()
        tier = TIERS[req.tier]
        self.stats.queue_seconds.observe(req.started - req.admitted, self.name, tier)
        self.stats.compute_seconds.observe(now - req.started, self.name, tier)
        size = size_class(len(req.sequences))
        self.stats.wait_seconds.observe(req.last_launch - req.admitted, self.name, tier, size)
        self.stats.batches_waited.observe(req.batches_waited, self.name, tier, size)
        key = self.stats.usage_label(req.key)
        self.stats.usage_requests.inc(key, self.name)
        self.stats.usage_tokens.inc(key, self.name, by=req.tokens)
        req.future.set_result(req.out)

    def fail_batch(self, batch: FormedBatch, exc: BaseException) -> None:
        for req in batch.requests():
            if not req.dropped and not req.future.done():
                self.drop(req)
                if isinstance(exc, asyncio.CancelledError):
                    req.future.cancel()
                else:
                    req.future.set_exception(exc)
            req.dropped = True

    def record_batch(self, batch: FormedBatch, started: float, ended: float) -> None:
        seconds = max(ended - started, 1e-6)
        self.stats.batch_tokens.observe(batch.tokens, self.name)
        self.stats.batch_sequences.observe(batch.num_seqs, self.name)
        self.stats.batch_seconds.observe(seconds, self.name)
        rate = batch.tokens / seconds
        self.device_rate = rate if not self.device_rate else 0.8 * self.device_rate + 0.2 * rate
        self.budget.observe(batch.tokens, seconds)
        self.queues.set_budget(self.budget.tokens)

    # -- introspection ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        q = self.queues
        return {
            "queued_tokens": dict(zip(TIERS, q.queued_tokens)),
            "queued_sequences": dict(zip(TIERS, q.queued_seqs)),
            "unfinished_tokens": self.unfinished_tokens,
            "peak_unfinished_tokens": self.peak_unfinished_tokens,
            "max_queue_tokens": self.max_tokens,
            "computing_tokens": sum(batch.tokens for batch in self.computing),
            "batches": q.batches_launched,
            "drain_tokens_per_second": self.drain_rate,
            "batch_budget_tokens": self.budget.tokens,
        }

    def export_gauges(self) -> None:
        s, q = self.stats, self.queues
        for tier, name in enumerate(TIERS):
            s.queue_tokens.set(q.queued_tokens[tier], self.name, name)
            s.queue_sequences.set(q.queued_seqs[tier], self.name, name)
        s.unfinished_tokens.set(self.unfinished_tokens, self.name)
        s.max_unfinished_tokens.set(self.max_tokens, self.name)
        s.drain_rate.set(round(self.drain_rate, 3), self.name)
        s.budget.set(self.budget.tokens, self.name)
        seconds, batches = self.longest_wait()
        s.longest_wait.set(round(seconds, 6), self.name)
        s.longest_wait_batches.set(batches, self.name)

    def longest_wait(self) -> tuple[float, int]:
        """(seconds, batches started) since admission, the longest of the requests now waiting."""
        waiting = set(self.queues.waiting())
        if self.staged is not None:
            waiting |= self.staged.requests()
        waiting = [r for r in waiting if not r.dropped and not r.future.done()]
        if not waiting:
            return 0.0, 0
        now = time.monotonic()
        return (max(now - r.admitted for r in waiting),
                max(self.queues.batches_launched - r.seen_batch for r in waiting))


def size_class(inputs: int) -> str:
    return next((label for bound, label in SIZE_CLASSES if inputs <= bound), f"{SIZE_CLASSES[-1][0] + 1}+")


def _compute(engine, work):
    """On the compute thread: packed batch (or its sequences) -> (vectors, started, ended)."""
    started = time.monotonic()
    vectors = engine.embed(engine.pack(work) if isinstance(work, list) else work)
    return vectors, started, time.monotonic()


class _Stats:
    """The scheduler's Prometheus series (the app appends them to /metrics)."""

    def __init__(self):
        r = self.registry = Registry()
        self.queue_sequences = r.gauge("tinyembed_scheduler_queue_sequences",
                                       "Sequences admitted and not yet computing", ("model", "tier"))
        self.queue_tokens = r.gauge("tinyembed_scheduler_queue_tokens",
                                    "Tokens admitted and not yet computing", ("model", "tier"))
        self.unfinished_tokens = r.gauge("tinyembed_scheduler_unfinished_tokens",
                                         "Tokens admitted and not yet finished (queued + computing)", ("model",))
        self.max_unfinished_tokens = r.gauge("tinyembed_scheduler_max_queue_tokens",
                                             "Bound on unfinished tokens; beyond it requests get 503", ("model",))
        self.drain_rate = r.gauge("tinyembed_scheduler_drain_tokens_per_second",
                                  "Measured compute throughput of the model's devices together (EWMA over batches)", ("model",))
        self.batch_tokens = r.histogram("tinyembed_scheduler_batch_tokens", "Tokens per batch", ("model",),
                                        BATCH_TOKEN_BUCKETS)
        self.batch_sequences = r.histogram("tinyembed_scheduler_batch_sequences", "Sequences per batch",
                                           ("model",), BATCH_SEQ_BUCKETS)
        self.batch_seconds = r.histogram("tinyembed_scheduler_batch_compute_seconds",
                                         "Forward-pass time per batch", ("model",), BATCH_SECONDS_BUCKETS)
        self.budget = r.gauge("tinyembed_scheduler_batch_budget_tokens",
                              "Tokens the next batches may hold (set by --max-batch-latency, capped by "
                              "--max-batch-tokens)", ("model",))
        self.wait_seconds = r.histogram("tinyembed_scheduler_request_wait_seconds",
                                        "Per request: admission -> its last batch starts, by tier and inputs "
                                        "per request", ("model", "tier", "size"), LATENCY_BUCKETS)
        self.batches_waited = r.histogram("tinyembed_scheduler_request_batches_waited",
                                          "Per request: batches computed after it arrived and before its last "
                                          "batch (the one computing on arrival included)", ("model", "tier", "size"),
                                          BATCHES_WAITED_BUCKETS)
        self.queue_seconds = r.histogram("tinyembed_scheduler_request_queue_seconds",
                                         "Per request: admission -> its first batch starts", ("model", "tier"),
                                         LATENCY_BUCKETS)
        self.compute_seconds = r.histogram("tinyembed_scheduler_request_compute_seconds",
                                           "Per request: its first batch starts -> its last batch ends",
                                           ("model", "tier"), LATENCY_BUCKETS)
        self.rejected = r.counter("tinyembed_scheduler_rejected_total",
                                  "Requests refused or dropped, by reason "
                                  "(queue_full, stopping, deadline, cancelled)", ("model", "reason"))
        self.bound_violations = r.counter(
            "tinyembed_scheduler_bound_violations_total",
            "Requests a launched batch left out although it had room for their next sequence after the work "
            "ranked ahead of them (the scheduling invariant, see scheduler/continuous.py): must stay 0",
            ("model", "tier"))
        self.longest_wait = r.gauge("tinyembed_scheduler_longest_wait_seconds",
                                    "Longest time since admission of a request now waiting for a batch", ("model",))
        self.longest_wait_batches = r.gauge("tinyembed_scheduler_longest_wait_batches",
                                            "Most batches started since admission of a request now waiting for "
                                            "a batch", ("model",))
        self.usage_requests = r.counter("tinyembed_usage_requests_total",
                                        "Completed embedding requests per API key", ("key", "model"))
        self.usage_tokens = r.counter("tinyembed_usage_tokens_total",
                                      "Tokens embedded per API key", ("key", "model"))
        self.usage_keys: set[str] = set()

    def usage_label(self, key: str | None) -> str:
        """The key's label, bounded in number: /metrics never grows without limit."""
        key = key or ANONYMOUS
        if key not in self.usage_keys:
            if len(self.usage_keys) >= MAX_USAGE_KEYS:
                return "other"
            self.usage_keys.add(key)
        return key
