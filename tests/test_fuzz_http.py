"""Fuzzing the classes of issue 24 below the OpenAPI level (test_fuzz_openapi.py cannot reach
them: it speaks well-formed HTTP). Raw request heads over sockets to a real server with keys:
methods, paths, keys, transfer codings, chunk sizes, Content-Lengths, Expect, half-closes; and
integers in forms and queries. What must hold for every example:
- no 5xx but 501 (a transfer coding) and 503 (the connection cap); errors are OpenAI-shaped and
  never name the parser's callbacks;
- without a valid key, a keyed route never answers 2xx or 405 (the key comes first);
- nothing stays held for bodies once the clients are gone, and the server still answers;
- a form or query integer is accepted exactly when it is ASCII digits in range.
Bounded and reproducible: derandomized, a fixed number of examples, loopback only.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_MODEL, start_server
from tinyembed.jobs import files as batch_files
from tinyembed.server.limits import query_int
from tinyembed.server.protocol import ApiError

KEY = "k-fuzz-http"
FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
KEYED = ("/v1/embeddings", "/embeddings", "/v1/models", "/v1/models/tiny", "/tokenize", "/v1/files", "/v1/batches")
OPEN = ("/health", "/ready", "/metrics", "/openapi.json", "/docs")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    proc = start_server(tmp_path_factory, "fuzz-http", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", KEY, "--data-dir", str(tmp_path_factory.mktemp("fuzz-http")),
        "--max-body-bytes", "100000", "--header-timeout", "1", "--body-timeout", "1", "--first-byte-timeout", "1",
        "--idle-timeout", "1", "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def exchange(port: int, data: bytes, half_close: bool) -> list[tuple[int, dict, bytes]]:
    """Send `data`, read every response until the server closes or goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        buffer = b""
        try:
            while chunk := sock.recv(65536):
                buffer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    finally:
        sock.close()
    replies = []
    while b"\r\n\r\n" in buffer:
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        length = int(headers.get("content-length", 0))
        body, buffer = buffer[:length], buffer[length:]
        replies.append((status, headers, body))
    return replies


methods = st.sampled_from(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "CONNECT"])
paths = st.sampled_from(KEYED + OPEN + ("/", "/v1/nothing", "/v1/files/file-x", "*", "example.com:443"))
auths = st.sampled_from([None, f"Bearer {KEY}", f"Bearer {KEY}", "Bearer wrong", "Basic abc", "Bearer "])
codings = st.sampled_from([None, None, None, "chunked", "chunked", "gzip, chunked", "gzip", "identity", "chunked, gzip"])
lengths = st.sampled_from(["fit", "fit", "fit", "fit", None, "100001", "16777216", "4294967296", "-1", "1_0", "+5"])
chunk_sizes = st.sampled_from([b"fit", b"fit", b"fit", b"FFFFFFFF", b"100000000", b"18701", b"zz", b"fit;ext=1", b"F" * 20])
bodies = st.sampled_from([b"", b"{", b'{"model": "tiny", "input": "hi"}', b"\x00\xff" * 3, b"x" * 300])


@FUZZ
@given(method=methods, path=paths, auth=auths, coding=codings, length=lengths, chunk=chunk_sizes, body=bodies,
       expect=st.booleans(), half_close=st.booleans())
def test_raw_heads(target, method, path, auth, coding, length, chunk, body, expect, half_close):
    head = [f"{method} {path} HTTP/1.1", "Host: t", "Content-Type: application/json"]
    if auth:
        head.append(f"Authorization: {auth}")
    if coding:
        head.append(f"Transfer-Encoding: {coding}")
    if length == "fit":
        if not coding:
            head.append(f"Content-Length: {len(body)}")
    elif length is not None:
        head.append(f"Content-Length: {length}")
    if expect:
        head.append("Expect: 100-continue")
    data = ("\r\n".join(head) + "\r\n\r\n").encode()
    chunk = chunk.replace(b"fit", b"%x" % len(body))
    data += ((chunk + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n") if coding else body
    replies = exchange(target.port, data, half_close)
    valid_key = auth == f"Bearer {KEY}"
    for status, headers, payload in replies:
        assert status < 500 or status in (501, 503), (status, payload)
        if status == 100:
            continue
        if payload and headers.get("content-type", "").startswith("application/json") and status >= 400:
            error = json.loads(payload)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert "callback" not in error["message"] and "on_" not in error["message"], error
        if path in KEYED and not valid_key:
            assert status not in (200, 405), (status, payload)


def test_nothing_is_held_after_the_fuzzing(target):
    metrics = target.request("GET", "/metrics").body.decode()
    held = re.search(r"^tinyembed_request_body_bytes (\S+)$", metrics, re.M)
    assert held is not None and float(held.group(1)) == 0
    assert target.request("GET", "/health").status == 200
    assert "Traceback" not in target.log()


integers = st.one_of(st.text(max_size=8), st.integers(-10, 10**7).map(str),
                     st.tuples(st.sampled_from(["", " ", "+", "-", "0", "\t", "\u0663"]), st.integers(0, 10**6),
                               st.sampled_from(["", " ", "_0", "\n", ".0", "\u00b2"])).map(lambda t: f"{t[0]}{t[1]}{t[2]}"))


@FUZZ
@given(integers)
def test_form_integers_are_ascii_digits_in_range(text):
    boundary = "fz"
    fields = [("purpose", "batch"), ("expires_after[anchor]", "created_at"), ("expires_after[seconds]", text)]
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'.encode()
                 + b'{"custom_id": "a"}\r\n')
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    expected = re.fullmatch(r"[0-9]+", text) is not None and len(text) <= 12 and \
        batch_files.MIN_EXPIRY <= int(text) <= batch_files.MAX_EXPIRY
    try:
        upload = batch_files.read_upload(batch_files.parse_multipart(body, f"multipart/form-data; boundary={boundary}"),
                                         10_000)
    except ApiError as exc:
        assert not expected and exc.status == 400, (text, exc.message)
        return
    assert expected and upload.expires_after == int(text), text


@FUZZ
@given(integers)
def test_query_integers_are_ascii_digits_in_range(text):
    expected = int(text) if re.fullmatch(r"[0-9]{1,12}", text) and 1 <= int(text) <= 100 else None
    assert query_int(text, 20, 1, 100) == expected
