"""Server states that need control over time: still loading (503 model_provisioning), queue full
(503 server_overloaded), a client that disconnects mid-request, an engine bug (500), and a drain.

The real app and HTTP stack run in-process on a background event loop, over real sockets; the
engine is the tiny fixture model behind a gate the test opens, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time

import numpy as np
import pytest

from conftest import TINY_MODEL, RawClient, post
from tinyembed.server.app import run_server
from tinyembed.server.config import HttpLimits, ModelSource, RequestLimits, ServerConfig
from tinyembed.scheduler.runner import DirectRunner

WAIT = 30.0  # bound on every wait for the server thread


class GatedEngine:
    """The tiny engine, except that each forward pass waits until the test opens `gate`."""

    def __init__(self, engine, fail: bool = False):
        self._engine, self.fail = engine, fail
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def embed(self, batch):
        self.calls += 1
        self.entered.set()
        if self.fail:
            raise RuntimeError("secret internal detail")
        assert self.gate.wait(WAIT)
        return self._engine.embed(batch)


class InProcessServer:
    def __init__(self, engine, max_queue_tokens: int = 500_000, gate_loading: bool = False,
                 http: HttpLimits = HttpLimits()):
        self.engine = engine
        self.load_gate = threading.Event()
        if not gate_loading:
            self.load_gate.set()
        self.runner = DirectRunner(max_batch_tokens=16384, max_queue_tokens=max_queue_tokens)
        self.config = ServerConfig(host="127.0.0.1", port=0, models=(ModelSource("tiny", TINY_MODEL),),
                                   requests=RequestLimits(max_queue_tokens=max_queue_tokens), access_log=False,
                                   http=http)
        self.listening = threading.Event()
        self.exit_code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.listening.wait(WAIT)

    def _load(self, config):
        assert self.load_gate.wait(WAIT)
        return [(config.models[0], self.engine)]

    def _run(self):
        self.loop = asyncio.new_event_loop()
        self.stop_event = None

        async def main():
            self.stop_event = asyncio.Event()
            return await run_server(self.config, runner=self.runner, loader=self._load, stop=self.stop_event,
                                    install_signals=False, on_listening=self._on_listening)

        self.exit_code = self.loop.run_until_complete(main())
        self.loop.close()

    def _on_listening(self, addresses):
        self.port = addresses[0][1]
        self.listening.set()

    def request(self, method, path, body=None):
        client = RawClient(self.port)
        data = json.dumps(body).encode() if body is not None else b""
        client.send(f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        try:
            return client.response()
        finally:
            client.close()

    def wait_until(self, condition, what: str):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.005)
        pytest.fail(f"timed out waiting for {what}")

    def shutdown(self) -> int:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        return self.exit_code


@pytest.fixture
def gated(tiny):
    servers = []

    def make(**kwargs):
        engine = GatedEngine(tiny, fail=kwargs.pop("fail", False))
        server = InProcessServer(engine, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.load_gate.set()
        server.engine.gate.set()
        if server.thread.is_alive():
            assert server.shutdown() == 0


def body(texts):
    return json.dumps({"model": "tiny", "input": texts, "encoding_format": "float"}).encode()


def test_model_provisioning_until_loaded(gated, tiny):
    server = gated(gate_loading=True)
    server.engine.gate.set()
    assert server.request("GET", "/health").status == 200  # alive while loading
    for method, path, payload in (("GET", "/ready", None), ("GET", "/v1/models", None),
                                  ("POST", "/v1/embeddings", {"model": "tiny", "input": "x"})):
        reply = server.request(method, path, payload)
        assert reply.status == 503 and reply.error["code"] == "model_provisioning", (path, reply)
        assert reply.headers["retry-after"] == "5"
    server.load_gate.set()
    server.wait_until(lambda: server.request("GET", "/ready").status == 200, "readiness")
    reply = server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "float"})
    np.testing.assert_array_equal(np.array(reply.json()["data"][0]["embedding"], np.float32), tiny.embed_texts(["x"])[0])


def test_full_queue_is_server_overloaded(gated):
    server = gated(max_queue_tokens=1)
    first = RawClient(server.port)
    first.send(post("/v1/embeddings", body(["occupies the compute thread"])))
    assert server.engine.entered.wait(WAIT)
    reply = server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "one more"})
    assert reply.status == 503 and reply.error["code"] == "server_overloaded"
    assert int(reply.headers["retry-after"]) >= 1
    server.engine.gate.set()
    assert first.response().status == 200  # the admitted request is unaffected
    assert server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "room again"}).status == 200
    first.close()


def test_disconnected_client_work_is_dropped(gated, tiny):
    server = gated()
    runner = server.runner
    first, second = RawClient(server.port), RawClient(server.port)
    first.send(post("/v1/embeddings", body(["running"])))
    assert server.engine.entered.wait(WAIT)
    first_tokens = runner._queued_tokens
    second.send(post("/v1/embeddings", body(["queued behind it, then abandoned"])))
    server.wait_until(lambda: runner._queued_tokens > first_tokens, "the second request to be queued")
    second.close()  # the client goes away while its request waits
    server.wait_until(lambda: runner._queued_tokens == first_tokens, "the abandoned request to be dropped")
    server.engine.gate.set()
    assert first.response().status == 200
    reply = server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "next", "encoding_format": "float"})
    assert reply.status == 200
    assert server.engine.calls == 2  # the first and the last: the abandoned batch never ran
    metrics = server.request("GET", "/metrics").body.decode()
    assert 'tinyembed_requests_total{route="/v1/embeddings",status="499"} 1' in metrics
    first.close()


def test_engine_bug_is_a_generic_500_with_request_id(gated, caplog):
    server = gated(fail=True)
    with caplog.at_level(logging.ERROR, logger="tinyembed"):
        reply = server.request("POST", "/v1/embeddings", {"model": "tiny", "input": "x"})
    assert reply.status == 500 and reply.error["code"] == "internal_error"
    request_id = reply.headers["x-request-id"]
    assert request_id in reply.error["message"]
    assert "secret internal detail" not in reply.body.decode()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert request_id in logged
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)
    assert server.request("GET", "/health").status == 200


def test_a_client_that_does_not_read_its_responses_is_cut_off(gated):
    server = gated(http=HttpLimits(write_timeout=0.3))
    server.engine.gate.set()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: replies back up fast
    sock.connect(("127.0.0.1", server.port))
    request = post("/v1/embeddings", json.dumps({"model": "tiny", "input": [[5]] * 2048,
                                                 "encoding_format": "float"}).encode())
    sock.sendall(request * 8)  # ~10 MB of replies that are never read

    def open_connections():
        metrics = server.request("GET", "/metrics").body.decode()
        return float(re.search(r"^tinyembed_open_connections (\S+)$", metrics, re.M).group(1))

    server.wait_until(lambda: open_connections() == 1, "the stalled connection to be dropped")  # 1: /metrics
    sock.close()


def test_drain_finishes_in_flight_and_refuses_new_connections(gated, tiny):
    server = gated()
    busy, idle = RawClient(server.port), RawClient(server.port, timeout=WAIT)
    busy.send(post("/v1/embeddings", body(["in flight at shutdown"])))
    assert server.engine.entered.wait(WAIT)
    server.loop.call_soon_threadsafe(server.stop_event.set)

    def refused():
        try:
            RawClient(server.port, timeout=1).close()
            return False
        except (ConnectionRefusedError, ConnectionResetError):  # reset: it sat in the closing backlog
            return True

    server.wait_until(refused, "the listening socket to close")
    assert idle.closed_by_server()  # an idle keep-alive connection is closed at once
    server.engine.gate.set()
    reply = busy.response()
    assert reply.status == 200 and reply.headers["connection"] == "close"
    np.testing.assert_array_equal(np.array(reply.json()["data"][0]["embedding"], np.float32),
                                  tiny.embed_texts(["in flight at shutdown"])[0])
    server.thread.join(WAIT)
    assert server.exit_code == 0
    busy.close()
    idle.close()
