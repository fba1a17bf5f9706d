"""Graceful shutdown of a real server process: SIGTERM while a request is in flight answers it,
then the process exits 0; SIGINT on an idle server exits 0 and closes keep-alive connections."""

from __future__ import annotations

import json
import signal
import time

import numpy as np

from conftest import TINY_MODEL, RawClient, assert_same_vectors, post, start_server


def test_sigterm_finishes_the_in_flight_request_then_exits_0(tmp_path_factory, minilm):
    proc = start_server(tmp_path_factory, "sigterm", ["--model", "all-MiniLM-L6-v2"])
    try:
        sigterm_while_busy(proc, minilm)
    finally:
        proc.stop(signal.SIGKILL)


def sigterm_while_busy(proc, minilm):
    texts = [f"request {i} in flight while the server is told to stop " * 6 for i in range(48)]
    client = RawClient(proc.port, timeout=60)
    client.send(post("/v1/embeddings", json.dumps({"model": "all-MiniLM-L6-v2", "input": texts,
                                                   "encoding_format": "float"}).encode()))
    deadline = time.monotonic() + 30
    while proc.metric("tinyembed_requests_in_flight") < 2:  # itself and the embeddings request
        assert time.monotonic() < deadline, "the request never showed up as in flight"
    proc.proc.send_signal(signal.SIGTERM)
    reply = client.response()
    assert reply.status == 200 and reply.headers["connection"] == "close"
    got = np.array([d["embedding"] for d in reply.json()["data"]], np.float32)
    assert_same_vectors(got, minilm.embed_texts(texts))
    assert proc.proc.wait(30) == 0
    log = proc.log()
    assert "SIGTERM received" in log and "stopped" in log and "Traceback" not in log


def test_sigint_on_an_idle_server_exits_0(tmp_path_factory):
    proc = start_server(tmp_path_factory, "sigint", ["--model", f"tiny={TINY_MODEL}"])
    try:
        sigint_while_idle(proc)
    finally:
        proc.stop(signal.SIGKILL)


def sigint_while_idle(proc):
    idle = RawClient(proc.port, timeout=30)
    idle.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert idle.response().status == 200
    proc.proc.send_signal(signal.SIGINT)
    assert idle.closed_by_server()
    assert proc.proc.wait(30) == 0
    assert "SIGINT received" in proc.log()
    idle.close()
