"""Idle sockets never lock anyone out (issue 24, class 2; server/slots.py).

At the connection cap the server closes the oldest connection that never sent a byte, then the
oldest idle keep-alive one; when every connection is busy, /health and /ready are still answered
on a few probe slots above the cap. A new connection that stays silent is closed after
--first-byte-timeout. Real server, raw sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_MODEL, RawClient, post, start_server
from tinyembed.server.slots import FD_HEADROOM

CAP = 8
PROBE_SLOTS = 32  # server/slots.py
HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
EMBED = post("/v1/embeddings", json.dumps({"model": "tiny", "input": "hi"}).encode())


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """A small cap and long timeouts: only the cap decides who is closed."""
    proc = start_server(tmp_path_factory, "capped", [
        "--model", f"tiny={TINY_MODEL}", "--max-connections", str(CAP), "--first-byte-timeout", "60",
        "--idle-timeout", "60", "--header-timeout", "60", "--body-timeout", "60", "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def clients(port: int, n: int, first: bytes = b"") -> list[RawClient]:
    out = []
    for _ in range(n):
        client = RawClient(port, timeout=20)
        if first:
            client.send(first)
        out.append(client)
    return out


def close_all(group: list[RawClient]) -> None:
    for client in group:
        client.close()


def test_many_silent_sockets_do_not_lock_out_health(capped):
    silent = clients(capped.port, 10 * CAP)  # ten times the cap, nothing sent
    try:
        for _ in range(3):
            probe = RawClient(capped.port, timeout=20)
            probe.send(HEALTH)
            assert probe.response().status == 200
            probe.send(EMBED)  # an ordinary connection: it may do real work too
            assert probe.response().status == 200
            probe.close()
        closed = sum(client.closed_by_server() for client in silent[:5])
        assert closed == 5, "the oldest silent connections were closed to make room"
    finally:
        close_all(silent)


def test_idle_keep_alive_connections_make_room(capped):
    kept = clients(capped.port, CAP, HEALTH)
    try:
        for client in kept:
            assert client.response().status == 200  # now each waits, kept alive, between requests
        fresh = RawClient(capped.port, timeout=20)
        fresh.send(HEALTH)
        assert fresh.response().status == 200
        assert kept[0].closed_by_server(), "the oldest idle keep-alive connection made room"
        fresh.close()
    finally:
        close_all(kept)


def test_busy_connections_leave_probe_slots_for_health(capped):
    busy = clients(capped.port, CAP, b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n")  # headers never finish
    limited = []
    try:
        for path in (b"/health", b"/ready"):
            probe = RawClient(capped.port, timeout=20)
            probe.send(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = probe.response()
            assert reply.status == 200 and reply.headers["connection"] == "close"
            probe.close()
        other = RawClient(capped.port, timeout=20)
        other.send(EMBED)
        reply = other.response()
        assert reply.status == 503 and reply.error["code"] == "server_overloaded"
        assert reply.headers["retry-after"] == "1"
        other.close()
        # the probe slots themselves are bounded: busy clients on all of them -> 503 at once
        limited = clients(capped.port, PROBE_SLOTS, b"GET /health HTTP/1.1\r\n")
        late = RawClient(capped.port, timeout=20)
        reply = late.response()
        assert reply.status == 503 and reply.error["code"] == "server_overloaded"
        late.close()
    finally:
        close_all(busy)
        close_all(limited)
    assert capped.metric("tinyembed_requests_total", route="protocol", status="503") >= 1


def test_the_server_serves_again_after_the_crowd_leaves(capped):
    crowd = clients(capped.port, CAP, b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n")
    close_all(crowd)
    client = RawClient(capped.port, timeout=20)
    client.send(EMBED)
    assert client.response().status == 200
    client.close()


@pytest.fixture(scope="module")
def hasty(tmp_path_factory):
    proc = start_server(tmp_path_factory, "hasty", [
        "--model", f"tiny={TINY_MODEL}", "--first-byte-timeout", "0.2", "--idle-timeout", "60",
        "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_a_silent_new_connection_is_closed_after_the_first_byte_timeout(hasty):
    silent = RawClient(hasty.port, timeout=20)  # far shorter than the idle timeout of 60 s
    assert silent.closed_by_server()
    silent.close()
    talking = RawClient(hasty.port, timeout=20)
    talking.send(HEALTH)
    assert talking.response().status == 200
    talking.close()


def test_the_open_file_limit_is_raised_to_fit_the_cap(tmp_path_factory):
    """Started with a soft limit of 256 files and the default cap of 1024: without raising it,
    accept() fails past ~250 sockets and nobody, /health included, gets in."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024 + 2 * PROBE_SLOTS + 400:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the server process
    try:
        proc = start_server(tmp_path_factory, "fd-limit", ["--model", f"tiny={TINY_MODEL}", "--no-access-log"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle = []
    try:
        idle = clients(proc.port, 400)
        probe = RawClient(proc.port, timeout=20)
        probe.send(HEALTH)
        assert probe.response().status == 200
        probe.close()
    finally:
        close_all(idle)
        assert proc.stop() == 0, proc.log()


def test_a_hard_limit_below_the_cap_lowers_the_cap():
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)); "
              "from tinyembed.server.slots import fit_fd_limit; print(fit_fd_limit(1024), fit_fd_limit(50))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == [str(200 - PROBE_SLOTS - FD_HEADROOM), "50"]
