"""The batch file formats (OpenAI's), shared by the Batches API and `tinyembed embed`:

    input   {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {...}}
    output  {"id": "batch_req_..", "custom_id": "a",
             "response": {"status_code": 200, "request_id": "..", "body": {...}}, "error": null}
    error   the same shape: a request the API refused has a response with its error body
            (e.g. 404 model_not_found); a line that is not a request at all (bad JSON, wrong
            url) has "response": null and "error": {"code", "message"}.

A line's body is an /v1/embeddings request, validated by the same Structs and rules as the
HTTP route (protocol.py), so a batch line fails exactly where the live request would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np
from msgspec import Raw, Struct

from tinyembed.common.errors import InputError
from tinyembed.server.limits import echo, shorten
from tinyembed.server.protocol import (ApiError, EmbeddingRequest, check_no_prompt_for_ids, decode_request,
                                       encode_embeddings, error_body, parse_input)

ENDPOINT = "/v1/embeddings"
ENDPOINTS = (ENDPOINT, "/embeddings")


class InputLine(Struct, forbid_unknown_fields=True):
    custom_id: str
    method: str
    url: str
    body: Raw


class LineError(Exception):
    """The line is not a usable request: it fails alone with {"code", "message"}."""

    def __init__(self, code: str, message: str, param: str | None = None, custom_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param, self.custom_id = code, message, param, custom_id


_line_decoder = msgspec.json.Decoder(InputLine)
_loose_decoder = msgspec.json.Decoder()


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line, if it has a readable one (for error lines and duplicates)."""
    try:
        value = _loose_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    cid = value.get("custom_id") if isinstance(value, dict) else None
    return cid if isinstance(cid, str) else None


def parse_line(raw: bytes, line: int) -> InputLine:
    try:
        parsed = _line_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise LineError("invalid_request", f"Line {line}: {shorten(str(exc))}. Each line must be an object with "
                        f"custom_id, method, url and body.", custom_id=custom_id_of(raw)) from None
    except msgspec.DecodeError as exc:
        raise LineError("invalid_json_line", f"Line {line} is not valid JSON ({shorten(str(exc))}).") from None
    except RecursionError:  # msgspec's guard against deep nesting: this line fails alone
        raise LineError("invalid_json_line", f"Line {line} is nested too deeply.") from None
    if not parsed.custom_id:
        raise LineError("invalid_request", f"Line {line}: custom_id is empty.", "custom_id")
    if parsed.method.upper() != "POST":
        raise LineError("invalid_method", f"Line {line}: method must be POST, not {echo(parsed.method)!r}.", "method",
                        parsed.custom_id)
    if parsed.url not in ENDPOINTS:
        raise LineError("invalid_url", f"Line {line}: url {echo(parsed.url)!r} is not this batch's endpoint "
                        f"{ENDPOINT!r}.", "url", parsed.custom_id)
    if bytes(parsed.body).lstrip()[:1] != b"{":
        raise LineError("invalid_request", f"Line {line}: body must be a JSON object (an /v1/embeddings request).",
                        "body", parsed.custom_id)
    return parsed


# -- one line's embeddings request ------------------------------------------------------------------

@dataclass
class LineRequest:
    line: int
    custom_id: str
    request: EmbeddingRequest | None = None
    engine: object = None
    texts: list[str] | None = None
    id_arrays: list[np.ndarray] | None = None
    truncate: bool = False
    sequences: list[np.ndarray] = field(default_factory=list)
    tokens: int = 0
    error: ApiError | None = None


def validate_body(item: LineRequest, body: bytes, find_engine, max_inputs: int, auto_truncate: bool) -> None:
    """Decode and check the body like the HTTP route does; `find_engine(model)` returns the
    engine or raises ApiError 404. Sets item.error instead of raising."""
    try:
        req = item.request = decode_request(body, EmbeddingRequest)
        item.engine = engine = find_engine(req.model)
        if engine.info.task != "embeddings":  # issue 29: a reranker has no embeddings
            raise ApiError(400, "invalid_request", f"Model '{req.model}' is a reranker; a batch line asks for "
                           "embeddings.", "model")
        if req.dimensions is not None and req.dimensions > engine.info.dimensions:
            raise ApiError(400, "invalid_request", f"'dimensions' must be between 1 and {engine.info.dimensions} "
                           f"for model '{req.model}'.", "dimensions")
        item.texts, item.id_arrays = parse_input(req.input)
        count = len(item.texts if item.texts is not None else item.id_arrays)
        if count > max_inputs:
            raise ApiError(400, "invalid_input", f"'input' has {count} items; the maximum is {max_inputs}.", "input")
        if item.id_arrays is not None:
            check_no_prompt_for_ids(req)
        item.truncate = auto_truncate if req.truncate is None else req.truncate
    except ApiError as exc:
        item.error = exc


def tokenize(items: list[LineRequest], max_tokens: int) -> None:
    """Token ids for every valid item. Texts that share a tokenizer and options are encoded in
    one call (fast: the tokenizer parallelizes a batch); a group with an over-long text falls
    back to item by item, so only that item fails."""
    groups: dict[tuple, list[LineRequest]] = {}
    for item in items:
        if item.error is not None:
            continue
        if item.texts is None:
            _tokenize_one(item)
        else:
            key = (id(item.engine), item.request.input_type, item.request.prompt_name, item.truncate)
            groups.setdefault(key, []).append(item)
    for group in groups.values():
        tokenizer = group[0].engine.tokenizer
        texts = [t for item in group for t in item.texts]
        try:
            request = group[0].request
            sequences = tokenizer.encode(texts, group[0].truncate, request.input_type, request.prompt_name)
        except InputError:
            for item in group:
                _tokenize_one(item)
            continue
        at = 0
        for item in group:
            item.sequences = sequences[at:at + len(item.texts)]
            at += len(item.texts)
    for item in items:
        if item.error is None:
            item.tokens = sum(len(s) for s in item.sequences)
            if item.tokens > max_tokens:
                item.error = ApiError(400, "invalid_input", f"This request has {item.tokens} tokens; the maximum "
                                      f"is {max_tokens} per request.", "input")


def _tokenize_one(item: LineRequest) -> None:
    tokenizer = item.engine.tokenizer
    try:
        if item.texts is not None:
            item.sequences = tokenizer.encode(item.texts, item.truncate, item.request.input_type,
                                              item.request.prompt_name)
        else:
            item.sequences = tokenizer.check_ids(item.id_arrays, item.truncate)
    except InputError as exc:
        item.error = ApiError(400, exc.code, str(exc), exc.param)


def response_body(item: LineRequest, vectors: np.ndarray, tier: str) -> bytes:
    req = item.request
    vectors = item.engine.with_dimensions(vectors, req.dimensions)
    vectors = item.engine.quantize(vectors, req.output_dtype or "float", req.dimensions)  # issue 29
    return encode_embeddings(vectors, req.encoding_format == "base64", req.model, item.tokens, tier)


# -- output lines ---------------------------------------------------------------------------------

class _Response(Struct):
    status_code: int
    request_id: str
    body: Raw


class _Error(Struct):
    code: str
    message: str


class _OutputLine(Struct):
    id: str
    custom_id: str | None
    response: _Response | None
    error: _Error | None


_encode = msgspec.json.Encoder().encode


def request_id(tag: str, line: int) -> str:
    """Deterministic per (batch, line): a line redone after a crash gets the same ids."""
    return f"{tag}_{line}"


def ok_line(tag: str, line: int, custom_id: str, body: bytes) -> bytes:
    response = _Response(200, request_id("req_" + tag, line), Raw(body))
    return _encode(_OutputLine(request_id("batch_req_" + tag, line), custom_id, response, None)) + b"\n"


def refused_line(tag: str, line: int, custom_id: str, exc: ApiError) -> bytes:
    """A request the API answered with an error status: the error body, as the route sends it."""
    response = _Response(exc.status, request_id("req_" + tag, line),
                         Raw(error_body(exc.status, exc.code, exc.message, exc.param)))
    return _encode(_OutputLine(request_id("batch_req_" + tag, line), custom_id, response, None)) + b"\n"


def failed_line(tag: str, line: int, custom_id: str | None, code: str, message: str) -> bytes:
    """A line that never became a request (or was never run: cancelled, expired)."""
    return _encode(_OutputLine(request_id("batch_req_" + tag, line), custom_id, None, _Error(code, message))) + b"\n"


def split_lines(data: bytes, first_line: int):
    """(line number, bytes) for each non-blank line of a block that starts at first_line."""
    for offset, raw in enumerate(data.split(b"\n")):
        raw = raw.strip()
        if raw:
            yield first_line + offset, raw
