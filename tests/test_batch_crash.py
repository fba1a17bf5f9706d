"""kill -9 the server while a 10,000-line batch is half done; restart it on the same --data-dir;
the batch completes with every custom_id exactly once and the right vectors, and no partial
output is ever shown as a result."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import openai
import pytest

from conftest import ServerProcess

LINES = 10_000
DEADLINE_S = 240.0  # the whole test; bounded so a stuck resume fails instead of hanging


def texts() -> list[str]:
    return [f"text {i}" for i in range(LINES)]  # distinct, ~5 tokens: the test is about the crash, not compute


def start(tmp_path, name: str, data_dir) -> ServerProcess:
    proc = ServerProcess(["--model", "all-MiniLM-L6-v2", "--data-dir", str(data_dir)], tmp_path / f"{name}.log")
    try:
        return proc.wait_ready()
    except BaseException:
        proc.stop(signal.SIGKILL)
        raise


def poll(client, batch_id: str, predicate, deadline: float, every: float = 0.02):
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if predicate(batch):
            return batch
        time.sleep(every)
    raise AssertionError(f"batch {batch_id} never got there: {batch}")


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_completes_each_custom_id_once(tmp_path, minilm):
    deadline = time.monotonic() + DEADLINE_S
    data_dir = tmp_path / "data"
    corpus = texts()
    lines = [json.dumps({"custom_id": f"id-{i}", "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": "all-MiniLM-L6-v2", "input": text}}) for i, text in enumerate(corpus)]
    first = start(tmp_path, "first", data_dir)
    try:
        with openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0) as client:
            upload = client.files.create(file=("big.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
            batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
            half = poll(client, batch.id, lambda b: b.request_counts.completed >= LINES // 2, deadline)
            assert half.status == "in_progress" and half.output_file_id is None
            assert half.request_counts.completed < LINES, "finished before the kill: make the batch bigger"
            assert [f.purpose for f in client.files.list()] == ["batch"]  # no result file exists yet
    finally:
        killed = first.stop(signal.SIGKILL)
    assert killed == -signal.SIGKILL

    second = start(tmp_path, "second", data_dir)
    try:
        with openai.OpenAI(base_url=second.url + "/v1", api_key="unused", max_retries=0) as client:
            resumed = client.batches.retrieve(batch.id)
            assert resumed.request_counts.completed >= half.request_counts.completed  # committed work kept
            assert resumed.status in ("in_progress", "finalizing", "completed")
            if resumed.status != "completed":
                assert resumed.output_file_id is None
            done = poll(client, batch.id, lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
                        deadline, every=0.1)
            assert done.status == "completed", done
            assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == \
                (LINES, LINES, 0)
            assert done.error_file_id is None
            output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    finally:
        assert second.stop() == 0, second.log()

    assert [x["custom_id"] for x in output] == [f"id-{i}" for i in range(LINES)]  # each exactly once, in order
    assert {x["response"]["status_code"] for x in output} == {200}
    got = np.array([x["response"]["body"]["data"][0]["embedding"] for x in output], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.embed_texts(corpus), atol=1e-5, rtol=0)
    leftovers = sorted(p.name for p in (data_dir / "files").iterdir())
    assert len(leftovers) == 2 and not any(name.endswith(".part") for name in leftovers)  # input + output only
