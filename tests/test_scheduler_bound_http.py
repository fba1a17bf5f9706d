"""End to end: the scheduling invariant holds on the real server under bulk + single-text load.

A bounded load on 127.0.0.1 (2 bulk clients x 3 requests of 48 texts, 8 single-text clients x
25 requests, all default tier; single texts of 1 to 30 words, so some are long: a long single
text was the one pushed out of the staged batch again and again before the fix). Then the
server's own metrics, in batches, never seconds:
- tinyembed_scheduler_bound_violations_total is 0 (the check runs at every launch);
- no single text waited more than MAX_SINGLE batches. Why 4: with a 96-token batch and nothing
  ranked ahead of a single text but the first chunks admitted before it (at most 7 other single
  texts of <= 32 tokens and 2 bulk first chunks of 12 tokens: 248 tokens), each batch closed to
  it holds > 96 - 32 = 64 of those tokens, so at most 3 are closed to it; plus the one computing.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from conftest import start_server
from test_scheduler_fairness import histogram

MAX_SINGLE = 4
BULK_CLIENTS, BULK_REQUESTS, BULK_TEXTS = 2, 3, 48
SINGLE_CLIENTS, SINGLE_REQUESTS = 8, 25
BOUND_SECONDS = 120.0  # every client stops by then, finished or not (a crowded machine)
MODEL = "all-MiniLM-L6-v2"
WORDS = ["alpha", "river", "stone", "query", "vector", "index", "north", "light"]  # n words: n + 2 tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # 96-token cap, fixed budget (no latency target): what is asserted is counted in batches
    # MiniLM, not the tiny model: its batches take long enough for single texts to arrive
    # during each one, the interleaving that used to starve a long single text
    proc = start_server(tmp_path_factory, "bound", ["--model", f"tiny={MODEL}", "--max-batch-tokens", "96",
                                                   "--max-batch-latency", "0", "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS)
                    for _ in range(n))


def test_no_request_breaks_the_bound_under_bulk_and_single_texts(server):
    statuses: list[int] = []
    deadline = time.monotonic() + BOUND_SECONDS
    singles = [0]

    def bulk(c: int) -> None:
        rng = random.Random(c)
        for _ in range(BULK_REQUESTS):
            if time.monotonic() > deadline:
                return
            inputs = [words(rng, rng.randint(1, 40)) for _ in range(BULK_TEXTS)]
            statuses.append(server.request("POST", "/v1/embeddings", {"model": "tiny", "input": inputs}).status)

    def single(c: int) -> None:
        rng = random.Random(100 + c)
        for _ in range(SINGLE_REQUESTS):
            if time.monotonic() > deadline:
                return
            reply = server.request("POST", "/v1/embeddings", {"model": "tiny", "input": words(rng, rng.randint(1, 30))})
            statuses.append(reply.status)
            singles[0] += 1

    threads = [threading.Thread(target=bulk, args=(c,)) for c in range(BULK_CLIENTS)]
    threads += [threading.Thread(target=single, args=(c,)) for c in range(SINGLE_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_SECONDS + 30)
    assert not any(t.is_alive() for t in threads)
    assert set(statuses) == {200}
    assert singles[0] >= 0.8 * SINGLE_CLIENTS * SINGLE_REQUESTS  # (only a crowded machine cuts it short)

    text = server.request("GET", "/metrics").body.decode()
    assert 'tinyembed_scheduler_bound_violations_total{model="tiny",tier="default"} 0' in text
    assert server.metric("tinyembed_scheduler_longest_wait_batches", model="tiny") == 0  # nothing left waiting
    single = histogram(server, "tinyembed_scheduler_request_batches_waited", model="tiny", tier="default", size="1")
    assert single["+Inf"] == singles[0]
    assert single[str(MAX_SINGLE)] == single["+Inf"], single
    assert single["0"] < single["+Inf"], "the single texts never met a busy server: the test tested nothing"
    bulk_waited = histogram(server, "tinyembed_scheduler_request_batches_waited", model="tiny", tier="default",
                            size="33-256")
    assert bulk_waited["+Inf"] == len(statuses) - singles[0] > 0
