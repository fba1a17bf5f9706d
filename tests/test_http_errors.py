"""curl-style tests of /v1/embeddings validation: every 400 code, 404, 405, 413, 415, each in the
OpenAI error envelope. The last test checks the server still answers correctly after all of it.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from conftest import RawClient, assert_same_vectors, post

MODEL = "all-MiniLM-L6-v2"


def embed(server, body, **headers):
    return server.request("POST", "/v1/embeddings", body, headers)


def assert_error(reply, status: int, code: str, param="unset"):
    assert reply.status == status, reply
    assert set(reply.json()) == {"error"}
    error = reply.error
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, reply
    assert error["message"] and "Traceback" not in error["message"]
    if param != "unset":
        assert error["param"] == param, reply
    return error


# -- 400 invalid_request: the body is not what the schema says ----------------------------------------

def test_malformed_json(server):
    error = assert_error(embed(server, b'{"model": "all-MiniLM-L6-v2", "input": [1,'), 400, "invalid_request")
    assert "JSON" in error["message"]
    assert_error(embed(server, b"\xff\xfe not json"), 400, "invalid_request")
    assert_error(embed(server, b""), 400, "invalid_request")


@pytest.mark.parametrize("body,param", [
    ([1, 2], None),  # not an object
    ({"model": 1, "input": "x"}, "model"),
    ({"model": MODEL, "input": 5}, "input"),
    ({"model": MODEL, "input": None}, "input"),
    ({"model": MODEL, "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": MODEL, "input": "x", "dimensions": 385}, "dimensions"),
    ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": MODEL, "input": "x", "truncate": "yes"}, "truncate"),
    ({"model": MODEL, "input": "x", "user": "u" * 257}, "user"),
    ({"model": MODEL, "input": "x", "service_tier": "turbo"}, "service_tier"),
    ({"model": MODEL, "input": "x", "input_type": "passage"}, "input_type"),
    ({"model": MODEL, "input": [101, 102], "input_type": "query"}, "input_type"),
    ({"input": "x"}, "model"),
    ({"model": MODEL}, "input"),
])
def test_wrong_types_and_values(server, body, param):
    assert_error(embed(server, body), 400, "invalid_request", param)


@pytest.mark.parametrize("value", [[["a"]], [[["a"]]], [[[1, 2]]], ["a", 1], [1.5], [True], [[1], "a"], {"a": 1}])
def test_nested_or_mixed_arrays(server, value):
    error = assert_error(embed(server, {"model": MODEL, "input": value}), 400, "invalid_request", "input")
    assert "array of strings" in error["message"]


def test_user_of_256_chars_is_accepted(server):
    assert embed(server, {"model": MODEL, "input": "x", "user": "u" * 256}).status == 200


# -- 400 invalid_input / unknown_parameter / context_length_exceeded ---------------------------------------

@pytest.mark.parametrize("value", ["", [], [""], ["ok", ""], [[]], [[101], []]])
def test_empty_inputs(server, value):
    assert_error(embed(server, {"model": MODEL, "input": value}), 400, "invalid_input", "input")


def test_2049_inputs_are_too_many_and_2048_are_fine(server):
    error = assert_error(embed(server, {"model": "tiny", "input": ["a"] * 2049}), 400, "invalid_input", "input")
    assert "2048" in error["message"]
    reply = embed(server, {"model": "tiny", "input": ["a"] * 2048})
    assert reply.status == 200 and len(reply.json()["data"]) == 2048


@pytest.mark.parametrize("ids", [[30522], [101, -1], [2 ** 40], [2 ** 70]])
def test_token_ids_out_of_range(server, ids):
    error = assert_error(embed(server, {"model": MODEL, "input": ids}), 400, "invalid_input", "input")
    assert "vocabulary" in error["message"]


@pytest.mark.parametrize("name", ["stream", "dimension", "encodingFormat", "extra"])
def test_unknown_fields_are_named(server, name):
    error = assert_error(embed(server, {"model": MODEL, "input": "x", name: 1}), 400, "unknown_parameter", name)
    assert name in error["message"]


def test_over_long_text_with_and_without_truncation(server, minilm):
    text = "word " * 400
    error = assert_error(embed(server, {"model": MODEL, "input": ["short", text]}), 400,
                         "context_length_exceeded", "input")
    assert "256" in error["message"] and "truncate" in error["message"]
    reply = embed(server, {"model": MODEL, "input": ["short", text], "truncate": True, "encoding_format": "float"})
    assert reply.status == 200
    body = reply.json()
    assert body["usage"]["prompt_tokens"] == 3 + 256
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert_same_vectors(got, minilm.embed_texts(["short", text], truncate=True))


def test_over_long_token_ids_with_and_without_truncation(server, minilm):
    ids = [2088] * 300
    assert_error(embed(server, {"model": MODEL, "input": ids}), 400, "context_length_exceeded", "input")
    reply = embed(server, {"model": MODEL, "input": ids, "truncate": True})
    assert reply.status == 200 and reply.json()["usage"]["total_tokens"] == 256


# -- 404, 405, 413, 415 ---------------------------------------------------------------------------------

def test_unknown_model(server):
    error = assert_error(embed(server, {"model": "gpt-5", "input": "x"}), 404, "model_not_found", "model")
    assert MODEL in error["message"]  # it lists what is served
    assert_error(server.request("GET", "/v1/models/gpt-5"), 404, "model_not_found")


@pytest.mark.parametrize("method,path", [("GET", "/"), ("POST", "/v1/embedding"), ("GET", "/v2/models"),
                                         ("GET", "/v1/models/"), ("DELETE", "/nope")])
def test_unknown_routes(server, method, path):
    assert_error(server.request(method, path), 404, "not_found")


@pytest.mark.parametrize("method,path,allow", [("GET", "/v1/embeddings", "POST"), ("PUT", "/v1/models", "GET, HEAD"),
                                               ("POST", "/health", "GET, HEAD"), ("GET", "/tokenize", "POST")])
def test_wrong_method(server, method, path, allow):
    reply = server.request(method, path)
    assert_error(reply, 405, "method_not_allowed")
    assert reply.headers["allow"] == allow


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_unsupported_media_type(server, content_type):
    body = json.dumps({"model": MODEL, "input": "x"}).encode()
    assert_error(embed(server, body, **{"Content-Type": content_type}), 415, "unsupported_media_type")


def test_json_content_types_are_accepted(server):
    body = json.dumps({"model": "tiny", "input": "x"}).encode()
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert embed(server, body, **{"Content-Type": content_type}).status == 200
    client = RawClient(server.port)  # and no Content-Type at all
    client.send(post("/v1/embeddings", body, content_type=""))
    assert client.response().status == 200
    client.close()


def test_20_mb_body_is_refused_before_it_is_read(server):
    client = RawClient(server.port, timeout=10)
    client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 20000000\r\n\r\n")  # headers only: the answer must not wait for the body
    reply = client.response()
    assert_error(reply, 413, "payload_too_large")
    assert reply.headers["connection"] == "close"
    assert client.closed_by_server()
    client.close()


def test_20_mb_chunked_body_is_refused(server):
    client = RawClient(server.port, timeout=10)
    client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))
    sent = 0
    try:
        for _ in range(20):  # 20 MiB, stopping once the server has answered and closed
            client.send(chunk)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent >= 16  # the default limit is 16 MiB: it read that much before refusing
    assert_error(client.response(), 413, "payload_too_large")
    client.close()


# -- and the server is still fine --------------------------------------------------------------------------

def test_server_still_answers_correctly_afterwards(server, minilm):
    texts = ["after all those errors", "the server still embeds"]
    expected = minilm.embed_texts(texts)
    floats = embed(server, {"model": MODEL, "input": texts, "encoding_format": "float"})
    b64 = embed(server, {"model": MODEL, "input": texts, "encoding_format": "base64"})
    assert floats.status == b64.status == 200
    assert_same_vectors(np.array([d["embedding"] for d in floats.json()["data"]], np.float32), expected)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64.json()["data"]])
    assert_same_vectors(decoded, expected)
    assert server.request("GET", "/ready").status == 200
