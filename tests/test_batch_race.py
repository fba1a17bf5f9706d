"""Creating a batch and deleting its input file at the same moment (issue 24, class 7): one of
the two loses cleanly. The file check and the batch insert are one sqlite transaction, and so
are the in-use check and the delete; the store runs them one at a time. So either the delete
comes first (create: 404) or the batch does (delete: 400, the file is in use), never both 200
with a batch that then fails for want of its file.
"""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from conftest import TINY_MODEL, start_server
from tinyembed.jobs.store import Store

from test_batch_store import batch_row

LINE = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "tiny", "input": "x"}}).encode() + b"\n"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


def test_a_delete_first_makes_the_batch_a_404(store):
    file_id = store.add_file([LINE], "in.jsonl", "batch", None)["id"]
    assert store.get_file(file_id) is not None  # what create_batch saw before the delete ran
    assert store.delete_unused_file(file_id) is True
    assert store.add_batch_on_file(batch_row("batch_1", file_id)) is None
    assert store.get_batch("batch_1") is None


def test_a_batch_first_makes_the_delete_refused(store):
    file_id = store.add_file([LINE], "in.jsonl", "batch", None)["id"]
    assert store.file_in_use(file_id) is None  # what delete_file saw before the batch was made
    assert store.add_batch_on_file(batch_row("batch_1", file_id))["id"] == "batch_1"
    assert store.delete_unused_file(file_id) == "batch_1"
    assert store.get_file(file_id) is not None and store.file_path(file_id).exists()


def test_another_owners_file_is_not_a_batch_input(store):
    file_id = store.add_file([LINE], "in.jsonl", "batch", None, owner="project:a")["id"]
    assert store.add_batch_on_file(batch_row("batch_1", file_id), owners=("project:b",)) is None
    assert store.add_batch_on_file(batch_row("batch_2", file_id), owners=("project:a",)) is not None


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "race", [
        "--model", f"tiny={TINY_MODEL}", "--data-dir", str(tmp_path_factory.mktemp("race-data")), "--no-access-log"])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_create_and_delete_at_once_never_both_succeed_with_a_failed_batch(jobs_server):
    client = openai.OpenAI(base_url=jobs_server.url + "/v1", api_key="unused", max_retries=0)
    outcomes = []
    for _ in range(12):
        file_id = client.files.create(file=("in.jsonl", LINE * 50), purpose="batch").id
        got = {}
        start = threading.Barrier(2)

        def create():
            start.wait()
            try:
                got["batch"] = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                                     completion_window="24h").id
            except openai.NotFoundError:
                got["batch"] = 404

        def delete():
            start.wait()
            try:
                got["delete"] = client.files.delete(file_id).deleted
            except openai.BadRequestError:
                got["delete"] = 400

        threads = [threading.Thread(target=create), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert set(got) == {"batch", "delete"}, got
        if got["batch"] == 404:
            assert got["delete"] is True
            outcomes.append("delete first")
            continue
        deadline = time.monotonic() + 60
        while (batch := client.batches.retrieve(got["batch"])).status not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert batch.status == "completed", (got, batch)  # never: created, then failed for want of its file
        outcomes.append("batch first" if got["delete"] == 400 else "batch done, then deleted")
    client.close()
    assert outcomes  # which orders happened is up to the scheduler; each was clean
