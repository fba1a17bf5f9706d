"""The continuous-batching scheduler seen through a real server process: determinism under
concurrent mixed load, service tiers, fairness, overload, disconnects, usage metrics, SIGTERM.

The servers here are plain `tinyembed serve` processes: the Scheduler is its default runner.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import RawClient, ServerProcess, post

MODEL = "all-MiniLM-L6-v2"
KEYS = ("k-sched-alpha", "k-sched-beta")
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


def rss_mib(proc: ServerProcess) -> float:
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def launch(tmp_path_factory, name: str, args: list[str]) -> ServerProcess:
    proc = ServerProcess(args, tmp_path_factory.mktemp(name) / "server.log")
    try:
        return proc.wait_ready()
    except BaseException:
        proc.stop(signal.SIGKILL)
        raise


LABEL_SECRET = "sched-labels"  # so the test can compute a key's usage label (server/auth.py KeyLabels)


@pytest.fixture(scope="module")
def sched(tmp_path_factory):
    """MiniLM behind two API keys, 256-token batches: many batches for little compute."""
    proc = launch(tmp_path_factory, "sched", ["--model", MODEL, "--max-batch-tokens", "256",
                                              "--api-key", KEYS[0], "--api-key", KEYS[1],
                                              "--metrics-label-secret", LABEL_SECRET])
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def embed(proc, inputs, headers=AUTH, **fields):
    body = {"model": MODEL, "input": inputs, "encoding_format": "base64", **fields}
    return proc.request("POST", "/v1/embeddings", body, headers)


def vectors(reply) -> np.ndarray:
    assert reply.status == 200, reply
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in reply.json()["data"]])


def batch_count(proc) -> float:
    return proc.metric("tinyembed_scheduler_batch_tokens_count", model=MODEL)


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- determinism ------------------------------------------------------------------------------------
def test_vectors_under_concurrent_mixed_load_match_the_engine(sched, minilm):
    texts = [f"sentence {i}: " + "tokens " * (i % 9) + "end" for i in range(24)]
    alone = {t: minilm.embed_texts([t])[0] for t in texts}  # each text in a batch of its own
    rng = np.random.default_rng(7)
    jobs = []
    for j in range(40):  # single texts, lists, every tier, both encodings; each text many times
        picked = [texts[i] for i in rng.choice(24, size=int(rng.integers(1, 9)), replace=False)]
        jobs.append((picked[0] if j % 5 == 0 else picked, ["auto", "default", "flex", "priority"][j % 4],
                     "float" if j % 3 == 0 else "base64"))

    def run(job):
        inputs, tier, encoding = job
        reply = sched.request("POST", "/v1/embeddings", {"model": MODEL, "input": inputs, "service_tier": tier,
                                                         "encoding_format": encoding}, AUTH)
        assert reply.status == 200, reply
        assert reply.json()["service_tier"] == ("default" if tier == "auto" else tier)
        data = reply.json()["data"]
        if encoding == "float":
            return np.array([d["embedding"] for d in data], np.float32)
        return vectors(reply)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs))
    for (inputs, _, _), got in zip(jobs, results):
        expected = np.stack([alone[t] for t in ([inputs] if isinstance(inputs, str) else inputs)])
        assert np.abs(got - expected).max() <= 1e-5


# -- tiers ------------------------------------------------------------------------------------------
def test_priority_latency_stays_low_while_flex_saturates(tmp_path_factory):
    proc = launch(tmp_path_factory, "tiers", ["--model", MODEL, "--max-batch-tokens", "32"])
    try:
        priority_p99(proc, 5)  # warm up
        ratios = []
        for _ in range(3):  # this machine's noise can spoil one pair of measurements, not three
            unloaded = priority_p99(proc)
            loaded, stats = under_flex_load(proc, lambda: priority_p99(proc))
            ratios.append(loaded / unloaded)
            # what the scheduler did, from its own metrics: priority waited about one batch
            # (the one computing when it arrived), flex waited behind it, flex still completed
            assert stats["backlog"] > 0 and stats["flex_replies"] and set(stats["flex_statuses"]) == {200}
            assert stats["priority_queue_s"] <= 2 * stats["batch_s"], stats
            assert stats["flex_queue_s"] > stats["priority_queue_s"], stats
            if ratios[-1] <= 3:
                break
        assert min(ratios) <= 3, ratios  # p99 under flex saturation within 3x of unloaded
    finally:
        assert proc.stop() == 0, proc.log()


def priority_p99(proc, n: int = 30, tier: str = "priority") -> float:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        reply = embed(proc, f"urgent question {i}", headers={}, service_tier=tier)
        latencies.append(time.perf_counter() - started)
        assert reply.status == 200
    return float(np.percentile(latencies, 99))


def mean_of(proc, histogram: str, **labels) -> tuple[float, float]:
    return (proc.metric(f"tinyembed_scheduler_{histogram}_sum", model=MODEL, **labels),
            proc.metric(f"tinyembed_scheduler_{histogram}_count", model=MODEL, **labels))


SERIES = (("request_queue_seconds", {"tier": "priority"}), ("request_queue_seconds", {"tier": "flex"}),
          ("batch_compute_seconds", {}))


def under_flex_load(proc, measure, clients: int = 8):
    """Run measure() while `clients` threads keep sending 4-text flex requests."""
    stop, statuses = threading.Event(), []

    def flex_client(c):
        i = 0
        while not stop.is_set():
            statuses.append(embed(proc, [f"flex {c} {i} {k}" for k in range(4)], headers={},
                                  service_tier="flex").status)
            i += 1

    threads = [threading.Thread(target=flex_client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: proc.metric("tinyembed_scheduler_queue_sequences", model=MODEL, tier="flex") >= 8,
                   "a flex backlog")
        before = [mean_of(proc, h, **labels) for h, labels in SERIES]
        result = measure()
        backlog = proc.metric("tinyembed_scheduler_queue_sequences", model=MODEL, tier="flex")
        after = [mean_of(proc, h, **labels) for h, labels in SERIES]
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    priority_queue, flex_queue, batch = ((s1 - s0) / max(c1 - c0, 1) for (s0, c0), (s1, c1) in zip(before, after))
    return result, {"backlog": backlog, "flex_replies": len(statuses), "flex_statuses": statuses,
                    "priority_queue_s": priority_queue, "flex_queue_s": flex_queue, "batch_s": batch}


# -- fairness ---------------------------------------------------------------------------------------
def test_a_2048_input_request_does_not_hold_a_single_text_behind_it(sched, minilm):
    big_inputs = [f"w{i}" for i in range(2048)]
    before = batch_count(sched)
    big_reply = {}
    big = threading.Thread(target=lambda: big_reply.update(r=embed(sched, big_inputs)))
    big.start()
    wait_until(lambda: batch_count(sched) >= before + 1, "the big request's first batch")
    started = time.perf_counter()
    single = embed(sched, "a single text behind a big request")
    latency = time.perf_counter() - started
    big_running = big.is_alive()
    big.join(120)
    count = batch_count(sched) - before
    seconds = sched.metric("tinyembed_scheduler_batch_compute_seconds_sum", model=MODEL)
    mean_batch = seconds / batch_count(sched)
    assert big_running, "the single text waited for the whole big request"
    assert count >= 10
    assert latency <= 4 * mean_batch + 0.2, (latency, mean_batch)
    np.testing.assert_allclose(vectors(single)[0], minilm.embed_texts(["a single text behind a big request"])[0],
                               atol=1e-5)
    got = vectors(big_reply["r"])
    assert got.shape == (2048, 384)
    sample = [0, 1, 1000, 2047]
    assert np.abs(got[sample] - minilm.embed_texts([big_inputs[i] for i in sample])).max() <= 1e-5


# -- overload ---------------------------------------------------------------------------------------
def test_ten_times_the_queue_gives_503_for_the_excess_only(tmp_path_factory, minilm):
    proc = launch(tmp_path_factory, "overload", ["--model", MODEL, "--max-batch-tokens", "256",
                                                 "--max-queue-tokens", "1000"])
    try:
        overload(proc, minilm)
    finally:
        assert proc.stop() == 0, proc.log()


def overload(proc, minilm):
    requests = [[f"overload request {r} text {k} with a few words" for k in range(25)] for r in range(45)]
    tokens = sum(len(s) for r in requests for s in minilm.tokenizer.encode(r))
    assert tokens >= 10 * 1000
    embed(proc, requests[0][:2], headers={})  # warm up, then measure memory
    rss_before = rss_mib(proc)
    barrier = threading.Barrier(len(requests))

    def send(inputs):
        barrier.wait()
        return embed(proc, inputs, headers={})

    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(send, requests))
    rss_after = rss_mib(proc)
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= len(requests) // 2
    for inputs, reply in zip(requests, replies):
        if reply.status == 503:
            assert reply.error["code"] == "server_overloaded"
            assert int(reply.headers["retry-after"]) >= 1
        else:
            assert np.abs(vectors(reply) - minilm.embed_texts(inputs)).max() <= 1e-5
    assert proc.metric("tinyembed_scheduler_rejected_total", model=MODEL, reason="queue_full") == statuses.count(503)
    assert proc.metric("tinyembed_scheduler_unfinished_tokens", model=MODEL) == 0
    assert rss_after - rss_before < 100, (rss_before, rss_after)


# -- disconnects ------------------------------------------------------------------------------------
def test_a_vanished_client_costs_no_compute_after_it_is_noticed(sched):
    inputs = [f"text {i} of a client that goes away before its answer" for i in range(512)]  # ~30 batches
    before_tokens = sched.metric("tinyembed_scheduler_batch_tokens_sum", model=MODEL)
    before_count = batch_count(sched)
    before_cancelled = sched.metric("tinyembed_scheduler_rejected_total", model=MODEL, reason="cancelled")
    client = RawClient(sched.port, timeout=60)
    body = json.dumps({"model": MODEL, "input": inputs}).encode()
    client.send(post("/v1/embeddings", body, extra=f"Authorization: Bearer {KEYS[0]}\r\n"))
    wait_until(lambda: batch_count(sched) >= before_count + 2, "two batches of the request")
    client.close()
    wait_until(lambda: sched.metric("tinyembed_scheduler_rejected_total", model=MODEL,
                                    reason="cancelled") == before_cancelled + 1, "the disconnect to be noticed")
    noticed = batch_count(sched)
    wait_until(lambda: sched.metric("tinyembed_scheduler_unfinished_tokens", model=MODEL) == 0, "an idle queue")
    computed = sched.metric("tinyembed_scheduler_batch_tokens_sum", model=MODEL) - before_tokens
    # at most the batch computing when the disconnect was noticed finishes after it
    assert batch_count(sched) <= noticed + 1
    assert computed <= (noticed + 1 - before_count) * 256 < 512 * 10


# -- usage per key ----------------------------------------------------------------------------------
def test_usage_per_api_key_in_metrics(sched):
    from tinyembed.server.auth import KeyLabels, fingerprint

    label = KeyLabels(LABEL_SECRET)(fingerprint(KEYS[1]))
    before_requests = sched.metric("tinyembed_usage_requests_total", key=label, model=MODEL)
    before_tokens = sched.metric("tinyembed_usage_tokens_total", key=label, model=MODEL)
    used = 0
    for inputs in (["one"], ["two", "three four"], "five six seven"):
        reply = embed(sched, inputs, headers={"Authorization": f"Bearer {KEYS[1]}"})
        assert reply.status == 200
        used += reply.json()["usage"]["total_tokens"]
    assert sched.metric("tinyembed_usage_requests_total", key=label, model=MODEL) == before_requests + 3
    assert sched.metric("tinyembed_usage_tokens_total", key=label, model=MODEL) == before_tokens + used
    text = sched.request("GET", "/metrics").body.decode()
    assert KEYS[0] not in text and KEYS[1] not in text and fingerprint(KEYS[1]) not in text
    for series in ("queue_sequences", "queue_tokens"):
        for tier in ("priority", "default", "flex"):
            assert f'tinyembed_scheduler_{series}{{model="{MODEL}",tier="{tier}"}}' in text
    for histogram in ("batch_tokens", "batch_sequences", "batch_compute_seconds"):
        assert f'tinyembed_scheduler_{histogram}_count{{model="{MODEL}"}}' in text
    assert f'tinyembed_scheduler_request_queue_seconds_count{{model="{MODEL}",tier="default"}}' in text


# -- shutdown ---------------------------------------------------------------------------------------
def test_sigterm_drains_the_scheduler_then_exits_0(tmp_path_factory, minilm):
    from test_http_shutdown import sigterm_while_busy

    proc = launch(tmp_path_factory, "sched-sigterm", ["--model", MODEL, "--max-batch-tokens", "512"])
    try:
        sigterm_while_busy(proc, minilm)
    finally:
        proc.stop(signal.SIGKILL)
