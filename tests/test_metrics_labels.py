"""/metrics never lets a reader recover an API key (issue 24, class 4).

Usage is labelled per key by an HMAC under a per-server secret (server/auth.py KeyLabels), not by
an unsalted hash that a dictionary reverses; the same label names the key in the access log.
`--metrics-key` puts /metrics behind its own Bearer key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import pytest

from conftest import TINY_MODEL, start_server
from tinyembed.server.auth import KeyLabels, fingerprint

SHORT_KEY = "k1"  # a key a dictionary finds at once
SECRET = "label-secret-for-tests"
METRICS_KEY = "scrape-only"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    proc = start_server(tmp_path_factory, "labels", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", SHORT_KEY, "--api-key", "k2:team",
        "--metrics-label-secret", SECRET, "--log-format", "json"])
    yield proc
    assert proc.stop() == 0, proc.log()


def usage_labels(metrics: str) -> set[str]:
    return set(re.findall(r'tinyembed_usage_requests_total\{key="([^"]*)"', metrics))


def test_labels_are_hmacs_under_the_servers_secret():
    labels, other = KeyLabels("s1"), KeyLabels("s2")
    name = fingerprint("k1")
    assert labels(name) == labels(name) == "key-" + hmac.new(b"s1", name.encode(), hashlib.sha256).hexdigest()[:12]
    assert labels(name) != other(name) and labels(name) != name
    assert labels("project:team").startswith("project-") and "team" not in labels("project:team")
    assert labels("client:127.0.0.1").startswith("client-") and "127" not in labels("client:127.0.0.1")
    assert labels(None) is None
    assert KeyLabels()(name) != KeyLabels()(name)  # no secret given: a random one per server


def test_anonymous_metrics_show_no_recoverable_key(labelled):
    for key in (SHORT_KEY, "k2"):
        reply = labelled.request("POST", "/v1/embeddings", {"model": "tiny", "input": "hi"},
                                 {"Authorization": f"Bearer {key}"})
        assert reply.status == 200
    metrics = labelled.request("GET", "/metrics").body.decode()  # no key: anyone can read this
    labels = usage_labels(metrics)
    assert len(labels) == 2, metrics
    guesses = {"".join(p) for p in [(a, b) for a in "abcdefghijklmnopqrstuvwxyz" for b in "0123456789"]}
    unsalted = {fingerprint(g) for g in guesses} | {hashlib.sha256(g.encode()).hexdigest()[:12] for g in guesses}
    assert not labels & unsalted and not any(label.endswith(u[-12:]) for label in labels for u in unsalted)
    mine = KeyLabels(SECRET)
    assert labels == {mine(fingerprint(SHORT_KEY)), mine(fingerprint("k2"))}  # the operator can tell them apart
    assert SHORT_KEY not in "".join(labels)


def test_the_access_log_uses_the_same_label(labelled):
    labelled.request("GET", "/v1/models", headers={"Authorization": f"Bearer {SHORT_KEY}"})
    logged = [json.loads(line) for line in labelled.log().splitlines() if line.startswith("{")]
    keys = {entry.get("key") for entry in logged if entry.get("path") == "/v1/models"}
    assert keys == {KeyLabels(SECRET)(fingerprint(SHORT_KEY))}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    proc = start_server(tmp_path_factory, "metrics-key", [
        "--model", f"tiny={TINY_MODEL}", "--api-key", SHORT_KEY, "--metrics-key", METRICS_KEY, "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.mark.parametrize("auth, status", [(None, 401), (SHORT_KEY, 401), ("wrong", 401), (METRICS_KEY, 200)])
def test_metrics_key_guards_metrics(scraped, auth, status):
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    reply = scraped.request("GET", "/metrics", headers=headers)
    assert reply.status == status
    if status == 401:
        assert reply.error["code"] == "invalid_api_key" and METRICS_KEY not in reply.body.decode()
    assert scraped.request("GET", "/health").status == 200  # the probes stay open


def test_the_metrics_key_opens_nothing_else(scraped):
    reply = scraped.request("GET", "/v1/models", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert reply.status == 401
