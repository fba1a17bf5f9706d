"""Hypothesis on the request decoder (protocol.py) and the batch-line parser (jobs/format.py):
whatever bytes arrive, the answer is a value or an OpenAI-shaped ApiError / LineError with a
bounded message, never another exception. Seeded and derandomized: the same cases every run."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyembed.engine.text import textcap
from tinyembed.jobs import files as batch_files
from tinyembed.jobs import format as fmt
from tinyembed.server.limits import MAX_MESSAGE_CHARS
from tinyembed.server.protocol import (ApiError, EmbeddingRequest, TokenizeRequest, decode_request, error_body,
                                       parse_input)

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck),
                database=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
fields = st.sampled_from(["model", "input", "encoding_format", "dimensions", "user", "service_tier", "input_type",
                          "truncate", "stream", "x"])
requests = st.dictionaries(fields, json_values, max_size=6).map(lambda d: json.dumps(d).encode())
nested = st.integers(1, 20_000).map(lambda n: b'{"model": "m", "input": ' + b"[" * n + b"]" * n + b"}")
garbage = st.binary(max_size=200)
bodies = requests | nested | garbage | st.builds(lambda a, b: a + b, requests, garbage)


def bounded(exc: ApiError) -> None:
    assert 400 <= exc.status < 500
    assert len(exc.message) <= 2 * MAX_MESSAGE_CHARS
    body = json.loads(error_body(exc.status, exc.code, exc.message, exc.param))
    assert len(body["error"]["message"]) <= MAX_MESSAGE_CHARS + 40


@FUZZ
@given(bodies)
def test_embedding_request_decoder_never_raises_anything_else(body):
    try:
        req = decode_request(body, EmbeddingRequest)
        parse_input(req.input)
    except ApiError as exc:
        bounded(exc)


@FUZZ
@given(bodies)
def test_tokenize_request_decoder_never_raises_anything_else(body):
    try:
        decode_request(body, TokenizeRequest)
    except ApiError as exc:
        bounded(exc)


lines = st.dictionaries(st.sampled_from(["custom_id", "method", "url", "body", "x"]), json_values, max_size=5).map(
    lambda d: json.dumps(d).encode())
deep_lines = st.integers(1, 20_000).map(lambda n: b'{"custom_id": "c", "body": ' + b"[" * n + b"]" * n + b"}")


@FUZZ
@given(lines | deep_lines | garbage)
def test_batch_line_parser_fails_a_line_alone(raw):
    try:
        parsed = fmt.parse_line(raw, 7)
    except fmt.LineError as exc:
        assert len(exc.message) <= 2 * MAX_MESSAGE_CHARS
        return
    item = fmt.LineRequest(7, parsed.custom_id)
    fmt.validate_body(item, bytes(parsed.body), lambda model: None, 2048, False)  # never raises
    assert item.error is None or 400 <= item.error.status < 500


@FUZZ
@given(st.lists(lines | deep_lines | garbage, max_size=5))
def test_jsonl_upload_check_is_a_400_or_accepts(parts):
    try:
        batch_files.check_jsonl(b"\n".join(parts))
    except ApiError as exc:
        bounded(exc)


@FUZZ
@given(st.text(max_size=600), st.integers(1, 500))
def test_cut_is_a_prefix_of_at_most_limit_characters(text, limit):
    cut = textcap.cut(text, limit)
    assert text.startswith(cut) and len(cut) == min(limit, len(text))
