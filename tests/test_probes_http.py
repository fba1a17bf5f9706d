"""Hostile-client probes against a real server: deep nesting, invalid UTF-8, non-ASCII query
digits, megabyte echoes, huge texts, slow readers. Each probe asserts what a client sees: an
OpenAI-shaped 4xx (never a 500), bounded messages, and a server that still answers afterwards.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import TINY_MODEL, RawClient, post, start_server

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_MESSAGE = 2000  # no error message may be longer than this (they are bounded to 1000 chars)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("probe-data")
    proc = start_server(tmp_path_factory, "probes", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", KEY, "--data-dir", str(data_dir),
        "--write-timeout", "1", "--tokenizer-threads", "2"])
    yield proc
    assert proc.stop() == 0, proc.log()


def call(server, method, path, body=None, headers=None):
    return server.request(method, path, body, {**AUTH, **(headers or {})})


def assert_4xx(reply, status=400, code=None):
    assert reply.status == status, reply
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert len(error["message"]) <= MAX_MESSAGE, len(error["message"])
    if code is not None:
        assert error["code"] == code, reply
    return error


def rss_kib(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


# -- nesting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [100, 1000, 5000, 100_000])
def test_deeply_nested_input_is_400(probed, depth):
    body = b'{"model": "tiny", "input": ' + b"[" * depth + b"]" * depth + b"}"
    assert_4xx(call(probed, "POST", "/v1/embeddings", body))


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_unknown_field_is_400(probed, depth):
    body = b'{"model": "tiny", "input": "x", "extra": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    assert_4xx(call(probed, "POST", "/v1/embeddings", body))


def test_deeply_nested_tokenize_is_400(probed):
    body = b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_4xx(call(probed, "POST", "/tokenize", body))


def test_deeply_nested_batch_create_is_400(probed):
    body = b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "24h", "metadata": ' + \
        b"[" * 5000 + b"]" * 5000 + b"}"
    assert_4xx(call(probed, "POST", "/v1/batches", body))


def upload(server, data: bytes, filename="in.jsonl"):
    boundary = "probeboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return call(server, "POST", "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_deeply_nested_jsonl_upload_is_400(probed):
    assert_4xx(upload(probed, b"[" * 100_000 + b"]" * 100_000 + b"\n"))
    assert_4xx(upload(probed, b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n"))


def test_a_deeply_nested_batch_line_fails_alone(probed):
    good = {"custom_id": "ok", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny", "input": "hi"}}
    deep_body = b'{"custom_id": "deep", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny", ' \
        b'"input": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    deep_line = b'{"custom_id": "deeper", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    data = json.dumps(good).encode() + b"\n" + deep_body + b"\n" + deep_line + b"\n"
    reply = upload(probed, data)
    assert reply.status == 200, reply
    file_id = reply.json()["id"]
    batch = call(probed, "POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                                 "completion_window": "24h"}).json()
    deadline = time.monotonic() + 60
    while batch["status"] not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = call(probed, "GET", f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = call(probed, "GET", f"/v1/files/{batch['error_file_id']}/content").body.decode().splitlines()
    assert len(errors) == 2 and all(len(e) < 5000 for e in errors)
    assert all(json.loads(e)["custom_id"] != "ok" for e in errors)


# -- encodings and query parameters ----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"model": "tiny", "input": "\xff\xfe"}',
    b'{"model": "tiny", "input": ["ok", "\xc3\x28"]}',
    b'{"model": "ti\xffny", "input": "x"}',
    b'{"model": "tiny", "input": "\xed\xa0\x80"}',  # an encoded surrogate
    b'{"model": "tiny", "input": "\\ud800"}',  # a lone surrogate escape
])
def test_invalid_utf8_and_surrogates_are_400(probed, body):
    reply = call(probed, "POST", "/v1/embeddings", body)
    assert reply.status in (200, 400), reply  # a lone escaped surrogate may be accepted as text
    if reply.status != 200:
        assert_4xx(reply)


def test_invalid_utf8_tokenize_is_400(probed):
    assert_4xx(call(probed, "POST", "/tokenize", b'{"input": "\xff"}'))
    reply = call(probed, "POST", "/tokenize", b'{"input": "\\udfff"}')
    assert reply.status in (200, 400), reply


@pytest.mark.parametrize("limit", ["%D9%A3", "%C2%B2", "1%00", "-1", "0", "1e3", "%EF%BC%91", "99999999999999999999",
                                   "1_0", "%2B10", "+10", "%2010%20", "10%20", "%0910", "0x10", ""])
def test_query_limit_is_ascii_digits_only(probed, limit):
    for path in ("/v1/files", "/v1/batches"):
        assert_4xx(call(probed, "GET", f"{path}?limit={limit}"))


@pytest.mark.parametrize("query", ["after=%FF%FE", "order=%00", "purpose=%C3%28", "limit=1&limit=%D9%A3", "%%%"])
def test_odd_query_strings_never_500(probed, query):
    for path in ("/v1/files", "/v1/batches"):
        assert call(probed, "GET", f"{path}?{query}").status in (200, 400)


def test_non_ascii_and_odd_paths_never_500(probed):
    for path in ("/v1/models/%FF", "/v1/models/%00", "/v1/files/%C3%28", "/v1/batches/%FF/cancel", "/v1/%E2%82%AC"):
        for method in ("GET", "POST", "DELETE"):
            reply = call(probed, method, path, b"{}" if method == "POST" else None)
            assert 400 <= reply.status < 500, (method, path, reply)


# -- bounded messages ---------------------------------------------------------------------------------

def test_megabyte_model_name_is_not_echoed(probed):
    reply = call(probed, "POST", "/v1/embeddings", {"model": "m" * (1 << 20), "input": "x"})
    assert_4xx(reply, 404, "model_not_found")
    assert len(reply.body) < 4000


@pytest.mark.parametrize("field,value", [("encoding_format", "e" * 100_000), ("service_tier", "s" * 100_000),
                                         ("input_type", "t" * 100_000), ("u" * 100_000, 1)],
                         ids=["encoding_format", "service_tier", "input_type", "unknown_field"])
def test_megabyte_values_are_not_echoed(probed, field, value):
    reply = call(probed, "POST", "/v1/embeddings", {"model": "tiny", "input": "x", field: value})
    assert_4xx(reply)
    assert len(reply.body) < 4000


def test_megabyte_batch_fields_are_not_echoed(probed):
    reply = call(probed, "POST", "/v1/batches", {"input_file_id": "f" * 100_000, "endpoint": "/v1/embeddings",
                                                 "completion_window": "24h"})
    assert_4xx(reply, 404)
    assert len(reply.body) < 4000
    reply = call(probed, "POST", "/v1/batches", {"input_file_id": "f", "endpoint": "e" * 100_000,
                                                 "completion_window": "24h"})
    assert_4xx(reply)
    assert len(reply.body) < 4000
    reply = call(probed, "GET", "/v1/files/" + "x" * 60_000)
    assert len(reply.body) < 4000


# -- huge inputs: cut by characters before tokenizing -------------------------------------------------

def test_a_15mb_text_is_cheap(probed):
    text = ("lorem ipsum dolor sit amet " * 600_000)[:15_000_000]
    before = rss_kib(probed)
    reply = call(probed, "POST", "/v1/embeddings", {"model": "tiny", "input": text, "truncate": True})
    assert reply.status == 200, reply
    assert reply.json()["usage"]["prompt_tokens"] == 64
    assert_4xx(call(probed, "POST", "/v1/embeddings", {"model": "tiny", "input": text}), 400,
               "context_length_exceeded")
    assert_4xx(call(probed, "POST", "/tokenize", {"model": "tiny", "input": text}), 400, "context_length_exceeded")
    assert call(probed, "POST", "/tokenize", {"model": "tiny", "input": text, "truncate": True}).status == 200
    after = rss_kib(probed)
    assert after - before < 150_000, (before, after)  # KiB: the text never becomes millions of tokens


def test_a_long_text_without_spaces_is_refused_not_guessed(probed):
    """One 5 MB word: its first max_length x 64 characters do not settle its tokens (what the
    tokenizer makes of it depends on characters the server does not read), so it is refused,
    truncate on or off, instead of embedded from a guess (engine/text/textcap.py)."""
    text = "x" * 5_000_000
    for body in ({"model": "tiny", "input": text, "truncate": True}, {"model": "tiny", "input": text}):
        reply = call(probed, "POST", "/v1/embeddings", body)
        assert_4xx(reply, 400, "context_length_exceeded")
        assert "do not settle" in reply.json()["error"]["message"]


def test_truncated_ids_equal_those_of_the_full_text(probed):
    text = " ".join(f"word{i} and more" for i in range(3000))
    short = call(probed, "POST", "/tokenize", {"model": "tiny", "input": text[:2000], "truncate": True}).json()
    full = call(probed, "POST", "/tokenize", {"model": "tiny", "input": text, "truncate": True}).json()
    assert short["data"][0]["ids"] == full["data"][0]["ids"]


def test_tokenize_has_the_embeddings_caps(probed):
    assert_4xx(call(probed, "POST", "/tokenize", {"model": "tiny", "input": ["a"] * 2049}), 400, "invalid_input")


# -- slow readers ---------------------------------------------------------------------------------------

def test_a_reader_that_never_reads_is_cut_after_the_write_timeout(probed):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", probed.port))
    request = post("/v1/embeddings", json.dumps({"model": "tiny", "input": [[5]] * 2048,
                                                 "encoding_format": "float"}).encode(),
                   extra=f"Authorization: Bearer {KEY}\r\nConnection: close\r\n")
    sock.sendall(request)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the write timeout is 1 s: the server drops it soon after
        if _open_connections(probed) <= 1:
            break
        time.sleep(0.2)
    assert _open_connections(probed) <= 1
    sock.close()


def _open_connections(server) -> float:
    import re

    metrics = server.request("GET", "/metrics").body.decode()
    return float(re.search(r"^tinyembed_open_connections (\S+)$", metrics, re.M).group(1))


def test_server_still_healthy_after_the_probes(probed):
    reply = call(probed, "POST", "/v1/embeddings", {"model": "tiny", "input": "still fine"})
    assert reply.status == 200
    assert "Traceback" not in probed.log()
    assert probed.metric("tinyembed_requests_total", route="/v1/embeddings", status="500") == 0
