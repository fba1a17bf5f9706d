"""The Files and Batches API on a real server process, driven by the real `openai` client:
upload -> create -> poll -> download, vectors equal /v1/embeddings, and every way a batch can
be wrong answered in the right place (the upload, the create call, or one line of the error
file) while everything else still works."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import openai
import pytest

from conftest import TINY_MODEL, post, start_server, RawClient

POLL_DEADLINE_S = 120.0
MAX_UPLOAD = 1_000_000


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("batch-data")
    proc = start_server(tmp_path_factory, "batch", [
        "--model", "all-MiniLM-L6-v2", "--model", f"tiny={TINY_MODEL}", "--data-dir", str(data_dir),
        "--max-upload-bytes", str(MAX_UPLOAD)])
    proc.data_dir = data_dir
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def client(batch_server):
    with openai.OpenAI(base_url=batch_server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def jsonl(*lines) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def request(cid: str, body: dict, url: str = "/v1/embeddings", method: str = "POST") -> dict:
    return {"custom_id": cid, "method": method, "url": url, "body": body}


def run_batch(client, data: bytes, name: str = "requests.jsonl"):
    upload = client.files.create(file=(name, data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"job": name})
    assert batch.status == "validating" and batch.input_file_id == upload.id
    return wait(client, batch.id)


def wait(client, batch_id: str):
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def lines_of(client, file_id) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()] if file_id else []


def embedding_rows(body: dict) -> np.ndarray:
    rows = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
    if isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows])
    return np.array(rows, dtype=np.float32)


# -- the whole flow ----------------------------------------------------------------------------------

BODIES = {
    "one": {"model": "all-MiniLM-L6-v2", "input": "The quick brown fox jumps over the lazy dog."},
    "list": {"model": "all-MiniLM-L6-v2", "input": ["hello world", "vector databases index embeddings"]},
    "alias-free-tiny": {"model": "tiny", "input": "a tiny model"},
    "ids": {"model": "all-MiniLM-L6-v2", "input": [[101, 7592, 2088, 102]]},
    "dims": {"model": "all-MiniLM-L6-v2", "input": "matryoshka", "dimensions": 64},
    "b64": {"model": "all-MiniLM-L6-v2", "input": "base64 please", "encoding_format": "base64"},
    "query": {"model": "all-MiniLM-L6-v2", "input": "what is a fox?", "input_type": "query"},
}


def test_openai_client_flow_and_vectors_equal_the_embeddings_route(client):
    data = jsonl(*(request(cid, body) for cid, body in BODIES.items()))
    batch = run_batch(client, data)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == batch.request_counts.completed == len(BODIES)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None and batch.errors is None
    assert batch.metadata == {"job": "requests.jsonl"}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output" and output.filename == f"{batch.id}_output.jsonl"
    lines = lines_of(client, batch.output_file_id)
    assert [x["custom_id"] for x in lines] == list(BODIES)  # once each, in input order
    for x in lines:
        assert x["error"] is None and x["response"]["status_code"] == 200 and x["id"].startswith("batch_req_")
        body = BODIES[x["custom_id"]]
        sdk_fields = {k: v for k, v in body.items() if k in ("model", "input", "dimensions")}
        extensions = {k: v for k, v in body.items() if k == "input_type"}  # ours, not the SDK's
        live = client.embeddings.create(**sdk_fields, encoding_format="float", extra_body=extensions)
        want = np.array([d.embedding for d in live.data], dtype=np.float32)
        got = embedding_rows(x["response"]["body"])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert x["response"]["body"]["usage"]["prompt_tokens"] == live.usage.prompt_tokens
        assert x["response"]["body"]["model"] == body["model"]


def test_bad_lines_fail_alone_with_their_error(client):
    good = {"model": "tiny", "input": "fine"}
    data = jsonl(
        request("ok-1", good),
        b"{this is not json",
        {"method": "POST", "url": "/v1/embeddings", "body": good},  # no custom_id
        request("wrong-url", good, url="/v1/chat/completions"),
        request("wrong-method", good, method="GET"),
        request("unknown-model", {"model": "text-embedding-9", "input": "x"}),
        request("typo", {"model": "tiny", "input": "x", "encodingformat": "float"}),
        request("empty", {"model": "tiny", "input": ""}),
        request("too-long", {"model": "all-MiniLM-L6-v2", "input": "word " * 600}),
        request("ok-1", good),  # a repeated custom_id
        request("ok-2", good),
    )
    batch = run_batch(client, data, "mixed.jsonl")
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (11, 2, 9)
    assert [x["custom_id"] for x in lines_of(client, batch.output_file_id)] == ["ok-1", "ok-2"]
    by_line = lines_of(client, batch.error_file_id)  # in input order
    assert len(by_line) == 9

    def refused(x):  # the API's answer to the line, as the route would give it
        error = x["response"]["body"]["error"]
        return x["response"]["status_code"], error["code"], error["param"]

    assert by_line[0]["custom_id"] is None and by_line[0]["error"]["code"] == "invalid_json_line"
    assert "Line 2" in by_line[0]["error"]["message"] and by_line[0]["response"] is None
    assert by_line[1]["error"]["code"] == "invalid_request" and "Line 3" in by_line[1]["error"]["message"]
    assert (by_line[2]["custom_id"], by_line[2]["error"]["code"]) == ("wrong-url", "invalid_url")
    assert (by_line[3]["custom_id"], by_line[3]["error"]["code"]) == ("wrong-method", "invalid_method")
    assert by_line[4]["custom_id"] == "unknown-model" and refused(by_line[4]) == (404, "model_not_found", "model")
    assert refused(by_line[5]) == (400, "unknown_parameter", "encodingformat")
    assert refused(by_line[6]) == (400, "invalid_input", "input")
    assert refused(by_line[7])[:2] == (400, "context_length_exceeded")
    assert (by_line[8]["custom_id"], by_line[8]["error"]["code"]) == ("ok-1", "duplicate_custom_id")
    reported = [(e.line, e.code) for e in batch.errors.data]  # envelope problems, by line number
    assert reported == [(2, "invalid_json_line"), (3, "invalid_request"), (4, "invalid_url"), (5, "invalid_method"),
                        (10, "duplicate_custom_id")]


# -- refused at create or at upload ------------------------------------------------------------------

def test_wrong_endpoint_window_and_file_are_refused_at_create(client):
    upload = client.files.create(file=("a.jsonl", jsonl(request("a", {"model": "tiny", "input": "x"}))),
                                 purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.body["param"] == "endpoint" and "/v1/embeddings" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="1h")
    assert err.value.body["param"] == "completion_window"
    with pytest.raises(openai.NotFoundError) as err:
        client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.body["param"] == "input_file_id"


def test_upload_errors_are_answered_by_the_upload(client, batch_server):
    before = [f.id for f in client.files.list()]
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", b'{"a": 1}\n' * (MAX_UPLOAD // 9 + 1)), purpose="batch")
    assert err.value.status_code == 413 and err.value.body["code"] == "payload_too_large"
    assert str(MAX_UPLOAD) in err.value.body["message"]
    for name, data in (("data.csv", b"id,text\n1,hello\n"), ("doc.json", b'[{"custom_id": "a"}]'),
                       ("image.png", b"\x89PNG\r\n\x1a\n\x00\xff")):
        with pytest.raises(openai.BadRequestError) as err:
            client.files.create(file=(name, data), purpose="batch")
        assert err.value.body["code"] == "invalid_file" and err.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    assert err.value.body["param"] == "purpose"
    raw = RawClient(batch_server.port)
    raw.send(post("/v1/files", b'{"purpose": "batch"}'))
    reply = raw.response()
    raw.close()
    assert reply.status == 415 and reply.error["code"] == "unsupported_media_type"
    assert [f.id for f in client.files.list()] == before  # nothing was stored
    assert client.embeddings.create(model="tiny", input="still fine").data  # and the server still serves


# -- files and batches as resources --------------------------------------------------------------------

def test_files_list_retrieve_content_delete(client):
    data = jsonl(request("a", {"model": "tiny", "input": "x"}))
    up = client.files.create(file=("mine.jsonl", data), purpose="batch")
    assert (up.bytes, up.filename, up.purpose, up.status) == (len(data), "mine.jsonl", "batch", "processed")
    assert up.expires_at == up.created_at + 30 * 86400  # the default retention
    assert client.files.retrieve(up.id) == up
    assert client.files.content(up.id).content == data
    assert up.id in [f.id for f in client.files.list(purpose="batch")]
    assert up.id not in [f.id for f in client.files.list(purpose="batch_output")]
    deleted = client.files.delete(up.id)
    assert deleted.deleted and deleted.id == up.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(up.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(up.id)


def test_batches_list_is_paged_newest_first(client):
    data = jsonl(request("a", {"model": "tiny", "input": "x"}))
    up = client.files.create(file=("p.jsonl", data), purpose="batch")
    made = [client.batches.create(input_file_id=up.id, endpoint="/v1/embeddings", completion_window="24h").id
            for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    for batch_id in made:
        wait(client, batch_id)


def test_cancel_keeps_what_finished(client):
    data = jsonl(*(request(f"c{i}", {"model": "all-MiniLM-L6-v2", "input": f"cancel me {i}"}) for i in range(3000)))
    upload = client.files.create(file=("cancel.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as err:  # 3000 lines take seconds: it is still running
        client.files.delete(upload.id)
    assert batch.id in err.value.body["message"]
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    done = lines_of(client, batch.output_file_id)
    assert len(done) == batch.request_counts.completed < 3000
    assert len({x["custom_id"] for x in done}) == len(done)
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling twice is harmless
    assert client.files.delete(upload.id).deleted  # no longer in use
    finished = run_batch(client, jsonl(request("z", {"model": "tiny", "input": "x"})))
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(finished.id)


def test_openapi_describes_the_files_and_batches_routes(batch_server):
    doc = batch_server.request("GET", "/openapi.json").json()
    for route in ("/v1/files", "/v1/files/{id}", "/v1/files/{id}/content", "/v1/batches",
                  "/v1/batches/{id}", "/v1/batches/{id}/cancel"):
        assert route in doc["paths"], route
    assert set(doc["paths"]["/v1/files"]) == {"get", "post"}
