"""/metrics read by Prometheus' own exposition parser (prometheus_client), as a scraper would.

The server is started with a model whose name holds a quote, a backslash and a newline, so
the `model` label of the scheduler's series must be escaped for the parser to read it back."""

from __future__ import annotations

import math
import re

import pytest

from conftest import TINY_MODEL, start_server

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is not installed (.[test])")

WEIRD = 'we"ird\\name\nline two'  # quote, backslash, newline


@pytest.fixture(scope="module")
def weird_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "weird-metrics", ["--model", f"{WEIRD}={TINY_MODEL}"])
    yield proc
    assert proc.stop() == 0, proc.log()


def scrape(server) -> tuple[str, dict]:
    reply = server.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = reply.body.decode()
    return text, {f.name: f for f in parser.text_string_to_metric_families(text)}


def test_every_family_parses_with_help_and_type(weird_server):
    assert weird_server.request("POST", "/v1/embeddings", {"model": WEIRD, "input": ["a b c", "d"]}).status == 200
    assert weird_server.request("GET", "/no/such/route").status == 404
    text, families = scrape(weird_server)

    helps = re.findall(r"^# HELP (\S+) (.+)$", text, re.M)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(helps) == len(types) == len({n for n, _ in types}) == len(families) > 10  # one of each per family
    assert {n for n, _ in helps} == {n for n, _ in types}
    for family in families.values():
        assert family.type in ("counter", "gauge", "histogram"), family
        assert family.documentation, f"{family.name} has no help text"
        assert family.samples or family.type in ("counter", "histogram"), f"{family.name} has no samples"
        for sample in family.samples:
            assert math.isfinite(sample.value) and (family.type == "gauge" or sample.value >= 0), sample
    # every sample line belongs to a declared family: nothing the parser had to invent as "unknown"
    sample_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert sum(len(f.samples) for f in families.values()) == len(sample_lines)


def test_histograms_are_cumulative_and_end_in_count(weird_server):
    assert weird_server.request("POST", "/v1/embeddings", {"model": WEIRD, "input": "hello"}).status == 200
    _, families = scrape(weird_server)
    histograms = [f for f in families.values() if f.type == "histogram"]
    assert histograms
    for family in histograms:
        series: dict[tuple, dict] = {}
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            entry = series.setdefault(labels, {"buckets": []})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            else:
                entry[s.name.rsplit("_", 1)[1]] = s.value
        for labels, entry in series.items():
            bounds = [b for b, _ in entry["buckets"]]
            counts = [c for _, c in entry["buckets"]]
            assert bounds == sorted(bounds) and bounds[-1] == math.inf, (family.name, labels)
            assert counts == sorted(counts), (family.name, labels)  # cumulative
            assert counts[-1] == entry["count"] and entry["sum"] >= 0, (family.name, labels)


def completed_requests(families) -> list[float]:
    return [s.value for s in families["tinyembed_usage_requests"].samples if s.labels["model"] == WEIRD]


def test_a_model_name_with_quote_backslash_newline_is_escaped(weird_server):
    before = completed_requests(scrape(weird_server)[1]) or [0.0]
    assert weird_server.request("POST", "/v1/embeddings", {"model": WEIRD, "input": "x y"}).status == 200
    text, families = scrape(weird_server)
    assert '\\"' in text and "\\\\" in text and "\\n" in text  # escaped on the wire...
    models = {s.labels.get("model") for f in families.values() for s in f.samples} - {None}
    assert models == {WEIRD}  # ...and read back by the parser exactly as named
    assert completed_requests(families) == [before[0] + 1]
