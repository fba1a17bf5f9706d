"""--max-memory on a real server (issue 27): a request that can never fit is a clear 400; 20
concurrent large requests under a small budget keep the process's RSS under it (read from
/proc), every answer is 200 or 503 with Retry-After, and /health answers afterwards; /metrics
shows RSS, the budget and what requests hold."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RawClient, start_server

LIMIT_MB = 200
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    proc = start_server(tmp_path_factory, "memory", ["--model", MODEL, "--max-memory", f"{LIMIT_MB}M",
                                                     "--no-access-log", "--tokenizer-threads", "1",
                                                     "--max-body-bytes", str(64 << 20)])
    yield proc
    assert proc.stop() == 0, proc.log()


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _post(port: int, body: dict) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/embeddings", json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def test_the_budget_is_logged_and_exported(small):
    assert "memory budget: 200 MB" in small.log()
    assert small.metric("tinyembed_memory_limit_bytes") == LIMIT_MB << 20
    assert 50 << 20 < small.metric("tinyembed_process_resident_bytes") <= LIMIT_MB << 20
    assert small.metric("tinyembed_memory_budget_bytes", part="requests") > 0
    assert small.metric("tinyembed_memory_reserved_bytes") == 0  # nothing in flight


def test_a_request_that_can_never_fit_is_a_clear_400(small):
    capacity = small.metric("tinyembed_memory_budget_bytes", part="requests")
    chars = int(capacity // (2 * 2048)) + 64  # its body alone, held twice, passes the capacity
    status, headers, body = _post(small.port, {"model": MODEL, "input": ["a " * (chars // 2)] * 2048,
                                               "truncate": True})
    assert status in (400, 413), body[:300]  # 413: refused by the body gate, before the body was read
    error = json.loads(body)["error"]
    assert error["code"] == ("invalid_input" if status == 400 else "payload_too_large")
    assert "--max-memory" in error["message"] and ("fewer inputs" in error["message"] or "send less" in error["message"])
    assert headers.get("x-should-retry") == "false"
    assert small.metric("tinyembed_memory_reserved_bytes") == 0


def test_twenty_concurrent_large_requests_stay_under_the_budget(small):
    pid = small.proc.pid
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current RSS (loading peaked higher)
        hwm = True
    except OSError:
        hwm = False
    texts = [f"test {i}" for i in range(1024)]
    results, peak, done = [], [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _status(pid, "VmRSS"))
            time.sleep(0.005)

    def one(i: int):
        fmt = "base64" if i % 2 else "float"
        results.append((fmt, _post(small.port, {"model": MODEL, "input": texts, "encoding_format": fmt})))

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(180)
    done.set()
    sampler.join()
    if hwm:
        peak[0] = max(peak[0], _status(pid, "VmHWM"))
    assert len(results) == 20
    assert peak[0] <= LIMIT_MB << 20, f"RSS peaked at {peak[0] / 2**20:.1f} MB"
    ok = 0
    for fmt, (status, headers, body) in results:
        assert status in (200, 503), body[:300]
        if status == 503:
            assert int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"]["code"] == "server_overloaded"
            continue
        ok += 1
        data = json.loads(body)["data"]  # a streamed (chunked) reply parses like any other
        assert [d["index"] for d in data] == list(range(1024))
        first = data[0]["embedding"]
        vector = np.frombuffer(base64.b64decode(first), "<f4") if fmt == "base64" else np.array(first)
        assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
    assert ok >= 1, "none admitted"  # an idle budget admits: the first always runs
    print(f"{ok} of 20 answered 200, peak RSS {peak[0] / 2**20:.1f} MB")
    assert small.request("GET", "/health").status == 200
    assert small.metric("tinyembed_memory_reserved_bytes") == 0  # every reservation came back


def test_a_body_that_cannot_fit_is_refused_before_it_is_read(small):
    capacity = small.metric("tinyembed_memory_budget_bytes", part="requests")
    length = int(capacity) + (1 << 20)  # under --max-body-bytes, over what requests may hold
    client = RawClient(small.port)
    client.send(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n".encode())  # no body byte sent
    reply = client.response()
    assert reply.status == 413, reply
    assert reply.error["code"] == "payload_too_large" and "--max-memory" in reply.error["message"]
    assert small.metric("tinyembed_memory_reserved_bytes") == 0


def test_a_client_that_leaves_mid_reply_gives_its_memory_back(small):
    body = json.dumps({"model": MODEL, "input": [f"leaves {i}" for i in range(600)]}).encode()
    client = RawClient(small.port)
    client.send(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    client.sock.recv(1)  # the streamed reply has begun (its reservation is held until it ends)
    client.sock.close()
    deadline = time.monotonic() + 30
    while small.metric("tinyembed_memory_reserved_bytes") != 0:
        assert time.monotonic() < deadline, "the reservation was never released"
        time.sleep(0.05)
    assert small.request("GET", "/health").status == 200


def test_a_limit_below_the_model_stops_the_server_with_the_smallest_that_works(tmp_path):
    from conftest import ServerProcess

    proc = ServerProcess(["--model", MODEL, "--max-memory", "60M"], tmp_path / "server.log")
    try:
        assert proc.proc.wait(60) == 1
    finally:
        proc.stop()
    log = proc.log()
    assert "--max-memory 60 MB is below what the models need" in log and "give at least" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("text, size", [("300M", 300 << 20), ("1.5G", 3 << 29), ("512MiB", 512 << 20),
                                        ("2gb", 2 << 30), ("123456", 123456)])
def test_memory_sizes(text, size):
    from tinyembed.server.config import memory_size

    assert memory_size(text) == size


@pytest.mark.parametrize("text", ["", "-5M", "lots", "M", "0"])
def test_bad_memory_sizes_say_how_to_write_one(text):
    from tinyembed.server.config import memory_size

    with pytest.raises(ValueError, match="max-memory"):
        memory_size(text)
