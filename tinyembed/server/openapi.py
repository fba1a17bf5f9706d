"""/openapi.json: an OpenAPI 3.1 document generated from the protocol Structs.

Schemas come from msgspec (the same types that decode requests), so the document cannot drift
from what the server accepts; only the per-route summaries are written by hand here.
"""

from __future__ import annotations

import msgspec

from tinyembed import __version__
from tinyembed.server.protocol import (INPUT_SHAPES, REQUEST_TYPES, RESPONSE_TYPES, EmbeddingRequest, EmbeddingResponse,
                       ModelCard, ModelList, Status, TokenizeRequest, TokenizeResponse)

REF = "#/components/schemas/{name}"

# route -> method -> (summary, request type or None, response type or a non-JSON media type or None
#                    (text/plain), error statuses)
OPERATIONS = {
    "/v1/embeddings": {"post": ("Create embeddings (OpenAI-compatible)", EmbeddingRequest, EmbeddingResponse,
                                (400, 401, 404, 408, 413, 415, 429, 503))},
    "/embeddings": {"post": ("Alias of /v1/embeddings", EmbeddingRequest, EmbeddingResponse,
                             (400, 401, 404, 408, 413, 415, 429, 503))},
    "/v1/models": {"get": ("List served models and their aliases", None, ModelList, (401, 503))},
    "/v1/models/{id}": {"get": ("One served model", None, ModelCard, (401, 404, 503))},
    "/tokenize": {"post": ("Token ids and tokens of texts, special tokens included", TokenizeRequest,
                           TokenizeResponse, (400, 401, 404, 413, 415, 429, 503))},
    "/health": {"get": ("Liveness: the process answers", None, Status, ())},
    "/ready": {"get": ("Readiness: 200 once every model is loaded, else 503 model_provisioning", None,
                       Status, (503,))},
    "/metrics": {"get": ("Prometheus metrics (text format 0.0.4)", None, None, ())},
    "/openapi.json": {"get": ("This document", None, None, ())},
    "/docs": {"get": ("A page to read the routes and try embeddings in a browser", None, "text/html", ())},
    # The Files and Batches API (jobs/routes.py, on when --data-dir is set): OpenAI's shapes.
    "/v1/files": {"get": ("List uploaded files", None, dict, (401,)),
                  "post": ("Upload a JSONL batch file (multipart/form-data: file, purpose=batch)", None, dict,
                           (400, 401, 413))},
    "/v1/files/{id}": {"get": ("One file's metadata", None, dict, (401, 404)),
                       "delete": ("Delete a file", None, dict, (401, 404))},
    "/v1/files/{id}/content": {"get": ("A file's bytes (JSONL)", None, None, (401, 404))},
    "/v1/batches": {"get": ("List batches, newest first (paged: after, limit)", None, dict, (401,)),
                    "post": ("Create a batch: input_file_id, endpoint /v1/embeddings, completion_window 24h",
                             dict, dict, (400, 401, 404))},
    "/v1/batches/{id}": {"get": ("One batch: status and request_counts", None, dict, (401, 404))},
    "/v1/batches/{id}/cancel": {"post": ("Cancel a batch", None, dict, (401, 404))},
}


def _ref(kind: type) -> dict:
    if kind is dict:  # an OpenAI object described by its documentation, not by a Struct here
        return {"type": "object"}
    return {"$ref": REF.format(name=kind.__name__)}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(summary: str, request, response, errors) -> dict:
    if response is None or isinstance(response, str):  # a media type: not JSON
        ok = {"description": "OK", "content": {response or "text/plain": {}}}
    else:
        ok = {"description": "OK", **_json(_ref(response))}
    op = {"summary": summary, "responses": {"200": ok}}
    for status in errors:
        op["responses"][str(status)] = {"description": "Error", **_json(_ref_error())}
    if request is not None:
        op["requestBody"] = {"required": True, **_json(_ref(request))}
    return op


def _ref_error() -> dict:
    return {"$ref": REF.format(name="ErrorResponse")}


def document(routes: list[str]) -> bytes:
    missing = [r for r in routes if r not in OPERATIONS]
    if missing:
        raise RuntimeError(f"openapi: routes without a description: {missing}")
    _, schemas = msgspec.json.schema_components(REQUEST_TYPES + RESPONSE_TYPES, ref_template=REF)
    # `input` is decoded raw (see protocol.EmbeddingRequest); describe its four accepted shapes.
    schemas["EmbeddingRequest"]["properties"]["input"] = {
        "description": f"{INPUT_SHAPES}; at most 2048 items by default",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
            {"type": "array", "minItems": 1,
             "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}},
        ],
    }
    paths = {}
    for route in routes:
        paths[route] = {method: _operation(*spec) for method, spec in OPERATIONS[route].items()}
        if "{id}" in route:
            for op in paths[route].values():
                op["parameters"] = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "tinyembed", "version": __version__,
                 "description": "OpenAI-compatible text-embedding server"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
    return msgspec.json.encode(doc)
