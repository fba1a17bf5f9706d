"""No memory for a body before the route exists and the key is valid (issue 24, class 1).

A request head with a large Content-Length and a byte of body, held open on many connections,
must not make the server allocate the declared sizes: bodies are kept only after the gate
(route, method, key, content type) accepts the head, and then only as their bytes arrive. The
server's RSS is read from /proc/<pid>/status. A refused request is still answered in full:
after its body (discarded) on a kept-alive connection, or at once when it asked for
`Expect: 100-continue`.
"""

from __future__ import annotations

import json

import pytest

from conftest import TINY_MODEL, RawClient, post, start_server

KEY = "body-memory-key"
CONNECTIONS = 64
DECLARED = 16 * 1024 * 1024
BOUND_KIB = 96 * 1024  # far under the 64 x 16 MiB = 1 GiB the declared sizes would take


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    proc = start_server(tmp_path_factory, "body-memory", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", KEY, "--max-body-bytes", str(DECLARED),
        "--body-timeout", "120", "--header-timeout", "120", "--no-access-log",
        # a budget every declared body fits (64 x 2 copies x 16 MiB): what this file checks is what
        # the HTTP layer keeps; the memory budget's refusals are tests/test_memory_http.py's
        "--max-memory", "8G"])
    yield proc
    assert proc.stop() == 0, proc.log()


def rss_kib(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def head(path: str = "/v1/embeddings", key: str | None = None, length: int = DECLARED, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def hold(server, count: int, data: bytes) -> list[RawClient]:
    clients = []
    for _ in range(count):
        client = RawClient(server.port, timeout=30)
        client.send(data)
        clients.append(client)
    server.request("GET", "/health")  # every head above has been read by now (one event loop, in order)
    return clients


@pytest.mark.parametrize("case", ["no key", "wrong key", "no route", "wrong method"])
def test_declared_bodies_without_a_valid_key_cost_nothing(keyed, case):
    data = {"no key": head(), "wrong key": head(key="nope"), "no route": head("/v1/nothing", KEY),
            "wrong method": head("/v1/models", KEY).replace(b"POST", b"PUT", 1)}[case] + b"{"
    before = rss_kib(keyed)
    clients = hold(keyed, CONNECTIONS, data)
    try:
        grown = rss_kib(keyed) - before
        assert grown < BOUND_KIB, f"{grown} KiB for {CONNECTIONS} heads declaring 16 MiB each"
        assert keyed.metric("tinyembed_request_body_bytes") == 0
    finally:
        for client in clients:
            client.close()


def test_an_accepted_body_is_kept_only_as_it_arrives(keyed):
    before = rss_kib(keyed)
    clients = hold(keyed, CONNECTIONS, head(key=KEY) + b'{"model": "tiny", "input": "' + b"x" * 1000)
    try:
        grown = rss_kib(keyed) - before
        assert grown < BOUND_KIB, f"{grown} KiB for {CONNECTIONS} valid heads with 1 KB of body each"
        held = keyed.metric("tinyembed_request_body_bytes")
        assert CONNECTIONS * 1000 <= held < CONNECTIONS * 2000  # the bytes that came, no more
    finally:
        for client in clients:
            client.close()
    assert keyed.request("GET", "/health").status == 200


def test_a_refused_body_is_answered_after_it_on_a_kept_connection(keyed):
    body = json.dumps({"model": "tiny", "input": "hello"}).encode()
    client = RawClient(keyed.port)
    client.send(post("/v1/embeddings", body))  # no key
    reply = client.response()
    assert reply.status == 401 and reply.error["code"] == "invalid_api_key"
    assert reply.headers["connection"] == "keep-alive"
    client.send(post("/v1/embeddings", body, extra=f"Authorization: Bearer {KEY}\r\n"))
    assert client.response().status == 200  # the refused body was read and dropped, in step
    client.close()


def test_a_refused_request_that_expects_100_continue_is_answered_at_once(keyed):
    client = RawClient(keyed.port)
    client.send(head(extra="Expect: 100-continue\r\n"))  # no key; the body never comes
    reply = client.response()
    assert reply.status == 401 and reply.headers["connection"] == "close"
    assert client.closed_by_server()
    client.close()
