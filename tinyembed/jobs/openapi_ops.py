"""The Files and Batches routes as /openapi.json describes them (server/openapi.py's format),
with the limits jobs/ enforces written as schema keywords."""

from __future__ import annotations

from tinyembed.jobs.files import MAX_EXPIRY, MIN_EXPIRY, PURPOSES
from tinyembed.jobs.format import ENDPOINT
from tinyembed.server.openapi import Operation

OBJECT = {"type": "object"}
FILE = {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
        "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
                       "created_at": {"type": "integer"}, "filename": {"type": "string"},
                       "purpose": {"type": "string"}}}
BATCH = {"type": "object", "required": ["id", "object", "endpoint", "input_file_id", "status", "request_counts"],
         "properties": {"id": {"type": "string"}, "object": {"const": "batch"}, "status": {"type": "string"},
                        "endpoint": {"type": "string"}, "input_file_id": {"type": "string"},
                        "request_counts": OBJECT}}


def _page(item: dict) -> dict:
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item},
                           "has_more": {"type": "boolean"}}}


def _limit(maximum: int) -> dict:
    return {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": maximum}}


AFTER = {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}}
UPLOAD = {"type": "object", "required": ["file", "purpose"], "additionalProperties": False,
          "properties": {"file": {"type": "string", "format": "binary"},
                         "purpose": {"type": "string", "enum": list(PURPOSES)}}}
CREATE_BATCH = {
    "type": "object", "additionalProperties": False, "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {
        "input_file_id": {"type": "string"},
        "endpoint": {"type": "string", "enum": [ENDPOINT]},
        "completion_window": {"type": "string", "enum": ["24h"]},
        "metadata": {"anyOf": [{"type": "object", "maxProperties": 16, "propertyNames": {"maxLength": 64},
                                "additionalProperties": {"type": "string", "maxLength": 512}}, {"type": "null"}]},
        "output_expires_after": {"anyOf": [{
            "type": "object", "additionalProperties": False, "required": ["anchor", "seconds"],
            "properties": {"anchor": {"type": "string", "enum": ["created_at"]},
                           "seconds": {"type": "integer", "minimum": MIN_EXPIRY, "maximum": MAX_EXPIRY}}},
            {"type": "null"}]},
    },
}

OPERATIONS = {
    "/v1/files": {
        "get": Operation("List uploaded files", None, _page(FILE), query=[
            _limit(10000), AFTER, {"name": "order", "in": "query", "required": False,
                                   "schema": {"type": "string", "enum": ["asc", "desc"]}},
            {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}}]),
        "post": Operation("Upload a JSONL batch file (multipart/form-data: file, purpose=batch)", UPLOAD, FILE,
                          (413, 415), request_content="multipart/form-data"),
    },
    "/v1/files/{id}": {"get": Operation("One file's metadata", None, FILE, (404,)),
                       "delete": Operation("Delete a file", None, OBJECT, (404,))},
    "/v1/files/{id}/content": {"get": Operation("A file's bytes (JSONL)", None, None, (404,),
                                                content="application/octet-stream")},
    "/v1/batches": {
        "get": Operation("List batches, newest first (paged: after, limit)", None, _page(BATCH),
                         query=[_limit(100), AFTER]),
        "post": Operation("Create a batch: input_file_id, endpoint /v1/embeddings, completion_window 24h",
                          CREATE_BATCH, BATCH, (404, 415)),
    },
    "/v1/batches/{id}": {"get": Operation("One batch: status and request_counts", None, BATCH, (404,))},
    "/v1/batches/{id}/cancel": {"post": Operation("Cancel a batch", None, BATCH, (404, 415))},
}
