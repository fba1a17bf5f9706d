"""What a client without a key learns (issue 24, class 7): on routes that need a key, a missing
or wrong key is 401 before a wrong method is 405 (the methods of a route are not probed
anonymously; the paths themselves are public in /openapi.json). /docs carries headers that keep
it from being framed or loading anything but its own script and style.
"""

from __future__ import annotations

import pytest

KEY = "k-main-secret"  # conftest.guarded_server

KEYED = [("PUT", "/v1/embeddings"), ("GET", "/v1/embeddings"), ("DELETE", "/v1/models"), ("POST", "/v1/models"),
         ("PATCH", "/v1/models/tiny"), ("GET", "/tokenize"), ("PUT", "/embeddings")]
OPEN = [("POST", "/health"), ("DELETE", "/ready"), ("PUT", "/metrics"), ("POST", "/openapi.json"), ("POST", "/docs")]


@pytest.mark.parametrize("method, path", KEYED)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + "x" * 10])
def test_without_a_valid_key_a_wrong_method_is_401(guarded_server, method, path, auth):
    reply = guarded_server.request(method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                   {"Authorization": auth} if auth else {})
    assert reply.status == 401 and reply.error["code"] == "invalid_api_key", reply
    assert "allow" not in reply.headers and method not in reply.error["message"]


@pytest.mark.parametrize("method, path", KEYED)
def test_with_the_key_a_wrong_method_is_405(guarded_server, method, path):
    reply = guarded_server.request(method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                   {"Authorization": f"Bearer {KEY}"})
    assert reply.status == 405 and reply.error["code"] == "method_not_allowed", reply
    assert reply.headers["allow"]


@pytest.mark.parametrize("method, path", OPEN)
def test_open_routes_answer_405_to_anyone(guarded_server, method, path):
    reply = guarded_server.request(method, path, b"{}" if method in ("POST", "PUT") else None)
    assert reply.status == 405 and reply.headers["allow"]


def test_an_unknown_path_is_404_to_anyone(guarded_server):
    assert guarded_server.request("GET", "/v1/nothing-here").status == 404


def test_docs_page_security_headers(guarded_server):
    reply = guarded_server.request("GET", "/docs")
    assert reply.status == 200
    policy = dict(part.strip().split(" ", 1) for part in reply.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["script-src"].startswith("'sha256-")
    assert "unsafe-inline" not in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
