"""The seam between the HTTP app and compute: the app hands token-id sequences to a `Runner`
and awaits their vectors. It never calls the engine itself, so the continuous-batching
scheduler (scheduler.py) replaces `DirectRunner` without touching the protocol code.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from tinyembed.engine import Engine
from tinyembed.common.metrics import TOKEN_BUCKETS, Registry
from tinyembed.scheduler.devices import compute_executor


class Overloaded(Exception):
    """The queue is full: the app answers 503 server_overloaded, Retry-After: ceil(retry_after)."""

    def __init__(self, retry_after: float):
        super().__init__(f"server overloaded, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch ran: the app answers 408 timeout."""


class Runner(Protocol):
    async def embed(self, engine: Engine, sequences: list[np.ndarray], *, tier: str = "default",
                    deadline: float | None = None, key: str | None = None) -> np.ndarray:
        """(n, H) float32 unit vectors in input order. `deadline` is time.monotonic() based.
        If the awaiting task is cancelled (client disconnected), pending work is dropped."""
        ...

    def start(self) -> None:
        """Called inside the running event loop."""
        ...

    async def stop(self) -> None:
        """Finish everything already admitted, then return."""
        ...

    def metrics(self) -> str:
        """Extra Prometheus text lines appended to /metrics ("" is fine)."""
        ...


def split_by_tokens(sequences: list[np.ndarray], max_tokens: int) -> list[list[np.ndarray]]:
    """Consecutive chunks of at most max_tokens tokens (a longer single sequence stands alone)."""
    chunks, chunk, tokens = [], [], 0
    for seq in sequences:
        if chunk and tokens + len(seq) > max_tokens:
            chunks.append(chunk)
            chunk, tokens = [], 0
        chunk.append(seq)
        tokens += len(seq)
    if chunk:
        chunks.append(chunk)
    return chunks


class DirectRunner:
    """Each request runs on a compute thread, in chunks of at most max_batch_tokens, in
    arrival order; chunks of concurrent requests interleave. No batching across requests.
    One compute thread per device (scheduler/devices.py): with a DevicePool, concurrent
    requests' chunks run on every device at once."""

    def __init__(self, max_batch_tokens: int = 16384, max_queue_tokens: int = 500_000):
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_tokens = max_queue_tokens
        self._pools: dict[str, ThreadPoolExecutor] = {}  # device(s) -> their compute threads
        self._queued_tokens = 0  # admitted and not finished, the running chunk included
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._tokens_per_second = 0.0  # moving average, for Retry-After
        registry = self._registry = Registry()
        self._queue_tokens = registry.gauge("tinyembed_queue_tokens", "Tokens admitted and not yet embedded")
        self._queue_wait = registry.histogram("tinyembed_queue_seconds", "Time a batch waited for the compute thread")
        self._compute = registry.histogram("tinyembed_compute_seconds", "Forward-pass time per batch")
        self._batch_tokens = registry.histogram("tinyembed_batch_tokens", "Tokens per batch", buckets=TOKEN_BUCKETS)
        self._queue_tokens.set(0)

    def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    async def stop(self) -> None:
        if self._idle is not None:
            await self._idle.wait()
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()

    def metrics(self) -> str:
        self._queue_tokens.set(self._queued_tokens)
        return self._registry.render()

    async def embed(self, engine: Engine, sequences: list[np.ndarray], *, tier: str = "default",
                    deadline: float | None = None, key: str | None = None) -> np.ndarray:
        tokens = sum(len(s) for s in sequences)
        # Always admit into an empty queue, so a request larger than the bound still runs.
        if self._queued_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
            raise Overloaded(self._wait_estimate(getattr(engine, "workers", 1)))
        device = str(getattr(engine.info, "device", "cpu"))
        pool = self._pools.get(device)
        if pool is None:  # one thread per device, bound to it; models on a device share them
            pool = self._pools[device] = compute_executor(engine)
        self._queued_tokens += tokens
        self._active += 1
        self._idle.clear()
        loop = asyncio.get_running_loop()
        try:
            outputs = []
            for i, chunk in enumerate(split_by_tokens(sequences, self.max_batch_tokens)):
                # Only the first chunk is held to the deadline: once a request has started,
                # finishing it is cheaper than throwing the work away.
                chunk_deadline = deadline if i == 0 else None
                submitted = time.monotonic()
                vectors, started, finished = await loop.run_in_executor(
                    pool, _run_batch, engine, chunk, chunk_deadline)
                self._record(submitted, started, finished, sum(len(s) for s in chunk))
                outputs.append(vectors)
            return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        finally:
            self._queued_tokens -= tokens
            self._active -= 1
            if not self._active:
                self._idle.set()

    def _record(self, submitted: float, started: float, finished: float, tokens: int) -> None:
        self._queue_wait.observe(started - submitted)
        self._compute.observe(finished - started)
        self._batch_tokens.observe(tokens)
        rate = tokens / max(finished - started, 1e-6)
        self._tokens_per_second = rate if not self._tokens_per_second else 0.8 * self._tokens_per_second + 0.2 * rate

    def _wait_estimate(self, devices: int = 1) -> float:
        """The queue over the drain rate: one device's rate times the devices working on it."""
        if not self._tokens_per_second:
            return 1.0
        return max(1.0, math.ceil(self._queued_tokens / (self._tokens_per_second * devices)))


def _run_batch(engine: Engine, chunk: list[np.ndarray], deadline: float | None):
    """On the compute thread: -> (vectors, started, finished) in time.monotonic()."""
    started = time.monotonic()
    if deadline is not None and started > deadline:
        raise DeadlineExceeded()
    vectors = engine.embed(engine.pack(chunk))
    return vectors, started, time.monotonic()
