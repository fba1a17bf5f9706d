"""batch_files: the multipart upload as the OpenAI SDK really sends it, the size limit, the JSONL
check for batch files, and expiry. The SDK's bytes are captured from a loopback server."""

from __future__ import annotations

import http.server
import json
import threading

import openai
import pytest

from tinyembed.jobs import files as batch_files
from tinyembed.server.protocol import ApiError

GOOD_LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}\n'


def sdk_upload(**create_args) -> tuple[bytes, str]:
    """(body, Content-Type) of `client.files.create(...)`, captured on 127.0.0.1."""
    seen = {}

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            seen["type"] = self.headers["Content-Type"]
            reply = json.dumps({"id": "file-1", "object": "file", "bytes": 1, "created_at": 0, "filename": "f",
                                "purpose": "batch", "status": "processed"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="k", max_retries=0) as c:
            c.files.create(**create_args)
    finally:
        thread.join(10)
        server.server_close()
    return seen["body"], seen["type"]


def test_sdk_upload_parses_to_purpose_and_file():
    content = GOOD_LINE * 3 + b"\r\n--not-a-boundary\r\n"  # CRLFs and dashes inside the file are data
    body, content_type = sdk_upload(file=("requests.jsonl", content), purpose="batch")
    parts = batch_files.parse_multipart(body, content_type)
    upload = batch_files.read_upload(parts, max_bytes=10_000)
    assert (upload.purpose, upload.filename, upload.data, upload.expires_after) == \
        ("batch", "requests.jsonl", content, None)


def test_sdk_expires_after_is_read():
    body, content_type = sdk_upload(file=("r.jsonl", GOOD_LINE), purpose="batch",
                                    expires_after={"anchor": "created_at", "seconds": 7200})
    upload = batch_files.read_upload(batch_files.parse_multipart(body, content_type), 10_000)
    assert upload.expires_after == 7200


def test_size_limit_is_413_naming_the_limit():
    body, content_type = sdk_upload(file=("big.jsonl", GOOD_LINE * 100), purpose="batch")
    with pytest.raises(ApiError) as err:
        batch_files.read_upload(batch_files.parse_multipart(body, content_type), max_bytes=1000)
    assert err.value.status == 413 and err.value.code == "payload_too_large" and "1000" in err.value.message


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, str]:
    chunks = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f'multipart/form-data; boundary="{boundary}"'


@pytest.mark.parametrize("fields, status, code, param", [
    ([("purpose", None, b"batch")], 400, "invalid_request", "file"),
    ([("file", "a.jsonl", GOOD_LINE)], 400, "invalid_request", "purpose"),
    ([("purpose", None, b"fine-tune"), ("file", "a.jsonl", GOOD_LINE)], 400, "invalid_request", "purpose"),
    ([("purpose", None, b"batch"), ("file", "a.jsonl", GOOD_LINE), ("colour", None, b"red")], 400,
     "unknown_parameter", "colour"),
    ([("purpose", None, b"batch"), ("file", "a.jsonl", GOOD_LINE), ("expires_after[anchor]", None, b"created_at"),
      ("expires_after[seconds]", None, b"10")], 400, "invalid_request", "expires_after"),
])
def test_bad_form_fields(fields, status, code, param):
    body, content_type = multipart(fields)
    with pytest.raises(ApiError) as err:
        batch_files.read_upload(batch_files.parse_multipart(body, content_type), 10_000)
    assert (err.value.status, err.value.code, err.value.param) == (status, code, param)


@pytest.mark.parametrize("seconds", [b"3_600", b"+3600", b" 3600 ", b"3600 ", b"\t3600", b"3600\n",
                                     "\u0663\u0666\u0660\u0660".encode(), b"0x1000", b"3600.0", b"36e2", b"",
                                     b"-3600", "\uff13\uff16\uff10\uff10".encode()])
def test_form_integers_are_ascii_digits_only(seconds):
    """expires_after[seconds]: int() would take several of these as 3600 (issue 24, class 6)."""
    body, content_type = multipart([("purpose", None, b"batch"), ("file", "a.jsonl", GOOD_LINE),
                                    ("expires_after[anchor]", None, b"created_at"),
                                    ("expires_after[seconds]", None, seconds)])
    with pytest.raises(ApiError) as err:
        batch_files.read_upload(batch_files.parse_multipart(body, content_type), 10_000)
    assert (err.value.status, err.value.param) == (400, "expires_after")


def test_form_integer_of_plain_digits_is_read():
    body, content_type = multipart([("purpose", None, b"batch"), ("file", "a.jsonl", GOOD_LINE),
                                    ("expires_after[anchor]", None, b"created_at"),
                                    ("expires_after[seconds]", None, b"0003600")])
    assert batch_files.read_upload(batch_files.parse_multipart(body, content_type), 10_000).expires_after == 3600


@pytest.mark.parametrize("body, content_type, status", [
    (GOOD_LINE, "application/json", 415),
    (b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n", "multipart/form-data; boundary=b", 400),
    (b"irrelevant", "multipart/form-data", 400),
    (b"--b\r\nX-No-Disposition: 1\r\n\r\n1\r\n--b--\r\n", "multipart/form-data; boundary=b", 400),
])
def test_malformed_multipart(body, content_type, status):
    with pytest.raises(ApiError) as err:
        batch_files.parse_multipart(body, content_type)
    assert err.value.status == status


@pytest.mark.parametrize("data", [
    b"name,text\n1,hello\n",  # CSV
    b'[{"custom_id": "a"}]\n',  # a JSON array, not lines of objects
    b"\x89PNG\r\n\x1a\n\x00\x00",  # binary
    b"  \n\n",  # empty
])
def test_non_jsonl_batch_file_is_refused(data):
    with pytest.raises(ApiError) as err:
        batch_files.check_jsonl(data)
    assert err.value.status == 400 and err.value.code == "invalid_file" and err.value.param == "file"


def test_jsonl_with_some_bad_lines_is_accepted():
    batch_files.check_jsonl(b"not json\n" + GOOD_LINE + b"{broken\n")


def test_expiry_client_choice_else_retention():
    assert batch_files.expires_in(7200, retention_seconds=86400) == 7200
    assert batch_files.expires_in(None, retention_seconds=86400) == 86400
    assert batch_files.expires_in(None, retention_seconds=0) is None
