"""HTTP strictness (issue 24, class 5): transfer codings the server does not implement are 501,
a chunk larger than the body limit is refused when its size line arrives, parser errors never
name the server's internals, and a client that half-closes after a full request is answered.
Real server, raw sockets on 127.0.0.1; long timeouts, so that no answer comes from a timeout.
"""

from __future__ import annotations

import json
import socket

import pytest

from conftest import TINY_MODEL, RawClient, post, start_server

BODY = json.dumps({"model": "tiny", "input": "hello", "encoding_format": "float"}).encode()
LIMIT = 65536


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    proc = start_server(tmp_path_factory, "strictness", [
        "--model", f"tiny={TINY_MODEL}", "--max-body-bytes", str(LIMIT), "--header-timeout", "120",
        "--body-timeout", "120", "--idle-timeout", "120", "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def send(server, data: bytes) -> tuple:
    client = RawClient(server.port, timeout=20)
    client.send(data)
    reply = client.response()
    closed = client.closed_by_server()
    client.close()
    return reply, closed


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "gzip", "identity", "x-custom", "br"])
def test_a_transfer_coding_the_server_does_not_implement_is_501(patient, coding):
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: {coding}\r\n\r\n").encode()
    reply, closed = send(patient, head + chunked(BODY))
    assert reply.status == 501 and reply.error["code"] == "not_implemented", reply
    assert "Transfer-Encoding" in reply.error["message"] and closed


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " chunked "])
def test_plain_chunked_is_still_served(patient, coding):
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: {coding}\r\n\r\n").encode()
    client = RawClient(patient.port, timeout=20)
    client.send(head + chunked(BODY))
    assert client.response().status == 200
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")  # framing intact for the next request
    assert client.response().status == 200
    client.close()


def test_chunked_twice_is_malformed(patient):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked, chunked\r\n\r\n")
    reply, closed = send(patient, head + chunked(BODY))
    assert reply.status in (400, 501) and closed


@pytest.mark.parametrize("size", [b"100000000", b"FFFFFFFF", b"10001", b"10001;ext=1", b"0010001"])
def test_a_declared_chunk_over_the_limit_is_413_before_its_bytes(patient, size):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    reply, closed = send(patient, head + size + b"\r\n{")  # one byte of the chunk, then silence
    assert reply.status == 413 and reply.error["code"] == "payload_too_large", reply
    assert closed


def test_a_chunk_size_too_long_to_read_is_400_at_once(patient):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    reply, closed = send(patient, head + b"F" * 20 + b"\r\n{")
    assert reply.status in (400, 413) and closed


def test_chunks_that_add_up_past_the_limit_are_413(patient):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"8000\r\n" + b"x" * 0x8000 + b"\r\n"  # 32 KiB chunks: the third one crosses 64 KiB
    reply, _ = send(patient, head + piece + piece + b"8000\r\n")
    assert reply.status == 413


def test_a_chunk_exactly_at_the_limit_is_read(patient):
    """The size check counts the body as it is: a body of exactly the limit is not refused."""
    text = "x" * (LIMIT - 100)
    body = json.dumps({"model": "tiny", "input": text, "truncate": True})
    body = body.encode() + b" " * (LIMIT - len(body))
    head = (b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    client = RawClient(patient.port, timeout=20)
    client.send(head + chunked(body))
    reply = client.response()
    client.close()
    assert reply.status != 413, reply


@pytest.mark.parametrize("raw", [
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
])
def test_parser_errors_never_name_internals(patient, raw):
    reply, closed = send(patient, raw)
    assert 400 <= reply.status < 500 and reply.error["code"] == "invalid_request", reply
    message = reply.error["message"]
    assert "callback" not in message and "on_" not in message and "httptools" not in message, message
    assert closed


def test_connect_is_refused_plainly(patient):
    reply, _ = send(patient, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert reply.status == 400 and "CONNECT" in reply.error["message"]


def test_a_half_closed_client_gets_its_reply(patient):
    client = RawClient(patient.port, timeout=20)
    client.send(post("/v1/embeddings", BODY) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    client.sock.shutdown(socket.SHUT_WR)  # done sending; still reading
    replies = [client.response()]
    while replies[-1].status == 100:  # the server may say 100 Continue to check the client is there
        replies.append(client.response())
    assert replies[-1].status == 200 and len(replies[-1].json()["data"]) == 1
    last = client.response()
    assert last.status == 200 and last.json()["status"] == "ok"
    assert last.headers["connection"] == "close" and client.closed_by_server()
    client.close()


def test_a_half_closed_http_1_0_client_gets_its_reply_without_1xx(patient):
    client = RawClient(patient.port, timeout=20)
    client.send(post("/v1/embeddings", BODY).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    client.sock.shutdown(socket.SHUT_WR)
    reply = client.response()
    assert reply.status == 200 and client.closed_by_server()
    client.close()


def test_a_half_close_mid_request_just_closes(patient):
    client = RawClient(patient.port, timeout=20)
    client.send(post("/v1/embeddings", BODY)[:-5])
    client.sock.shutdown(socket.SHUT_WR)
    assert client.closed_by_server() and client.buffer == b""
    client.close()
    assert patient.request("GET", "/health").status == 200
