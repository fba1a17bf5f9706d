"""The memory budget's accounting (scheduler/memory_budget.py) as an invariant, over random
interleavings of admit / resize / finish / cancel / timeout / a holder that forgets (issue 27):
reserved bytes are never negative, never above the capacity, equal the sum of what live
requests hold, and back to 0 when nothing is in flight."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from tinyembed.scheduler.memory_budget import MIB, MemoryBudget, TooLarge, request_bytes, reply_bytes, streamed
from tinyembed.scheduler.runner import Overloaded

CAPACITY = 1000

ops = st.lists(st.tuples(st.sampled_from(["admit", "resize", "finish", "cancel", "timeout", "forget", "again"]),
                         st.integers(0, 1300), st.integers(0, 50)), max_size=120)


@settings(max_examples=200, deadline=None)
@given(ops, st.booleans())
def test_reserved_bytes_follow_the_requests_in_flight(steps, rss_over):
    rss = [0]
    budget = MemoryBudget(limit=CAPACITY + 100, baseline=100, slack=0, rss=lambda: rss[0])
    assert budget.capacity == CAPACITY
    live, done = [], []
    for step, (op, cost, pick) in enumerate(steps):
        r = None  # (a name left bound would keep a forgotten reservation alive)
        rss[0] = 10**9 if rss_over and step % 3 == 0 else 0  # now and then the process is over its limit
        if op == "admit":
            others = sum(r.nbytes for r in live)
            try:
                live.append(budget.reserve(cost))
            except TooLarge:
                assert cost > CAPACITY
            except Overloaded as e:
                assert others > 0  # an idle budget admits whatever fits its capacity
                assert others + cost > CAPACITY or rss[0] > budget.limit
                assert e.retry_after > 0
        elif op == "resize" and live:
            r = live[pick % len(live)]
            before = r.nbytes
            try:
                r.resize(cost)
            except (Overloaded, TooLarge):
                assert cost > before and r.nbytes == before  # refused: unchanged
        elif op in ("finish", "cancel", "timeout") and live:
            r = live.pop(pick % len(live))  # the reply written, the client gone, the deadline passed
            r.release()
            done.append(r)
        elif op == "forget" and live:
            live.pop(pick % len(live))  # a holder dropped without release: the finalizer gives it back
        elif op == "again" and done:
            done[pick % len(done)].release()  # a second release (finish after cancel) changes nothing
        budget.check()
        assert budget.reserved == sum(r.nbytes for r in live)
        assert 0 <= budget.reserved <= CAPACITY
        assert budget.live == len(live)
    for r in live:
        r.release()
    budget.check()
    assert budget.reserved == 0 and budget.live == 0


def test_a_reply_that_cannot_fit_is_too_large_and_an_idle_budget_admits_what_fits():
    budget = MemoryBudget(limit=300 * MIB, baseline=150 * MIB, work=60 * MIB, rss=lambda: 0)
    big = request_bytes(body=60_000, inputs=2048, tokens=2048 * 12, native_dims=1024, dims=1024, base64=False,
                        send_buffer=256 * 1024)
    assert big > 8 * MIB  # at least its 2048 x 1024 float32 vectors
    first = budget.reserve(budget.capacity)  # fills it
    try:
        budget.reserve(1)
        raise AssertionError("admitted past the capacity")
    except Overloaded:
        pass
    first.release()
    assert budget.reserved == 0
    try:
        budget.reserve(budget.capacity + 1)
        raise AssertionError("admitted a cost above the capacity")
    except TooLarge as e:
        assert e.capacity == budget.capacity


def test_large_replies_are_streamed_and_cost_a_block_not_the_whole_reply():
    assert reply_bytes(2048, 1024, base64=False) > 40 * MIB  # tens of MB as JSON
    assert streamed(2048, 1024, base64=False) and not streamed(1, 384, base64=False)
    whole = request_bytes(body=1000, inputs=2048, tokens=20_000, native_dims=1024, dims=1024, base64=False,
                          send_buffer=0)
    assert whole < 2048 * 1024 * 4 + 8 * MIB  # the vectors, plus one block and the rest
