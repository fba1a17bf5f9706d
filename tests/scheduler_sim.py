"""A deterministic stand-in for the event loop and the compute thread, so the scheduler's real
lane (scheduler/continuous.py + queues.py) can be driven step by step: no threads, no clock.

The test decides when a batch finishes (`finish`), when time passes (`advance`: deadlines) and
when a cancelled task runs its `except` (a callback queued like asyncio would). `Sim.launches`
records every launched batch together with what was waiting at that moment.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from types import SimpleNamespace

import numpy as np

from tinyembed.scheduler import continuous
from tinyembed.scheduler.continuous import Scheduler
from tinyembed.scheduler.queues import Request


class FakeFuture:
    def __init__(self, loop: "FakeLoop"):
        self.loop, self._state, self._result, self._callbacks = loop, "pending", None, []

    def done(self) -> bool:
        return self._state != "pending"

    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def _finish(self, state: str, value=None) -> None:
        assert self._state == "pending", "a future resolved twice"
        self._state, self._result = state, value
        for cb in self._callbacks:
            self.loop.call_soon(cb, self)

    def set_result(self, value) -> None:
        self._finish("ok", value)

    def set_exception(self, exc) -> None:
        self._finish("error", exc)

    def cancel(self) -> bool:
        if self.done():
            return False
        self._finish("cancelled")
        return True

    def result(self):
        if self._state == "error":
            raise self._result
        return self._result

    def add_done_callback(self, cb) -> None:
        if self.done():
            self.loop.call_soon(cb, self)
        else:
            self._callbacks.append(cb)


class FakeLoop:
    def __init__(self):
        self.now = 0.0
        self.ready: deque = deque()
        self.timers: list = []
        self.jobs: deque = deque()  # (future, fn, args): batches handed to the "compute thread"
        self._seq = itertools.count()

    def create_future(self) -> FakeFuture:
        return FakeFuture(self)

    def call_soon(self, cb, *args):
        self.ready.append((cb, args))

    def call_later(self, delay, cb, *args):
        handle = SimpleNamespace(cancelled=False)
        handle.cancel = lambda: setattr(handle, "cancelled", True)
        heapq.heappush(self.timers, (self.now + delay, next(self._seq), cb, args, handle))
        return handle

    def run_in_executor(self, executor, fn, *args):
        future = FakeFuture(self)
        self.jobs.append((future, fn, args))
        return future

    def run_ready(self) -> None:
        while self.ready:
            cb, args = self.ready.popleft()
            cb(*args)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self.timers and self.timers[0][0] <= self.now:
            _, _, cb, args, handle = heapq.heappop(self.timers)
            if not handle.cancelled:
                cb(*args)
            self.run_ready()
        self.run_ready()


class FakeEngine:
    """Vectors: (request serial, sequence index) so the test can check where each one went."""

    def __init__(self, workers: int = 1, loop: "FakeLoop | None" = None, seconds_per_token: float = 0.0):
        self.info = SimpleNamespace(name="sim", dimensions=2, device="sim")
        self.workers = workers
        self.loop, self.seconds_per_token = loop, seconds_per_token

    def pack(self, sequences):
        return list(sequences)

    def embed(self, work):
        if self.loop is not None:  # the batch takes fake time: a known compute rate
            self.loop.now += self.seconds_per_token * sum(len(s) for s in work)
        return np.array([[s[0], s[1]] for s in work], dtype=np.float32)


class Sim:
    def __init__(self, monkeypatch, workers: int = 1, seconds_per_token: float = 0.0, **scheduler_args):
        self.loop = FakeLoop()
        monkeypatch.setattr(continuous, "time", SimpleNamespace(monotonic=lambda: self.loop.now))
        self.scheduler = Scheduler(**scheduler_args)
        self.scheduler._loop = self.loop
        self.engine = FakeEngine(workers, self.loop, seconds_per_token)
        self.lane = self.scheduler._lane(self.engine)
        self.requests: list[Request] = []
        self.launched_seqs: list[set[int]] = []  # per request: indices launched so far
        self.first_batch: list[int | None] = []  # per request: number of its first launched batch
        self.launches: list[dict] = []
        self.computing_at_admission: list[int] = []
        self.refused: list[continuous.Overloaded] = []
        launch = self.lane.launch

        def recording_launch(batch):
            self.record(batch)
            launch(batch)
        self.lane.launch = recording_launch

    def close(self) -> None:
        for executor in self.scheduler._executors.values():
            executor.shutdown(wait=False)

    # -- what the clients and the compute thread do ---------------------------------------------
    def arrive(self, lengths: list[int], tier: int, deadline: float | None) -> None:
        n = len(self.requests)
        seqs = [np.array([n, i] + [7] * (length - 2), dtype=np.int32) for i, length in enumerate(lengths)]
        req = Request(seqs, tier, None, None if deadline is None else self.loop.now + deadline, self.loop.now)
        self.requests.append(req)
        self.launched_seqs.append(set())
        self.first_batch.append(None)
        self.computing_at_admission.append(len(self.lane.computing))
        try:
            self.lane.admit(req)
        except continuous.Overloaded as exc:
            req.dropped = True  # never admitted
            self.refused.append(exc)
        self.loop.run_ready()

    def cancel(self, k: int) -> None:
        """The client went away: the future is cancelled now, the task's `except` runs later."""
        req = self.requests[k % len(self.requests)]
        if req.future is not None and req.future.cancel():
            self.loop.call_soon(self.lane.cancel, req)
        self.loop.run_ready()

    def finish(self) -> bool:
        if not self.loop.jobs:
            return False
        future, fn, args = self.loop.jobs.popleft()
        future.set_result(fn(*args))
        self.loop.run_ready()
        return True

    def drain(self, limit: int = 100000) -> None:
        for _ in range(limit):
            if not self.finish():
                return
        raise AssertionError("the scheduler never went idle")

    # -- the record the invariant is checked on -----------------------------------------------------
    def waiting(self, req: Request) -> bool:
        """Admitted, still wanted, and some of its sequences not launched yet."""
        return (req.future is not None and not req.future.done() and not req.dropped
                and (req.deadline is None or req.deadline > self.loop.now)
                and len(self.launched_seqs[self.requests.index(req)]) < len(req.sequences))

    def record(self, batch) -> None:
        number = len(self.launches) + 1
        picks = [(self.requests.index(p.request), list(p.indices)) for p in batch.picks]
        in_batch = {k for k, _ in picks}
        waiting = []
        for k, req in enumerate(self.requests):
            if self.waiting(req) and k not in in_batch:
                left = [req.lengths[i] for i in range(len(req.sequences)) if i not in self.launched_seqs[k]]
                waiting.append((k, min(left), self.first_batch[k] is None))
        self.launches.append({"picks": picks, "limit": batch.limit, "lower_limit": batch.lower_limit,
                              "first": {k for k in in_batch if self.first_batch[k] is None}, "waiting": waiting})
        for k, indices in picks:
            self.launched_seqs[k].update(indices)
            if self.first_batch[k] is None:
                self.first_batch[k] = number
