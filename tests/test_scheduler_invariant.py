"""The scheduling invariant (scheduler/continuous.py's docstring), property-tested over random
interleavings of arrivals (sizes, tiers, deadlines), cancellations, time passing and batches
finishing, which take the staged batch back and re-form it. No threads and no clock: the real
lane runs on a fake loop (scheduler_sim.py), so every interleaving is replayable.

For every launched batch B and every request r still waiting when B launched but left out of
it, B must be closed to r: the work in B ranked ahead of r, plus r's next sequence, does not fit
B's limit for r's tier (or B holds max_batch_sequences). Ranked ahead of r's first chunk:
better tiers, first chunks of its tier admitted before it, and aged work (at most aged_share of
a batch, or a single sequence over that share at its head). Ahead of a later chunk: also the other requests' work of its tier.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyembed.scheduler.queues import PRIORITY

from scheduler_sim import Sim

CONFIG = st.fixed_dictionaries({
    "max_batch_tokens": st.integers(8, 120),
    "chunk_tokens": st.one_of(st.none(), st.integers(1, 60)),
    "max_batch_sequences": st.one_of(st.none(), st.integers(1, 12)),
    "aging_batches": st.integers(1, 8),
    "aged_share": st.sampled_from([0.0, 0.25]),
    "priority_hold_batches": st.integers(0, 4),
    "max_queue_tokens": st.sampled_from([60, 400, 100000]),
})
ARRIVE = st.tuples(st.just("arrive"),
                   st.one_of(st.lists(st.integers(2, 40), min_size=1, max_size=3),
                             st.lists(st.integers(2, 40), min_size=4, max_size=30)),
                   st.integers(0, 3), st.one_of(st.none(), st.floats(0.5, 5.0)))
OPS = st.lists(st.one_of(ARRIVE, ARRIVE, st.tuples(st.just("cancel"), st.integers(0, 10**6)),
                         st.just(("finish",)), st.just(("finish",)), st.tuples(st.just("tick"), st.floats(0.1, 2.0))),
               max_size=80)


def violations(sim: Sim, aged_share: float, max_seqs: int | None) -> list[tuple[int, int]]:
    """(launch number, request) for every request a launched batch left out while open to it."""
    found = []
    for number, launch in enumerate(sim.launches, start=1):
        for k, next_len, first in launch["waiting"]:
            tier = sim.requests[k].tier
            limit = launch["limit"] if tier == PRIORITY else launch["lower_limit"]
            aged_cap = int(launch["lower_limit"] * aged_share)
            ahead_tokens = ahead_seqs = aged = 0
            for n, (j, indices) in enumerate(launch["picks"]):
                other = sim.requests[j]
                tokens = sum(other.lengths[i] for i in indices)
                if other.tier < tier or (other.tier == tier and (
                        (j < k and j in launch["first"]) if first else j != k)):
                    ahead_tokens, ahead_seqs = ahead_tokens + tokens, ahead_seqs + len(indices)
                elif aged + tokens <= aged_cap or (n == 0 and len(indices) == 1 and aged_cap):
                    # may be aged work: it comes first, within its share (or one sequence that
                    # alone is over the share: it runs at the head of an otherwise empty batch)
                    aged += tokens
                    ahead_tokens, ahead_seqs = ahead_tokens + tokens, ahead_seqs + len(indices)
            closed = (max_seqs is not None and ahead_seqs >= max_seqs) or (
                ahead_tokens > 0 and ahead_tokens + next_len > limit)
            if not closed:
                found.append((number, k))
    return found


def counted(sim: Sim) -> float:
    """The server's own count of the same violations (tinyembed_scheduler_bound_violations_total)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in sim.scheduler.metrics().splitlines()
               if line.startswith("tinyembed_scheduler_bound_violations_total{"))


def play(monkeypatch, config: dict, ops: list, workers: int) -> Sim:
    sim = Sim(monkeypatch, workers=workers, **config)
    try:
        for op in ops:
            if op[0] == "arrive":
                sim.arrive(op[1], op[2], op[3])
            elif op[0] == "cancel" and sim.requests:
                sim.cancel(op[1])
            elif op[0] == "finish":
                sim.finish()
            elif op[0] == "tick":
                sim.loop.advance(op[1])
        sim.drain()
    finally:
        sim.close()
    return sim


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=CONFIG, ops=OPS, workers=st.sampled_from([1, 1, 2]))
def test_no_batch_leaves_out_a_request_it_had_room_for(monkeypatch, config, ops, workers):
    sim = play(monkeypatch, config, ops, workers)
    found = violations(sim, config["aged_share"], config["max_batch_sequences"])
    assert found == [], f"left out (batch, request): {found}; config {config}, ops {ops}; batches {sim.launches}"
    assert counted(sim) == 0
    # the bound, per request, in the terms of the batches-waited histogram: the batches computing
    # when it arrived + its own batches before its last + the batches closed to it, nothing more
    left_out, carried = [0] * len(sim.requests), [0] * len(sim.requests)
    for launch in sim.launches:
        for k, _, _ in launch["waiting"]:
            left_out[k] += 1
        for k in {k for k, _ in launch["picks"]}:
            carried[k] += 1
    for k, req in enumerate(sim.requests):
        if req.future is not None and req.future._state == "ok":
            assert req.batches_waited <= sim.computing_at_admission[k] + carried[k] - 1 + left_out[k], k
    for k, req in enumerate(sim.requests):  # liveness: with no more arrivals, everything ends
        if req.future is not None:
            assert req.future.done(), f"request {k} never finished"
            if req.future._state == "ok":
                assert req.future.result()[:, 1].tolist() == list(range(len(req.sequences)))


def test_the_checker_catches_a_batch_that_skips_a_request(monkeypatch):
    """The check itself can fail: a former that launches one request per batch leaves room."""
    config = dict(max_batch_tokens=100, max_queue_tokens=100000)
    sim = Sim(monkeypatch, **config)
    real_form = sim.lane.queues.form

    def one_request_only(now):
        batch, expired = real_form(now)
        if batch is not None and len(batch.picks) > 1:
            sim.lane.queues.restore(batch)  # put everything back, keep the first pick only
            batch, expired = real_form(now)
            keep = batch.picks[:1]
            sim.lane.queues.restore(batch)
            batch.picks = keep
        return batch, expired
    try:
        sim.arrive([5], 1, None)  # computing alone
        sim.arrive([5], 1, None)
        sim.arrive([5], 1, None)
        sim.lane.queues.form = one_request_only  # the staged batch is formed again below
        sim.lane.unstage()
        sim.lane.step()
        sim.finish()
    finally:
        sim.close()
    assert violations(sim, 0.0, None) != []
    assert counted(sim) > 0  # and the scheduler's own check counts it


@pytest.mark.parametrize("workers", [1, 2])
def test_a_single_text_is_never_pushed_out_by_later_arrivals(monkeypatch, workers):
    """The starvation seen in the sidecar bench: a long single text in the staged batch, short
    ones arriving while every batch computes. It must be in the next batch launched."""
    sim = Sim(monkeypatch, workers=workers, max_batch_tokens=40, max_queue_tokens=100000)
    try:
        for _ in range(workers):
            sim.arrive([20], 1, None)  # computing
        sim.arrive([30], 1, None)  # the long one: staged
        for _ in range(6):
            sim.arrive([12], 1, None)
            sim.arrive([12], 1, None)
            sim.finish()
        sim.drain()
    finally:
        sim.close()
    long_one = workers
    assert sim.first_batch[long_one] == workers + 1, sim.first_batch
    assert violations(sim, 0.0, None) == []


def test_longest_current_wait_is_exported(monkeypatch):
    """The gauges an alert reads: the longest-waiting request's seconds and batches since admission."""
    sim = Sim(monkeypatch, max_batch_tokens=10, max_queue_tokens=100000)

    def gauge(name: str) -> float:
        line = next(line for line in sim.scheduler.metrics().splitlines() if line.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])
    try:
        sim.arrive([8], 1, None)  # computing
        sim.arrive([8, 8, 8], 1, None)  # waits: one batch computing, one staged, more behind
        sim.loop.advance(2.5)
        assert gauge("tinyembed_scheduler_longest_wait_seconds") == pytest.approx(2.5)
        assert gauge("tinyembed_scheduler_longest_wait_batches") == 1
        sim.finish()
        sim.loop.advance(1.0)
        assert gauge("tinyembed_scheduler_longest_wait_seconds") == pytest.approx(3.5)
        assert gauge("tinyembed_scheduler_longest_wait_batches") == 2
        sim.drain()
        assert gauge("tinyembed_scheduler_longest_wait_seconds") == 0
    finally:
        sim.close()
