"""HTTP/1.1 behaviour over raw sockets: keep-alive, pipelining, chunked bodies, HEAD,
100-continue, HTTP/1.0, malformed requests, and the limits that keep one client from holding
the server: header/body/idle timeouts, header size, connection cap, request deadline.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from conftest import TINY_MODEL, RawClient, assert_same_vectors, post, start_server

TINY_BODY = json.dumps({"model": "tiny", "input": ["pipelined", "requests"], "encoding_format": "float"}).encode()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """Small limits, so each can be reached cheaply: every embedding request misses its deadline."""
    proc = start_server(tmp_path_factory, "strict", [
        "--model", f"tiny={TINY_MODEL}", "--header-timeout", "0.5", "--body-timeout", "0.5",
        "--idle-timeout", "1", "--max-connections", "8", "--request-timeout", "0.000001",
        "--max-tokens-per-request", "100", "--max-body-bytes", "65536", "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


# -- keep-alive, pipelining, bodies ---------------------------------------------------------------------

def test_keep_alive_serves_many_requests_on_one_connection(server):
    client = RawClient(server.port)
    for _ in range(5):
        client.send(post("/v1/embeddings", TINY_BODY))
        reply = client.response()
        assert reply.status == 200 and reply.headers["connection"] == "keep-alive"
    client.close()


def test_pipelined_requests_are_answered_in_order(server, minilm):
    slow = json.dumps({"model": "all-MiniLM-L6-v2", "input": ["a longer request " * 20] * 16}).encode()
    client = RawClient(server.port)
    client.send(post("/v1/embeddings", slow) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
                + post("/v1/embeddings", TINY_BODY) + b"GET /v1/models/tiny HTTP/1.1\r\nHost: t\r\n\r\n"
                + b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = [client.response() for _ in range(5)]
    assert [r.status for r in replies] == [200, 200, 200, 200, 404]
    assert len(replies[0].json()["data"]) == 16  # the slow one first, although /health was ready sooner
    assert replies[1].json() == {"status": "ok", "models": []}
    assert replies[2].json()["model"] == "tiny"
    assert replies[3].json()["id"] == "tiny"
    ids = [r.headers["x-request-id"] for r in replies]
    assert len(set(ids)) == 5
    client.close()


def test_chunked_request_body(server, tiny):
    body = json.dumps({"model": "tiny", "input": ["chunked", "body"], "encoding_format": "float"}).encode()
    pieces = [body[:7], body[7:20], body[20:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    client = RawClient(server.port)
    client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
    for i in range(0, len(chunked), 10):  # in small writes, as a streaming client would
        client.send(chunked[i:i + 10])
    reply = client.response()
    assert reply.status == 200
    got = np.array([d["embedding"] for d in reply.json()["data"]], np.float32)
    assert_same_vectors(got, tiny.embed_texts(["chunked", "body"]))
    client.close()


def test_head_has_headers_and_no_body(server):
    client = RawClient(server.port)
    client.send(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nHEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    health = client.head_response()
    models = client.head_response()
    assert health.status == models.status == 200
    assert int(health.headers["content-length"]) == len(b'{"status":"ok","models":[]}')
    assert int(models.headers["content-length"]) > 100
    after = client.response()  # no stray body bytes were sent before it
    assert after.status == 200 and after.json()["status"] == "ok"
    client.close()


def test_expect_100_continue(server):
    client = RawClient(server.port)
    client.send(post("/v1/embeddings", b"", extra="Expect: 100-continue\r\n").replace(
        b"Content-Length: 0", b"Content-Length: %d" % len(TINY_BODY)))
    interim = client.head_response()
    assert interim.status == 100
    client.send(TINY_BODY)
    assert client.response().status == 200
    client.close()


def test_http_1_0_closes_after_the_response(server):
    client = RawClient(server.port)
    client.send(b"GET /health HTTP/1.0\r\n\r\n")
    reply = client.response()
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert client.closed_by_server()
    client.close()


@pytest.mark.parametrize("garbage", [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                     b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
def test_malformed_requests_are_400_then_closed(server, garbage):
    client = RawClient(server.port)
    client.send(garbage)
    reply = client.response()
    assert reply.status == 400 and reply.error["code"] == "invalid_request"
    assert client.closed_by_server()
    client.close()


def test_oversized_headers_are_431(server):
    client = RawClient(server.port)
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert client.response().status == 431
    client.close()


def test_disconnect_mid_request_leaves_the_server_healthy(server):
    client = RawClient(server.port)
    client.send(post("/v1/embeddings", TINY_BODY)[:-10])
    client.close()
    assert server.request("GET", "/health").status == 200


# -- limits on the strict server ---------------------------------------------------------------------------

def test_silent_client_after_partial_headers_gets_408(strict):
    client = RawClient(strict.port, timeout=10)
    started = time.monotonic()
    client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n")
    reply = client.response()
    assert reply.status == 408 and reply.error["code"] == "timeout"
    assert client.closed_by_server()
    assert time.monotonic() - started < 5
    client.close()


def test_slow_body_gets_408(strict):
    client = RawClient(strict.port, timeout=10)
    client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"model\":")
    reply = client.response()
    assert reply.status == 408 and reply.error["code"] == "timeout"
    client.close()


def test_idle_connections_are_closed(strict):
    silent = RawClient(strict.port, timeout=10)
    assert silent.closed_by_server()  # never sent a byte
    used = RawClient(strict.port, timeout=10)
    used.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert used.response().status == 200
    assert used.closed_by_server()  # idle after its request
    silent.close()
    used.close()


def test_connection_cap(strict):
    clients, statuses = [], []
    try:
        for _ in range(12):
            client = RawClient(strict.port, timeout=10)
            clients.append(client)
            client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = client.response()
            statuses.append(reply.status)
            if reply.status == 503:
                assert reply.error["code"] == "server_overloaded"
                assert reply.headers["retry-after"] == "1"
                break
        assert statuses[-1] == 503 and statuses.count(200) <= 8
    finally:
        for client in clients:
            client.close()
    deadline = time.monotonic() + 10  # the server notices the closes asynchronously
    while time.monotonic() < deadline:
        try:
            if strict.request("GET", "/health").status == 200:
                break
        except (ConnectionError, socket.error):
            pass
        time.sleep(0.02)
    else:
        pytest.fail("the server did not accept connections again")


def test_request_deadline_passed_is_408(strict):
    reply = strict.request("POST", "/v1/embeddings", {"model": "tiny", "input": "late"})
    assert reply.status == 408 and reply.error["code"] == "timeout"


def test_tokens_per_request_limit(strict):
    reply = strict.request("POST", "/v1/embeddings", {"model": "tiny", "input": [[5] * 60, [5] * 60]})
    assert reply.status == 400 and reply.error["code"] == "invalid_input"
    assert "100" in reply.error["message"]


def test_configured_body_limit(strict):
    big = json.dumps({"model": "tiny", "input": ["x" * 70_000]}).encode()
    reply = strict.request("POST", "/v1/embeddings", big)
    assert reply.status == 413 and reply.error["code"] == "payload_too_large"


def test_protocol_rejects_are_counted(strict):
    assert strict.metric("tinyembed_requests_total", route="protocol", status="408") >= 2
    assert strict.metric("tinyembed_requests_total", route="protocol", status="503") >= 1
