"""The continuous-batching scheduler against the real MiniLM engine and a real event loop.

Timing is asserted in batches, never in seconds: `Probe` wraps the engine, records which
sequences each batch computed, and can hold the compute thread at a batch until the test lets
it go, so "a request arrives while batch k computes" is a fact, not a race.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time

import numpy as np
import pytest

from tinyembed.engine import load_engine
from tinyembed.scheduler.runner import DeadlineExceeded, Overloaded
from tinyembed.scheduler import Scheduler

TEST_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def engine():
    return load_engine("all-MiniLM-L6-v2")


class Probe:
    """The engine as the scheduler sees it, plus a record of every batch and a gate."""

    def __init__(self, engine, allowed: float = math.inf):
        self.engine = engine
        self.info = engine.info
        self.batches: list[list[bytes]] = []  # per batch, each sequence's token bytes
        self.allowed = allowed  # batches allowed to start computing
        self.cond = threading.Condition()
        self.fail_next = False

    def pack(self, sequences):
        return self.engine.pack(sequences)

    def embed(self, batch):
        cu = batch.cu_seqlens
        seqs = [batch.input_ids[cu[i]:cu[i + 1]].tobytes() for i in range(len(cu) - 1)]
        with self.cond:
            self.batches.append(seqs)
            number = len(self.batches)
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: number <= self.allowed, timeout=TEST_TIMEOUT):
                raise TimeoutError("test never released the compute gate")
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected compute failure")
        return self.engine.embed(batch)

    def allow(self, batches: float = math.inf) -> None:
        with self.cond:
            self.allowed = batches
            self.cond.notify_all()

    async def started(self, count: int) -> None:
        """Wait until `count` batches have reached the compute thread."""
        def wait():
            with self.cond:
                if not self.cond.wait_for(lambda: len(self.batches) >= count, timeout=TEST_TIMEOUT):
                    raise TimeoutError(f"only {len(self.batches)} batches started, expected {count}")
        await asyncio.to_thread(wait)

    def batch_of(self, seq: np.ndarray) -> int:
        """1-based number of the batch that computed seq (0: never computed)."""
        key = np.asarray(seq, dtype=np.int32).tobytes()
        found = [i + 1 for i, b in enumerate(self.batches) if key in b]
        assert len(found) <= 1, "a sequence was computed twice"
        return found[0] if found else 0

    def computed(self, seqs) -> int:
        keys = {np.asarray(s, dtype=np.int32).tobytes() for s in seqs}
        return sum(1 for b in self.batches for k in b if k in keys)


_serial = iter(range(1, 10**9))


def seq(length: int = 6) -> np.ndarray:
    """A unique token sequence of `length` >= 3 tokens: [CLS] serial number, filler, [SEP]."""
    n = next(_serial)
    assert n < 28000 and length >= 3
    body = [1000 + n] + [2000 + (n * 31 + j * 7) % 20000 for j in range(length - 3)]
    return np.array([101, *body, 102], dtype=np.int32)


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TEST_TIMEOUT)
    return asyncio.run(bounded())


async def settle():
    """Let every ready callback run (forming, staging) without waiting on any clock."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- correctness ----------------------------------------------------------------------------------
TEXTS = [
    "hello", "The quick brown fox jumps over the lazy dog.", "tinyembed packs batches with no padding",
    "a", "Vector databases store embeddings next to documents.", "short one",
    "Continuous batching turns many small requests into few large batches " * 3,
    "über naïve café", "1234 5678", "What is the capital of France?",
]


def test_vectors_do_not_depend_on_batch_composition(engine):
    texts = [f"{t} #{i}" for i in range(2) for t in TEXTS]  # 20 distinct texts, 5..40 tokens
    reference = np.concatenate([engine.embed_texts([t]) for t in texts])  # each text alone
    seqs = engine.tokenizer.encode(texts)

    async def main():
        scheduler = Scheduler(max_batch_tokens=192, max_batch_sequences=24)
        scheduler.start()
        tiers = ["default", "priority", "flex", "auto"]
        singles = [scheduler.embed(engine, [s], tier=tiers[i % 4], key=f"k{i % 3}") for i, s in enumerate(seqs)]
        groups = [scheduler.embed(engine, seqs[i:i + 7], tier=tiers[i % 4]) for i in range(0, 20, 7)]
        everything = scheduler.embed(engine, seqs, tier="flex")
        results = await asyncio.gather(*singles, *groups, everything)
        await scheduler.stop()
        return results, scheduler.metrics()

    results, metrics = run(main())
    single = np.concatenate(results[:20])
    grouped = np.concatenate(results[20:-1])
    assert single.shape == (20, 384) and single.dtype == np.float32
    assert np.abs(single - reference).max() <= 1e-5
    assert np.abs(grouped - reference).max() <= 1e-5
    assert np.abs(results[-1] - reference).max() <= 1e-5
    # usage per key: requests and tokens of the completed requests, by the opaque label
    for k in range(3):
        mine = [i for i in range(20) if i % 3 == k]
        assert f'tinyembed_usage_requests_total{{key="k{k}",model="all-MiniLM-L6-v2"}} {len(mine)}' in metrics
        tokens = sum(len(seqs[i]) for i in mine)
        assert f'tinyembed_usage_tokens_total{{key="k{k}",model="all-MiniLM-L6-v2"}} {tokens}' in metrics


def test_input_order_kept_when_lengths_are_reordered(engine):
    texts = ["a much longer text than the others, with many more tokens in it", "b", "medium length text"]
    seqs = engine.tokenizer.encode(texts)

    async def main():
        scheduler = Scheduler(max_batch_tokens=16)  # one or two sequences per batch
        out = await scheduler.embed(engine, seqs)
        await scheduler.stop()
        return out

    out = run(main())
    assert np.abs(out - engine.embed_texts(texts)).max() <= 1e-5


def test_empty_input_and_bad_tier(engine):
    async def main():
        scheduler = Scheduler()
        assert (await scheduler.embed(engine, [])).shape == (0, 384)
        with pytest.raises(ValueError):
            await scheduler.embed(engine, [seq()], tier="gold")
        with pytest.raises(ValueError):
            await scheduler.embed(engine, [np.zeros(0, np.int32)])
        await scheduler.stop()

    run(main())


# -- tiers ----------------------------------------------------------------------------------------
def test_priority_goes_into_the_next_batch_under_flex_saturation(engine):
    probe = Probe(engine, allowed=0)
    urgent = seq(8)

    async def main():
        scheduler = Scheduler(max_batch_tokens=128)
        flex = [asyncio.create_task(scheduler.embed(probe, [seq(8) for _ in range(4)], tier="flex"))
                for _ in range(20)]  # 640 tokens: 5+ full batches
        await probe.started(1)  # batch 1 computes (held); batch 2 is staged behind it
        await settle()
        task = asyncio.create_task(scheduler.embed(probe, [urgent], tier="priority"))
        await settle()
        probe.allow()
        vector = await task
        done_flex = sum(t.done() for t in flex)
        await asyncio.gather(*flex)
        await scheduler.stop()
        return vector, done_flex

    try:
        vector, done_flex = run(main())
    finally:
        probe.allow()
    # The staged flex batch was taken back: the priority text ran in the very next batch.
    # That batch, and those of the next priority_hold_batches (8) launches, took flex work only
    # up to priority_batch_tokens (128 // 4); after that, batches fill to 128 again.
    assert probe.batch_of(urgent) == 2
    sizes = [sum(len(s) // 4 for s in b) for b in probe.batches]  # 4 bytes a token
    assert sizes[0] == 128 and max(sizes[1:10]) <= 32 and max(sizes[10:]) == 128, sizes
    assert done_flex < 20  # it did not wait for the flex backlog
    assert np.abs(vector - engine.embed(engine.pack([urgent]))).max() <= 1e-5
    assert len(probe.batches) >= 6  # and all flex work completed


def test_priority_stream_stays_within_two_batches_while_flex_saturates(engine):
    """Priority requests arriving one after another during a flex flood each complete in the
    batch after the one computing when they arrived; flex completes too."""
    probe = Probe(engine)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        flex = [asyncio.create_task(scheduler.embed(probe, [seq(4) for _ in range(3)], tier="flex"))
                for _ in range(30)]  # 360 tokens: 6 batches
        lags = []
        for _ in range(4):
            await settle()
            before = len(probe.batches)  # batches started so far; the last one may be computing
            urgent = seq(4)
            await scheduler.embed(probe, [urgent], tier="priority")
            lags.append(probe.batch_of(urgent) - before)
        remaining = sum(not t.done() for t in flex)
        await asyncio.gather(*flex)
        await scheduler.stop()
        return lags, remaining

    lags, remaining = run(main())
    assert max(lags) <= 2, lags
    assert remaining > 0  # the priority requests really competed with a flex backlog


def test_flex_progresses_under_priority_saturation(engine):
    probe = Probe(engine, allowed=0)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64, aging_batches=2)
        hog = [asyncio.create_task(scheduler.embed(probe, [seq(4) for _ in range(8)], tier="priority"))
               for _ in range(12)]  # 384 priority tokens: 6 batches
        await probe.started(1)
        flex_seqs = [seq(4)]
        flex = asyncio.create_task(scheduler.embed(probe, flex_seqs, tier="flex"))
        await settle()
        probe.allow()
        await flex
        waiting_priority = sum(not t.done() for t in hog)
        await asyncio.gather(*hog)
        await scheduler.stop()
        return flex_seqs, waiting_priority

    try:
        flex_seqs, waiting_priority = run(main())
    finally:
        probe.allow()
    first = min(probe.batch_of(s) for s in flex_seqs)
    assert 0 < first <= 1 + 2 + 2  # aged after 2 batches, then served (staged batch aside)
    assert waiting_priority > 0  # flex finished while priority work was still queued
    # and aged flex never took more than aged_share (+ one sequence) of a batch
    keys = {s.tobytes() for s in flex_seqs}
    for b in probe.batches:
        assert sum(len(k) // 4 for k in b if k in keys) <= 64 // 4


# -- fairness -------------------------------------------------------------------------------------
def test_big_request_does_not_hold_a_single_text_behind_it(engine):
    probe = Probe(engine, allowed=0)
    big = [seq(3) for _ in range(2048)]  # 6144 tokens: 6+ batches of 1024

    async def main():
        scheduler = Scheduler(max_batch_tokens=1024, max_queue_tokens=10_000)
        big_task = asyncio.create_task(scheduler.embed(probe, big))
        await probe.started(1)
        await settle()
        single = seq(6)
        single_task = asyncio.create_task(scheduler.embed(probe, [single]))
        await settle()
        probe.allow()
        vector = await single_task
        big_done = big_task.done()
        big_vectors = await big_task
        await scheduler.stop()
        return single, vector, big_done, big_vectors

    try:
        single, vector, big_done, big_vectors = run(main())
    finally:
        probe.allow()
    # computing when it arrived (1), the full staged batch (2), then its own at the latest
    assert probe.batch_of(single) <= 3
    assert not big_done and len(probe.batches) >= 6
    assert np.abs(vector - engine.embed(engine.pack([single]))).max() <= 1e-5
    # the big request's vectors are in input order though computed shortest-first in chunks
    sample = [0, 1, 777, 2047]
    assert np.abs(big_vectors[sample] - engine.embed(engine.pack([big[i] for i in sample]))).max() <= 1e-5


# -- backpressure ---------------------------------------------------------------------------------
def test_overload_rejects_the_excess_and_keeps_the_bound(engine):
    probe = Probe(engine)
    bound = 400

    async def main():
        scheduler = Scheduler(max_batch_tokens=256, max_queue_tokens=bound)
        requests = [[seq(10) for _ in range(2)] for _ in range(200)]  # 4000 tokens: 10x the bound
        results = await asyncio.gather(*(scheduler.embed(probe, r) for r in requests), return_exceptions=True)
        snapshot = scheduler.snapshot(probe)["all-MiniLM-L6-v2"]
        probe.allow(len(probe.batches))  # hold the next batch: nothing drains meanwhile
        filler = [asyncio.create_task(scheduler.embed(probe, [seq(10) for _ in range(2)])) for _ in range(20)]
        await settle()
        with pytest.raises(Overloaded) as late:
            await scheduler.embed(probe, [seq(10) for _ in range(10)])
        probe.allow()
        await asyncio.gather(*filler)
        after = await scheduler.embed(probe, [seq(10)])  # drained: admitted again
        await scheduler.stop()
        return requests, results, snapshot, late.value, after, scheduler.metrics()

    try:
        requests, results, snapshot, late, after, metrics = run(main())
    finally:
        probe.allow()
    admitted = [(r, v) for r, v in zip(requests, results) if not isinstance(v, BaseException)]
    rejected = [v for v in results if isinstance(v, BaseException)]
    assert all(isinstance(v, Overloaded) for v in rejected)  # nothing else went wrong
    assert len(admitted) >= bound // 20 and len(rejected) >= 100
    assert all(v.retry_after > 0 for v in rejected)
    assert snapshot["peak_unfinished_tokens"] <= bound
    assert snapshot["unfinished_tokens"] == 0
    reference = engine.embed(engine.pack([s for r, _ in admitted for s in r]))
    assert np.abs(np.concatenate([v for _, v in admitted]) - reference).max() <= 1e-5
    assert 0 < late.retry_after <= 60 and after.shape == (1, 384)
    full = 'tinyembed_scheduler_rejected_total{model="all-MiniLM-L6-v2",reason="queue_full"}'
    assert f"{full} {len(rejected) + 1}" in metrics


def test_request_larger_than_the_bound_runs_when_the_queue_is_empty(engine):
    async def main():
        scheduler = Scheduler(max_batch_tokens=64, max_queue_tokens=32)
        out = await scheduler.embed(engine, [seq(10) for _ in range(6)])
        await scheduler.stop()
        return out

    assert run(main()).shape == (6, 384)


def test_retry_after_follows_the_drain_rate(engine):
    probe = Probe(engine)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64, max_queue_tokens=100)
        await scheduler.embed(probe, [seq(16) for _ in range(8)])  # measure the drain rate
        rate = scheduler.snapshot()["all-MiniLM-L6-v2"]["drain_tokens_per_second"]
        probe.allow(len(probe.batches))  # nothing drains until the test has looked
        held = asyncio.create_task(scheduler.embed(probe, [seq(10) for _ in range(9)]))  # 90 tokens
        await settle()
        with pytest.raises(Overloaded) as exc:
            await scheduler.embed(probe, [seq(10) for _ in range(5)])  # 50: 40 over the bound
        probe.allow()
        await held
        await scheduler.stop()
        return rate, exc.value.retry_after

    try:
        rate, retry_after = run(main())
    finally:
        probe.allow()
    assert rate > 0
    assert retry_after == pytest.approx(40 / rate, rel=1e-6)


# -- cancellation and deadlines -------------------------------------------------------------------
def test_cancelled_request_costs_no_compute_after_it_is_noticed(engine):
    probe = Probe(engine, allowed=0)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        first = [seq(8) for _ in range(8)]
        gone = [seq(8) for _ in range(40)]  # 5 batches' worth
        later = [seq(8) for _ in range(3)]
        t1 = asyncio.create_task(scheduler.embed(probe, first))
        await probe.started(1)  # `first` computes, held
        t2 = asyncio.create_task(scheduler.embed(probe, gone))
        await settle()  # `gone` is staged behind it
        assert scheduler.snapshot()["all-MiniLM-L6-v2"]["queued_sequences"]["default"] == 40
        t2.cancel()
        t3 = asyncio.create_task(scheduler.embed(probe, later))
        await settle()
        probe.allow()
        await t1
        vectors = await t3
        with pytest.raises(asyncio.CancelledError):
            await t2
        snapshot = scheduler.snapshot()["all-MiniLM-L6-v2"]
        await scheduler.stop()
        return gone, later, vectors, snapshot, scheduler.metrics()

    try:
        gone, later, vectors, snapshot, metrics = run(main())
    finally:
        probe.allow()
    assert probe.computed(gone) == 0
    assert probe.batch_of(later[0]) == 2
    assert len(probe.batches) == 2
    assert snapshot["unfinished_tokens"] == 0 and sum(snapshot["queued_tokens"].values()) == 0
    assert np.abs(vectors - engine.embed(engine.pack(later))).max() <= 1e-5
    assert 'reason="cancelled"} 1' in metrics


def test_cancel_midway_drops_the_rest(engine):
    probe = Probe(engine, allowed=0)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        many = [seq(8) for _ in range(48)]
        task = asyncio.create_task(scheduler.embed(probe, many))
        await probe.started(1)  # its first chunk computes, held; the second is staged
        await settle()
        task.cancel()
        await settle()
        probe.allow()
        after = await scheduler.embed(probe, [seq(8)])
        await scheduler.stop()
        return many, after

    try:
        many, after = run(main())
    finally:
        probe.allow()
    assert probe.computed(many) == 8  # only the batch that was already computing
    assert after.shape == (1, 384)


def test_deadline_passing_while_queued_gives_deadline_exceeded(engine):
    probe = Probe(engine, allowed=0)

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        blocker = asyncio.create_task(scheduler.embed(probe, [seq(8) for _ in range(8)]))
        await probe.started(1)  # the compute thread is busy until the test says so
        late = [seq(8) for _ in range(3)]
        with pytest.raises(DeadlineExceeded):
            await scheduler.embed(probe, late, deadline=time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded):
            await scheduler.embed(probe, [seq(8)], deadline=time.monotonic() - 1)  # already passed
        probe.allow()
        await blocker
        ok = await scheduler.embed(probe, [seq(8)], deadline=time.monotonic() + 30)
        snapshot = scheduler.snapshot()["all-MiniLM-L6-v2"]
        await scheduler.stop()
        return late, ok, snapshot, scheduler.metrics()

    try:
        late, ok, snapshot, metrics = run(main())
    finally:
        probe.allow()
    assert probe.computed(late) == 0
    assert ok.shape == (1, 384)
    assert snapshot["unfinished_tokens"] == 0
    assert 'reason="deadline"} 2' in metrics


# -- lifecycle and failures -----------------------------------------------------------------------
def test_stop_finishes_admitted_work_then_refuses(engine):
    probe = Probe(engine)

    async def main():
        scheduler = Scheduler(max_batch_tokens=128)
        requests = [[seq(4) for _ in range(3)] for _ in range(30)]  # 360 tokens
        tasks = [asyncio.create_task(scheduler.embed(probe, r, tier=("flex", "default", "priority")[i % 3]))
                 for i, r in enumerate(requests)]
        await settle()
        await scheduler.stop()
        assert all(t.done() for t in tasks)
        with pytest.raises(Overloaded):
            await scheduler.embed(probe, [seq(8)])
        return requests, [t.result() for t in tasks]

    requests, results = run(main())
    reference = engine.embed(engine.pack([s for r in requests for s in r]))
    assert np.abs(np.concatenate(results) - reference).max() <= 1e-5


def test_compute_failure_fails_its_requests_and_the_scheduler_goes_on(engine):
    probe = Probe(engine)
    probe.fail_next = True

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        with pytest.raises(RuntimeError, match="injected"):
            await scheduler.embed(probe, [seq(8) for _ in range(20)])  # fails in its first batch
        out = await scheduler.embed(probe, [seq(8) for _ in range(20)])
        snapshot = scheduler.snapshot()["all-MiniLM-L6-v2"]
        await scheduler.stop()
        return out, snapshot

    out, snapshot = run(main())
    assert out.shape == (20, 384)
    assert snapshot["unfinished_tokens"] == 0
    assert len(probe.batches) == 1 + 3  # the failed request's other chunks never ran


def test_two_models_get_their_own_queues(engine):
    other = load_engine("all-MiniLM-L6-v2", name="second")

    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        a, b = await asyncio.gather(scheduler.embed(engine, [seq(8)]), scheduler.embed(other, [seq(8)]))
        metrics = scheduler.metrics()
        await scheduler.stop()
        return metrics

    metrics = run(main())
    assert 'tinyembed_scheduler_batch_tokens_count{model="all-MiniLM-L6-v2"} 1' in metrics
    assert 'tinyembed_scheduler_batch_tokens_count{model="second"} 1' in metrics


def test_metrics_text_is_valid_exposition(engine):
    async def main():
        scheduler = Scheduler(max_batch_tokens=64)
        await asyncio.gather(*(scheduler.embed(engine, [seq(8)], tier=t, key='odd "label"\\')
                               for t in ("priority", "default", "flex")))
        text = scheduler.metrics()
        await scheduler.stop()
        return text

    text = run(main())
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="([^"\\]|\\.)*",?)*\})? [-+0-9.eInf]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    for tier in ("priority", "default", "flex"):
        assert f'tinyembed_scheduler_queue_sequences{{model="all-MiniLM-L6-v2",tier="{tier}"}} 0' in text
        assert f'tinyembed_scheduler_queue_tokens{{model="all-MiniLM-L6-v2",tier="{tier}"}} 0' in text
        assert f'tinyembed_scheduler_request_queue_seconds_count{{model="all-MiniLM-L6-v2",tier="{tier}"}} 1' in text
        assert f'tinyembed_scheduler_request_compute_seconds_count{{model="all-MiniLM-L6-v2",tier="{tier}"}} 1' in text
    assert 'tinyembed_scheduler_batch_sequences_count{model="all-MiniLM-L6-v2"}' in text
    assert 'tinyembed_usage_requests_total{key="odd \\"label\\"\\\\",model="all-MiniLM-L6-v2"} 3' in text
