"""The scheduler's bookkeeping without the real engine: the batch former alone, and every
invariant under random load with a fake, fast engine."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tinyembed.engine.families.bert import Batch
from tinyembed.scheduler.runner import DeadlineExceeded, Overloaded
from tinyembed.scheduler import Scheduler
from tinyembed.scheduler.queues import FLEX, PRIORITY, Request, TierQueues

from test_scheduler import run, seq


# -- the batch former alone (no engine) -----------------------------------------------------------
def _req(lengths, tier=1, now=0.0):
    return Request([np.ones(n, np.int32) for n in lengths], tier, None, None, now)


def test_former_interleaves_requests_and_fills_the_budget():
    q = TierQueues(max_batch_tokens=100, chunk_tokens=20)
    big, small = _req([10] * 50), _req([7])
    q.add(big)
    q.add(small)
    batch, _ = q.form(0.0)
    assert batch.tokens == 97 and small in batch.requests()
    assert [p.request for p in batch.picks][:3] == [big, small, big]


def test_former_holds_lower_tiers_short_while_priority_traffic_is_recent():
    q = TierQueues(max_batch_tokens=100, priority_batch_tokens=30, max_batch_sequences=5, priority_hold_batches=2)
    q.add(_req([10] * 40, tier=FLEX))
    q.add(_req([5], tier=PRIORITY))
    batches = []
    for _ in range(5):
        batch, _ = q.form(0.0)
        q.launched(batch)
        batches.append(batch)
    assert batches[0].picks[0].request.tier == PRIORITY
    # priority + flex up to 30; two more batches held at 30; then only the 5-sequence cap binds
    assert [b.tokens for b in batches] == [25, 30, 30, 50, 50]


def test_former_puts_an_oversized_sequence_alone_and_expires_deadlines():
    q = TierQueues(max_batch_tokens=10)
    q.add(_req([50, 3]))
    dead = Request([np.ones(4, np.int32)], 1, None, 1.0, 0.0)
    q.add(dead)
    batch, expired = q.form(2.0)
    assert expired == [dead] and batch.tokens == 3  # shortest first
    batch, _ = q.form(2.0)
    assert batch.tokens == 50 and batch.num_seqs == 1
    assert q.form(2.0) == (None, []) and q.total_tokens == 53  # formed, never launched


# -- invariants under random load (a fake, fast engine) ---------------------------------------------
class FakeEngine:
    """Vector of a sequence = (first id, length, 0, 0): checks scatter and order exactly."""

    def __init__(self):
        self.info = SimpleNamespace(name="fake", dimensions=4, device="fake")
        self.computed: list[bytes] = []

    def pack(self, sequences):
        return Batch.pack(sequences)

    def embed(self, batch):
        time.sleep(0.0005)  # long enough for arrivals and cancellations to land mid-batch
        cu = batch.cu_seqlens
        out = np.zeros((len(cu) - 1, 4), np.float32)
        for i in range(len(cu) - 1):
            ids = batch.input_ids[cu[i]:cu[i + 1]]
            self.computed.append(ids.tobytes())
            out[i, :2] = ids[1], len(ids)
        return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_load_keeps_every_invariant(seed):
    rng = np.random.default_rng(seed)
    fake = FakeEngine()

    async def main():
        scheduler = Scheduler(max_batch_tokens=int(rng.integers(16, 200)), max_queue_tokens=4000,
                              max_batch_sequences=int(rng.integers(2, 40)), aging_batches=2)
        outcomes, allowed = {}, {}

        async def client(i):
            n = int(rng.integers(1, 12))
            seqs = [seq(int(rng.integers(3, 30))) for _ in range(n)]
            tier = ["priority", "default", "flex", "auto"][int(rng.integers(4))]
            deadline = time.monotonic() + 0.002 if rng.random() < 0.1 else None
            task = asyncio.create_task(scheduler.embed(fake, seqs, tier=tier, deadline=deadline))
            for _ in range(int(rng.integers(0, 6))):
                await asyncio.sleep(0)
            if rng.random() < 0.2 and not task.done():
                lane = scheduler._lanes[fake]
                running = [s for batch in lane.computing for s in batch.sequences()]
                allowed[i] = {s.tobytes() for s in running} | set(fake.computed)  # launched by now
                task.cancel()
            try:
                outcomes[i] = (seqs, await task)
            except (asyncio.CancelledError, Overloaded, DeadlineExceeded) as exc:
                outcomes[i] = (seqs, exc)

        clients = []
        for i in range(150):
            clients.append(asyncio.create_task(client(i)))
            for _ in range(int(rng.integers(0, 5))):
                await asyncio.sleep(0)
        await asyncio.gather(*clients)
        snapshot = scheduler.snapshot()["fake"]
        await scheduler.stop()
        return outcomes, allowed, snapshot

    outcomes, allowed, snapshot = run(main())
    assert len(fake.computed) == len(set(fake.computed))  # no sequence computed twice
    kinds = {"ok": 0, "cancelled": 0}
    for i, (seqs, result) in outcomes.items():
        keys = {s.tobytes() for s in seqs}
        if isinstance(result, np.ndarray):
            kinds["ok"] += 1
            assert result.tolist() == [[s[1], len(s), 0, 0] for s in seqs]  # input order, exactly
        elif isinstance(result, asyncio.CancelledError):
            kinds["cancelled"] += 1
            assert keys & set(fake.computed) <= allowed[i]  # nothing of it launched after the cancel
        else:
            kinds[type(result).__name__] = kinds.get(type(result).__name__, 0) + 1
    assert kinds["ok"] >= 25 and kinds["cancelled"] > 0, kinds  # (the rest: Overloaded, DeadlineExceeded)
    assert snapshot["unfinished_tokens"] == 0 and sum(snapshot["queued_sequences"].values()) == 0
    assert snapshot["peak_unfinished_tokens"] <= 4000


def test_stale_entries_do_not_pile_up_under_take_backs():
    """Every take-back re-enters its requests (the old entries go stale and leave lazily): the
    heaps stay proportional to the live requests, not to the history."""
    q = TierQueues(max_batch_tokens=50, chunk_tokens=5)
    for _ in range(4):
        q.add(_req([5] * 2000))
    for k in range(2000):
        batch, _ = q.form(0.0)
        if k % 3:
            q.restore(batch)  # taken back, as after a cancellation or an arrival ranked ahead
        else:
            q.launched(batch)
    assert q.has_work()
    assert sum(len(h) for h in q.heaps) + len(q.aging) <= 20 * 4 + 300
