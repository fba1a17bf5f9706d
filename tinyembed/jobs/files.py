"""The Files API's rules: the multipart/form-data upload as the OpenAI SDKs send it, the size
limit, the JSONL check for purpose "batch", retention, and the OpenAI file object.

An upload is `purpose` (text) + `file` (bytes, with a filename) and optionally
`expires_after[anchor]=created_at` + `expires_after[seconds]=N`. A batch file must be JSONL:
an upload in which no line is a JSON object (a CSV, a JSON array, a binary) is refused here,
at upload, where the client can fix it; a JSONL file with some bad lines is accepted, and
those lines fail alone when a batch runs it.
"""

from __future__ import annotations

import re

import msgspec

from tinyembed.server.limits import query_int
from tinyembed.server.protocol import ApiError

PURPOSES = ("batch",)  # what may be uploaded; batch results get "batch_output"
MIN_EXPIRY, MAX_EXPIRY = 3600, 30 * 24 * 3600  # OpenAI's bounds for expires_after[seconds]

_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.I)
_PARAM = re.compile(r';\s*([a-zA-Z*]+)="((?:[^"\\]|\\.)*)"|;\s*([a-zA-Z*]+)=([^;\s]+)')


class Part:
    __slots__ = ("name", "filename", "data")

    def __init__(self, name: str, filename: str | None, data: bytes):
        self.name, self.filename, self.data = name, filename, data


def parse_multipart(body: bytes, content_type: str | None) -> dict[str, Part]:
    """multipart/form-data -> {field name: Part} (RFC 7578; the body is already in memory)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", f"Upload files as multipart/form-data (got "
                       f"{media or 'no Content-Type'!r}), with fields 'purpose' and 'file'.")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise ApiError(400, "invalid_request", "multipart/form-data without a boundary parameter.")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ApiError(400, "invalid_request", "Malformed multipart body: no closing boundary.")
    parts: dict[str, Part] = {}
    for piece in pieces[1:-1]:  # before the first delimiter: preamble; after the last: epilogue
        if not piece.startswith(b"\r\n") or not piece.endswith(b"\r\n"):
            raise ApiError(400, "invalid_request", "Malformed multipart body: a part is not framed by CRLF.")
        head, sep, data = piece[2:-2].partition(b"\r\n\r\n")
        if not sep:
            head, data = piece[2:-2], b""  # a part with headers only
        name, filename = _disposition(head)
        if name in parts:
            raise ApiError(400, "invalid_request", f"The form field {name!r} is given twice.", name)
        parts[name] = Part(name, filename, data)
    return parts


def _disposition(head: bytes) -> tuple[str, str | None]:
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        params = {}
        for quoted_key, quoted, bare_key, bare in _PARAM.findall(value):
            params[(quoted_key or bare_key).lower()] = quoted.replace('\\"', '"') if quoted_key else bare
        if "name" in params:
            return params["name"], params.get("filename")
    raise ApiError(400, "invalid_request", "Malformed multipart body: a part has no Content-Disposition name.")


class Upload:
    """What a valid upload request asks for."""

    def __init__(self, data: bytes, filename: str, purpose: str, expires_after: int | None):
        self.data, self.filename, self.purpose, self.expires_after = data, filename, purpose, expires_after


def read_upload(parts: dict[str, Part], max_bytes: int) -> Upload:
    known = {"purpose", "file", "expires_after[anchor]", "expires_after[seconds]"}
    for name in parts:
        if name not in known:
            raise ApiError(400, "unknown_parameter", f"Unrecognized request argument supplied: {name}", name)
    if "file" not in parts or parts["file"].filename is None:
        raise ApiError(400, "invalid_request", "Missing required parameter: 'file' (a file part with a filename).",
                       "file")
    if "purpose" not in parts:
        raise ApiError(400, "invalid_request", "Missing required parameter: 'purpose'.", "purpose")
    purpose = parts["purpose"].data.decode("utf-8", "replace").strip()
    if purpose not in PURPOSES:
        raise ApiError(400, "invalid_request", f"purpose {purpose!r} is not supported here; this server stores "
                       f"files for the Batch API only: use 'batch'.", "purpose")
    data = parts["file"].data
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"The file is {len(data)} bytes; the upload limit is {max_bytes} "
                       "bytes (--max-upload-bytes). Split it into several batches.", "file")
    return Upload(data, parts["file"].filename or "upload.jsonl", purpose, _expires_after(parts))


def _expires_after(parts: dict[str, Part]) -> int | None:
    anchor, seconds = parts.get("expires_after[anchor]"), parts.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor is None or anchor.data.strip() != b"created_at":
        raise ApiError(400, "invalid_request", "expires_after[anchor] must be 'created_at'.", "expires_after")
    # ASCII digits only, as for query integers: int() would also take '3_600', '+3600', ' 3600 ', '٣٦٠٠'
    value = None if seconds is None else query_int(seconds.data.decode("latin-1"), -1, MIN_EXPIRY, MAX_EXPIRY)
    if value is None:
        raise ApiError(400, "invalid_request", f"expires_after[seconds] must be an integer between {MIN_EXPIRY} and "
                       f"{MAX_EXPIRY}.", "expires_after")
    return value


_any_json = msgspec.json.Decoder()


def check_jsonl(data: bytes) -> None:
    """Refuse a batch file that is not JSONL at all (blocking: called on a worker thread)."""
    if not data.strip():
        raise ApiError(400, "invalid_file", "The file is empty; a batch file has one JSON request per line.", "file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_file", f"The file is not UTF-8 text (byte {exc.start}); a batch file is "
                       "JSONL: one JSON object per line.", "file") from None
    for raw in data.split(b"\n"):
        raw = raw.strip()
        if raw[:1] == b"{":
            try:
                if isinstance(_any_json.decode(raw), dict):
                    return
            except (msgspec.DecodeError, RecursionError):  # a bad line fails alone, when the batch runs
                continue
    raise ApiError(400, "invalid_file", "The file is not JSONL: no line is a JSON object. A batch file has one "
                   '{"custom_id", "method", "url", "body"} object per line.', "file")


def expires_in(expires_after: int | None, retention_seconds: float) -> int | None:
    """Seconds until a file is deleted: the client's expires_after, else the server's
    retention (0: kept until deleted)."""
    if expires_after is not None:
        return expires_after
    return int(retention_seconds) if retention_seconds > 0 else None


def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "expires_at": row["expires_at"], "filename": row["filename"], "purpose": row["purpose"],
            "status": "processed", "status_details": None}
