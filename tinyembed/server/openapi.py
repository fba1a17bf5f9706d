"""/openapi.json: an OpenAPI 3.1 document generated from the protocol Structs and the running
configuration, so that generated clients and schemathesis agree with the server exactly:

- auth: with API keys configured every route but the probes requires the bearer scheme (and
  may answer 401); without keys no route does;
- limits: the enforced ones appear as schema keywords (`input` maxItems = --max-inputs, strings
  minLength 1, token ids within the smallest served vocabulary, `dimensions` up to the smallest
  served width, `model` one of the served ids, `user` maxLength 256, query `limit` ranges);
- statuses: every status a route can answer, including the HTTP layer's own (400 malformed,
  408 slow client, 413 body too large, 431 headers too large, 503 connection cap) and 429 only
  when rate limits are on.

Schemas come from msgspec (the same types that decode requests); route groups mounted from
above the server (the Files/Batches API) describe their own operations in the same format.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import msgspec

from tinyembed import __version__
from tinyembed.server.protocol import (INPUT_SHAPES, REQUEST_TYPES, RESPONSE_TYPES, EmbeddingRequest, EmbeddingResponse,
                                       ModelCard, ModelList, Status, TokenizeRequest, TokenizeResponse)

REF = "#/components/schemas/{name}"
HTTP_LAYER = (400, 408, 413, 431, 501, 503)  # any request can get these from server/http.py (501: a transfer coding)
JSON = "application/json"


@dataclass
class Operation:
    summary: str
    request: object = None  # a Struct type, a JSON schema dict, or None
    response: object = None  # a Struct type, a JSON schema dict, or None (see `content`)
    errors: tuple[int, ...] = ()
    content: str = JSON  # the 200 response's media type
    request_content: str = JSON
    query: list[dict] = field(default_factory=list)  # OpenAPI parameter objects
    rate_limited: bool = False  # may answer 429 when rate limits are on


OPERATIONS = {
    "/v1/embeddings": {"post": Operation("Create embeddings (OpenAI-compatible)", EmbeddingRequest, EmbeddingResponse,
                                         (404, 415), rate_limited=True)},
    "/embeddings": {"post": Operation("Alias of /v1/embeddings", EmbeddingRequest, EmbeddingResponse, (404, 415),
                                      rate_limited=True)},
    "/v1/models": {"get": Operation("List served models and their aliases", None, ModelList)},
    "/v1/models/{id}": {"get": Operation("One served model", None, ModelCard, (404,))},
    "/tokenize": {"post": Operation("Token ids and tokens of texts, special tokens included", TokenizeRequest,
                                    TokenizeResponse, (404, 415), rate_limited=True)},
    "/health": {"get": Operation("Liveness: the process answers", None, Status)},
    "/ready": {"get": Operation("Readiness: 200 once every model is loaded, else 503 model_provisioning", None,
                                Status)},
    "/metrics": {"get": Operation("Prometheus metrics (text format 0.0.4)", content="text/plain")},
    "/openapi.json": {"get": Operation("This document", None, {"type": "object"})},
    "/docs": {"get": Operation("A page to read the routes and try embeddings in a browser", content="text/html")},
}


@dataclass
class Served:
    """What the document needs to know about the served models and limits."""

    models: list[str] = field(default_factory=list)  # every embedding model id a client may send (aliases included)
    rerankers: list[str] = field(default_factory=list)  # issue 29: the cross-encoders' ids (/v1/rerank, /rerank)
    min_vocab: int | None = None
    min_dimensions: int | None = None
    max_inputs: int = 2048
    auth: bool = False
    rate_limited: bool = False
    open_routes: frozenset = frozenset()
    metrics_key: bool = False  # GET /metrics needs its own Bearer key


def _ref(kind, types: list) -> dict:
    if isinstance(kind, dict):
        return kind
    if typing.get_origin(kind) is list:  # a JSON array of Structs (TEI's /rerank answers one)
        return {"type": "array", "items": _ref(typing.get_args(kind)[0], types)}
    if kind not in types:
        types.append(kind)
    return {"$ref": REF.format(name=kind.__name__)}


def _operation(route: str, op: Operation, served: Served, types: list) -> dict:
    ok = {"description": "OK"}
    if op.response is not None:
        ok["content"] = {op.content: {"schema": _ref(op.response, types)}}
    else:
        ok["content"] = {op.content: {}}
    statuses = set(HTTP_LAYER) | set(op.errors)
    secured = (served.auth and route not in served.open_routes) or (route == "/metrics" and served.metrics_key)
    if secured:
        statuses.add(401)
    if op.rate_limited and served.rate_limited:
        statuses.add(429)
    error = {"description": "Error", "content": {JSON: {"schema": {"$ref": REF.format(name="ErrorResponse")}}}}
    out = {"summary": op.summary, "responses": {"200": ok, **{str(s): error for s in sorted(statuses)}},
           "security": [{"bearer": []}] if secured else []}
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {op.request_content: {"schema": _ref(op.request, types)}}}
    parameters = list(op.query)
    if "{id}" in route:
        parameters.insert(0, {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}})
    if parameters:
        out["parameters"] = parameters
    return out


def _input_schema(served: Served) -> dict:
    ids = {"type": "integer", "minimum": 0}
    if served.min_vocab:
        ids["maximum"] = served.min_vocab - 1
    many = {"minItems": 1, "maxItems": served.max_inputs}
    return {
        "description": f"{INPUT_SHAPES}; at most {served.max_inputs} items",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", **many, "items": {"type": "string", "minLength": 1}},
            {"type": "array", **many, "items": ids},
            {"type": "array", **many, "items": {"type": "array", "minItems": 1, "items": ids}},
        ],
    }


def document(routes: list[str], served: Served | None = None, extra: dict | None = None) -> bytes:
    """`extra`: {route: {method: Operation}} from mounted route groups."""
    served = served or Served()
    operations = {**OPERATIONS, **(extra or {})}
    missing = [r for r in routes if r not in operations]
    if missing:
        raise RuntimeError(f"openapi: routes without a description: {missing}")
    types = list(REQUEST_TYPES + RESPONSE_TYPES)
    paths = {route: {method: _operation(route, op, served, types) for method, op in operations[route].items()}
             for route in routes}
    _, schemas = msgspec.json.schema_components(tuple(types), ref_template=REF)
    if served.models:
        model = {"type": "string", "enum": list(served.models)}
        schemas["EmbeddingRequest"]["properties"]["model"] = model
        every = {"type": "string", "enum": list(served.models) + served.rerankers}  # rerankers tokenize too
        schemas["TokenizeRequest"]["properties"]["model"] = {"anyOf": [every, {"type": "null"}]}  # null: the first
    for name in ("RerankRequest", "TeiRerankRequest"):  # issue 29: `model` is one of the served rerankers
        if served.rerankers and name in schemas:
            schemas[name]["properties"]["model"] = {"anyOf": [{"type": "string", "enum": served.rerankers},
                                                              {"type": "null"}]}
    schemas["EmbeddingRequest"]["properties"]["input"] = _input_schema(served)
    schemas["TokenizeRequest"]["properties"]["input"] = {"anyOf": _input_schema(served)["anyOf"][:2]}
    if served.min_dimensions:
        schemas["EmbeddingRequest"]["properties"]["dimensions"] = {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": served.min_dimensions}, {"type": "null"}]}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "tinyembed", "version": __version__,
                 "description": "OpenAI-compatible text-embedding server"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    if served.auth:
        doc["security"] = [{"bearer": []}]
    return msgspec.json.encode(doc)


def served_from(app) -> Served:
    """The document's view of a running App (models are known once loaded)."""
    engines = [s.engine for s in app.models.values()]
    return Served(
        models=[name for name, s in app.models.items() if s.engine.info.task == "embeddings"],
        rerankers=[name for name, s in app.models.items() if s.engine.info.task == "rerank"],
        min_vocab=min((e.tokenizer.vocab_size for e in engines), default=None),
        min_dimensions=min((e.info.dimensions for e in engines if e.info.task == "embeddings"), default=None),
        max_inputs=app.config.requests.max_inputs,
        auth=app.keys.enabled,
        rate_limited=app.limiter is not None,
        open_routes=frozenset(app.open_routes),
        metrics_key=app.metrics_key is not None,
    )


def operations_of(groups) -> dict:
    extra = {}
    for group in groups:
        extra.update(getattr(group, "operations", {}))
    return extra
