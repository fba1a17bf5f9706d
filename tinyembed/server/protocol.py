"""The OpenAI wire format: msgspec Structs for every request and response, the error envelope,
and the validation rules of the HTTP API (see DESIGN.md "HTTP API").

Decoders and encoders are built once at import. Request Structs forbid unknown fields, so a
typo (or `stream`) is a 400 `unknown_parameter` naming it instead of being silently dropped.
"""

from __future__ import annotations

import base64
import re
from http import HTTPStatus
from typing import Annotated, Literal, Union

import msgspec
import numpy as np
from msgspec import Meta, Raw, Struct

from tinyembed.server.limits import MAX_ECHO_CHARS, echo, shorten

# -- requests ------------------------------------------------------------------------------


class EmbeddingRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    # str | list[str] | list[int] | list[list[int]]: msgspec cannot decode a union of several
    # array types, so `input` is kept raw and classified by `parse_input`.
    input: Raw
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    # extensions
    input_type: Literal["query", "document"] | None = None
    prompt_name: Annotated[str, Meta(max_length=256)] | None = None  # a prompt of config_sentence_transformers.json
    truncate: bool | None = None
    # issue 29: quantized outputs (engine/quantize.py), Voyage's name and values
    output_dtype: Literal["float", "int8", "uint8", "binary", "ubinary"] | None = None


class TokenizeRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    input: Union[str, list[str]]
    model: str | None = None  # the first served model when absent
    input_type: Literal["query", "document"] | None = None
    prompt_name: Annotated[str, Meta(max_length=256)] | None = None
    truncate: bool | None = None


# -- responses -----------------------------------------------------------------------------


class Embedding(Struct, kw_only=True):
    object: str = "embedding"
    index: int
    embedding: Union[list[float], str]  # floats (integers for int8/uint8/binary), or base64 of the bytes


class Usage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: Usage
    service_tier: str


class Quantization(Struct, kw_only=True):
    """issue 29: what `output_dtype` int8/uint8 use (engine/quantize.py)."""

    output_dtypes: list[str]
    calibration_corpus: str  # the shipped corpus and its hash
    calibration_texts: int
    int8_ranges: list[list[float]]  # [[min per dimension], [max per dimension]] at the native width


class ModelCard(Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "tinyembed"
    root: str  # the model an alias points at
    dimensions: int
    max_input_tokens: int
    device: str = "cpu"
    kernels: str = ""  # "c" or "numpy" on the CPU (TINYEMBED_CPU_KERNELS), "cuda" on a GPU
    supported_features: list[str] = msgspec.field(default_factory=lambda: ["embeddings"])
    family: str | None = None  # the architecture: bert, xlmr, qwen3, qwen2, mistral, gemma2
    prompts: list[str] = msgspec.field(default_factory=list)  # names usable as `prompt_name`
    quantization: Quantization | None = None  # issue 29: embedding models; None for rerankers


class ModelList(Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


class Tokens(Struct, kw_only=True):
    object: str = "tokens"
    index: int
    ids: list[int]
    tokens: list[str]


class TokenizeResponse(Struct, kw_only=True):
    object: str = "list"
    data: list[Tokens]
    model: str
    usage: Usage


class Status(Struct, kw_only=True):
    status: str
    models: list[str] = msgspec.field(default_factory=list)


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Struct):
    error: ErrorDetail


REQUEST_TYPES = (EmbeddingRequest, TokenizeRequest)
RESPONSE_TYPES = (EmbeddingResponse, ModelList, ModelCard, TokenizeResponse, Status, ErrorResponse)

# -- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    """An error a client sees, already in OpenAI's terms. `headers` adds e.g. Retry-After."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500 or status == 408:
        return "server_error"
    return "invalid_request_error"


_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def error_body(status: int, code: str, message: str, param: str | None = None) -> bytes:
    # Bounded: a message or param never echoes megabytes of a client's input back.
    return encode(ErrorResponse(ErrorDetail(shorten(message), error_type(status), shorten(param, MAX_ECHO_CHARS),
                                            code)))


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# -- decoding with OpenAI-style errors ---------------------------------------------------------

_decoders = {t: msgspec.json.Decoder(t) for t in REQUEST_TYPES}
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`")
_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


def decode_request(body: bytes, kind: type):
    try:
        decoder = _decoders.get(kind) or _decoders.setdefault(kind, msgspec.json.Decoder(kind))  # e.g. rerank's
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_request", f"We could not parse the JSON body of your request ({shorten(str(exc))}). "
                       "Send a JSON object with Content-Type: application/json.") from None
    except RecursionError:  # msgspec's guard against deep nesting (~1000 levels)
        raise too_deep() from None


def too_deep() -> ApiError:
    return ApiError(400, "invalid_request", "The JSON body is nested too deeply; no request needs more than a few "
                    "levels.")


def validation_error(text: str) -> ApiError:
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        name = unknown.group(1)
        return ApiError(400, "unknown_parameter", f"Unrecognized request argument supplied: {echo(name)}",
                        param=echo(name))
    missing = _MISSING_FIELD.search(text)
    if missing:
        name = missing.group(1)
        return ApiError(400, "invalid_request", f"Missing required parameter: '{name}'.", param=name)
    at = _AT_FIELD.search(text)
    return ApiError(400, "invalid_request", f"Invalid request: {shorten(text)}", param=at.group(1) if at else None)


# -- `input`: four accepted shapes -------------------------------------------------------------

_as_text = msgspec.json.Decoder(str)
_as_texts = msgspec.json.Decoder(list[str])
_as_ids = msgspec.json.Decoder(list[int])
_as_id_lists = msgspec.json.Decoder(list[list[int]])
INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"


def parse_input(raw: Raw) -> tuple[list[str] | None, list[np.ndarray] | None]:
    """-> (texts, None) or (None, token-id arrays). Empty inputs are `invalid_input`."""
    try:
        return _parse_input(memoryview(raw))  # a view: a 15 MB input is not copied once more
    except msgspec.DecodeError as exc:  # e.g. invalid UTF-8 inside a string
        raise ApiError(400, "invalid_request", f"'input' could not be decoded ({shorten(str(exc))}).", "input") from None
    except RecursionError:
        raise too_deep() from None


def _parse_input(data: memoryview) -> tuple[list[str] | None, list[np.ndarray] | None]:
    if data[:1] == b'"':
        text = _as_text.decode(data)
        if not text:
            raise ApiError(400, "invalid_input", "'input' is an empty string; send at least one character.", "input")
        return [text], None
    for decoder in (_as_texts, _as_ids, _as_id_lists):
        try:
            value = decoder.decode(data)
        except msgspec.ValidationError:
            continue
        if not value:
            raise ApiError(400, "invalid_input", "'input' is an empty list; send at least one input.", "input")
        if decoder is _as_texts:
            for i, text in enumerate(value):
                if not text:
                    raise ApiError(400, "invalid_input", f"input[{i}] is an empty string.", "input")
            return value, None
        lists = [value] if decoder is _as_ids else value
        return None, [_id_array(i, ids) for i, ids in enumerate(lists)]
    raise ApiError(400, "invalid_request", f"'input' must be {INPUT_SHAPES}.", "input")


def _id_array(index: int, ids: list[int]) -> np.ndarray:
    try:
        return np.asarray(ids, dtype=np.int64)
    except OverflowError:  # ids beyond int64: out of any vocabulary
        raise ApiError(400, "invalid_input", f"input[{index}] has a token id outside this model's vocabulary.",
                       "input") from None


def check_no_prompt_for_ids(req: EmbeddingRequest) -> None:
    """Token-id inputs are used exactly as given: no prompt can apply to them."""
    for name in ("input_type", "prompt_name"):
        if getattr(req, name) is not None:
            raise ApiError(400, "invalid_request", f"'{name}' applies to text inputs; token ids are used "
                           "exactly as given.", name)


def parse_texts(value: str | list[str]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ApiError(400, "invalid_input", "'input' is an empty list; send at least one input.", "input")
    for i, text in enumerate(texts):  # as /v1/embeddings: an empty text has nothing to tokenize
        if not text:
            raise ApiError(400, "invalid_input", f"input[{i}] is an empty string.", "input")
    return texts


# -- encoding embeddings -----------------------------------------------------------------------


def encode_embeddings(vectors: np.ndarray, base64_format: bool, model: str, tokens: int, tier: str) -> bytes:
    """(n, d) float32 (or int8/uint8 from output_dtype) -> the response body. base64 is the raw
    buffer: little-endian float32, or the int8/uint8 bytes (packed bits for binary/ubinary)."""
    if base64_format:
        rows = np.ascontiguousarray(vectors, dtype="<f4" if vectors.dtype.kind == "f" else vectors.dtype)
        data = [Embedding(index=i, embedding=base64.b64encode(row.tobytes()).decode("ascii"))
                for i, row in enumerate(rows)]
    else:
        data = [Embedding(index=i, embedding=row) for i, row in enumerate(vectors.tolist())]
    return encode(EmbeddingResponse(data=data, model=model, usage=Usage(tokens, tokens), service_tier=tier))
