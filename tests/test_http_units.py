"""The server's building blocks on their own: token buckets, key checks, the Prometheus text,
`input` classification, response encoding, and the DirectRunner's deadline and queue bound."""

from __future__ import annotations

import asyncio
import base64
import math
import time

import msgspec
import numpy as np
import pytest

from tinyembed.server.auth import ApiKeys, fingerprint
from tinyembed.server.config import RateLimits
from tinyembed.common.metrics import Registry
from tinyembed.server.protocol import ApiError, EmbeddingRequest, decode_request, encode_embeddings, parse_input
from tinyembed.server.ratelimit import RateLimited, RateLimiter, TokenBucket
from tinyembed.scheduler.runner import DeadlineExceeded, DirectRunner, Overloaded, split_by_tokens


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- rate limits ------------------------------------------------------------------------------------

def test_token_bucket_bursts_then_refills_at_the_per_minute_rate():
    bucket = TokenBucket(60, now=0.0)  # 1 per second, burst 60
    assert all(bucket.take(1, 0.0) == 0 for _ in range(60))
    assert bucket.take(1, 0.0) == pytest.approx(1.0)
    assert bucket.take(1, 0.5) == pytest.approx(0.5)  # a refused take leaves the level alone
    assert bucket.take(1, 1.0) == 0
    assert bucket.take(61, 1000.0) == math.inf  # never fits


def test_rate_limiter_is_per_key_and_says_how_long_to_wait():
    clock = Clock()
    limiter = RateLimiter(RateLimits(requests_per_minute=2, tokens_per_minute=120), clock=clock)
    limiter.check_request("a")
    limiter.check_request("a")
    with pytest.raises(RateLimited) as info:
        limiter.check_request("a")
    assert info.value.retry_after == pytest.approx(30.0) and info.value.kind == "requests"
    limiter.check_request("b")  # another key has its own budget
    limiter.check_tokens("a", 100)
    with pytest.raises(RateLimited) as info:
        limiter.check_tokens("a", 30)
    assert info.value.retry_after == pytest.approx(5.0)  # 10 more tokens at 2/s
    clock.now += 5.0
    limiter.check_tokens("a", 30)
    with pytest.raises(RateLimited) as info:
        limiter.check_tokens("b", 121)
    assert math.isinf(info.value.retry_after) and "too large" in info.value.message


def test_rate_limiter_memory_is_bounded():
    clock = Clock()
    limiter = RateLimiter(RateLimits(requests_per_minute=10), clock=clock)
    limiter.MAX_KEYS = 50
    for i in range(500):
        limiter.check_request(f"client-{i}")
    assert len(limiter._buckets) <= 50


# -- auth ---------------------------------------------------------------------------------------------

def test_api_keys_check_bearer_tokens():
    keys = ApiKeys(["alpha", "beta"])
    assert keys.enabled and not ApiKeys([]).enabled
    assert keys.check("Bearer alpha") == fingerprint("alpha")
    assert keys.check("bearer   beta ") == fingerprint("beta")
    for header in (None, "", "alpha", "Basic alpha", "Bearer ", "Bearer alph", "Bearer alphaa", "Bearer ALPHA"):
        assert keys.check(header) is None, header
    assert "alpha" not in fingerprint("alpha")


# -- metrics --------------------------------------------------------------------------------------------

def test_prometheus_text():
    registry = Registry()
    counter = registry.counter("x_total", "things", ("route",))
    histogram = registry.histogram("x_seconds", "time", buckets=(0.1, 1.0))
    counter.inc('a"b')
    counter.inc('a"b', by=2)
    for value in (0.05, 0.1, 0.5, 5.0):
        histogram.observe(value)
    text = registry.render()
    assert 'x_total{route="a\\"b"} 3' in text
    assert 'x_seconds_bucket{le="0.1"} 2' in text
    assert 'x_seconds_bucket{le="1.0"} 3' in text
    assert 'x_seconds_bucket{le="+Inf"} 4' in text
    assert "x_seconds_count 4" in text and "x_seconds_sum 5.65" in text
    assert "# TYPE x_seconds histogram" in text


# -- protocol -------------------------------------------------------------------------------------------

def _input(json_value: str):
    return decode_request(b'{"model": "m", "input": ' + json_value.encode() + b"}", EmbeddingRequest).input


@pytest.mark.parametrize("value,texts,ids", [
    ('"hi"', ["hi"], None),
    ('["a", "b"]', ["a", "b"], None),
    ("[1, 2, 3]", None, [[1, 2, 3]]),
    ("[[1], [2, 3]]", None, [[1], [2, 3]]),
    (' [ "spaced" ] ', ["spaced"], None),
])
def test_input_shapes(value, texts, ids):
    got_texts, got_ids = parse_input(_input(value))
    assert got_texts == texts
    assert (got_ids is None) == (ids is None)
    if ids is not None:
        assert [a.tolist() for a in got_ids] == ids and all(a.dtype == np.int64 for a in got_ids)


def test_validation_errors_name_the_parameter():
    with pytest.raises(ApiError) as info:
        decode_request(b'{"model": "m", "input": "x", "Model": "m"}', EmbeddingRequest)
    assert (info.value.status, info.value.code, info.value.param) == (400, "unknown_parameter", "Model")
    with pytest.raises(ApiError) as info:
        decode_request(b'{"model": "m", "input": "x", "dimensions": -3}', EmbeddingRequest)
    assert (info.value.code, info.value.param) == ("invalid_request", "dimensions")


def test_base64_is_little_endian_float32_of_the_vector():
    vectors = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    body = msgspec.json.decode(encode_embeddings(vectors, True, "m", 9, "flex"))
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_array_equal(decoded, vectors)
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9} and body["service_tier"] == "flex"
    floats = msgspec.json.decode(encode_embeddings(vectors, False, "m", 9, "default"))
    np.testing.assert_array_equal(np.array([d["embedding"] for d in floats["data"]], np.float32), vectors)


# -- DirectRunner ------------------------------------------------------------------------------------------

def test_split_by_tokens():
    seqs = [np.zeros(n, np.int32) for n in (5, 5, 5, 20, 1)]
    assert [[len(s) for s in chunk] for chunk in split_by_tokens(seqs, 10)] == [[5, 5], [5], [20], [1]]


def test_direct_runner_matches_engine_in_chunks_and_enforces_deadline_and_bound(tiny):
    sequences = tiny.tokenizer.encode([f"text {i} " * (i % 7 + 1) for i in range(40)])

    async def scenario():
        runner = DirectRunner(max_batch_tokens=64, max_queue_tokens=10)
        runner.start()
        vectors = await runner.embed(tiny, sequences)  # many chunks of <= 64 tokens
        with pytest.raises(DeadlineExceeded):
            await runner.embed(tiny, sequences[:1], deadline=time.monotonic() - 1)
        first = asyncio.ensure_future(runner.embed(tiny, sequences))  # admitted: the queue was empty
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await runner.embed(tiny, sequences[:1])
        assert info.value.retry_after >= 1
        await first
        await runner.stop()
        return vectors, runner.metrics()

    vectors, metrics = asyncio.run(scenario())
    np.testing.assert_allclose(vectors, tiny.embed_sequences(sequences), atol=1e-6)
    assert "tinyembed_compute_seconds_count" in metrics and "tinyembed_queue_tokens 0" in metrics
