"""schemathesis against /openapi.json of a real server (API keys and the Files/Batches API on):
every generated request, valid or not, gets a status the document lists, a body that matches
the listed schema, and never a 5xx; a request the document calls invalid is refused (4xx).
Bounded and reproducible: a fixed number of examples per operation, derandomized."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from conftest import TINY_MODEL, start_server  # noqa: E402

KEY = "k-fuzz"
RERANKER = "tests/fixtures/tiny-reranker-bert"  # /v1/rerank and /rerank are fuzzed too (issue 29)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.negative_data_rejection]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    proc = start_server(tmp_path_factory, "fuzzed", [
        "--model", f"tiny={TINY_MODEL}", "--model", f"rr={RERANKER}", "--api-key", f"{KEY}:fuzz", "--data-dir",
        str(tmp_path_factory.mktemp("fuzz-data")), "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_server_agrees_with_its_openapi_document(case, fuzzed):
    case.call_and_validate(base_url=fuzzed.url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)


def test_server_survived_the_fuzzing(fuzzed):
    assert fuzzed.request("GET", "/health").status == 200
    assert "Traceback" not in fuzzed.log()


def test_the_document_requires_the_key_and_lists_the_limits(fuzzed):
    doc = fuzzed.request("GET", "/openapi.json").json()
    assert doc["security"] == [{"bearer": []}]
    for route, methods in doc["paths"].items():
        for method, op in methods.items():
            open_route = route in ("/health", "/ready", "/metrics", "/openapi.json", "/docs")
            assert op["security"] == ([] if open_route else [{"bearer": []}]), (route, method)
            assert ("401" in op["responses"]) != open_route, (route, method)
            assert {"400", "408", "413", "431", "503"} <= set(op["responses"]), (route, method)
            assert "429" not in op["responses"]  # no rate limits on this server
    request = doc["components"]["schemas"]["EmbeddingRequest"]
    assert request["properties"]["model"]["enum"] == ["tiny"]
    shapes = request["properties"]["input"]["anyOf"]
    assert all(s.get("maxItems") == 2048 and s.get("minItems") == 1 for s in shapes[1:])
    assert shapes[2]["items"]["maximum"] == 699  # the tiny model's vocabulary
    assert request["properties"]["dimensions"]["anyOf"][0]["maximum"] == 32
    assert "415" in doc["paths"]["/v1/embeddings"]["post"]["responses"]
