"""Tenant isolation of the Files and Batches API, with the real `openai` client: two projects
(alpha with two keys, beta) and a key without a project; every files/batches route tried by
every other tenant on every object. Also: old data dirs (no owner column) migrate, and their
unowned rows are visible only while the server runs without keys."""

from __future__ import annotations

import json
import sqlite3
import time

import openai
import pytest

from conftest import TINY_MODEL, start_server

KEYS = {"alpha": "k-alpha-one", "alpha2": "k-alpha-two", "beta": "k-beta", "solo": "k-solo"}
TENANT = {"alpha": "alpha", "alpha2": "alpha", "beta": "beta", "solo": "solo"}  # who shares with whom
LINE = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny", "input": "hello"}}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tenants")
    proc = start_server(tmp_path_factory, "tenants", [
        "--model", f"tiny={TINY_MODEL}", "--data-dir", str(data_dir),
        "--api-key", f"{KEYS['alpha']}:alpha", "--api-key", f"{KEYS['alpha2']}:alpha",
        "--api-key", f"{KEYS['beta']}:beta", "--api-key", KEYS["solo"]])
    clients = {name: openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0) for name, key in KEYS.items()}
    yield proc, clients
    for client in clients.values():
        client.close()
    assert proc.stop() == 0, proc.log()


def wait_done(client, batch_id: str):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")


def make_objects(client) -> dict:
    """A file, a finished batch (with its output file) and a batch left running (to cancel)."""
    upload = client.files.create(file=("in.jsonl", json.dumps(LINE).encode() + b"\n"), purpose="batch")
    done = wait_done(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                                                   completion_window="24h").id)
    assert done.status == "completed" and done.output_file_id
    big = b"".join(json.dumps({**LINE, "custom_id": f"c{i}"}).encode() + b"\n" for i in range(2000))
    big_file = client.files.create(file=("big.jsonl", big), purpose="batch")
    running = client.batches.create(input_file_id=big_file.id, endpoint="/v1/embeddings", completion_window="24h")
    return {"files": [upload.id, done.output_file_id, big_file.id], "batches": [done.id, running.id]}


def leaks(client, objects: dict) -> list[str]:
    """Every files/batches route tried on someone else's objects: what should have been a 404 and was not."""
    found = []
    listed_files = {f.id for f in client.files.list()}
    listed_files |= {f.id for f in client.files.list(order="asc")}
    listed_batches = {b.id for b in client.batches.list(limit=100)}
    for file_id in objects["files"]:
        if file_id in listed_files:
            found.append(f"files.list shows {file_id}")
        for name, call in (("files.retrieve", lambda: client.files.retrieve(file_id)),
                           ("files.content", lambda: client.files.content(file_id)),
                           ("files.delete", lambda: client.files.delete(file_id)),
                           ("batches.create", lambda: client.batches.create(
                               input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"))):
            try:
                call()
                found.append(f"{name} {file_id}")
            except openai.NotFoundError:
                pass
        # paging from another tenant's id reveals nothing either
        if list(client.files.list(after=file_id)):
            found.append(f"files.list(after={file_id}) pages from it")
    for batch_id in objects["batches"]:
        if batch_id in listed_batches:
            found.append(f"batches.list shows {batch_id}")
        for name, call in (("batches.retrieve", lambda: client.batches.retrieve(batch_id)),
                           ("batches.cancel", lambda: client.batches.cancel(batch_id))):
            try:
                call()
                found.append(f"{name} {batch_id}")
            except openai.NotFoundError:
                pass
        if list(client.batches.list(after=batch_id)):
            found.append(f"batches.list(after={batch_id}) pages from it")
    return found


def test_isolation_matrix(tenants):
    server, clients = tenants
    owners = ("alpha", "beta", "solo")
    objects = {owner: make_objects(clients[owner]) for owner in owners}
    checked, all_leaks = 0, []
    for owner in owners:
        for other, client in clients.items():
            if TENANT[other] == owner:
                continue
            all_leaks += [f"{other} -> {owner}: {leak}" for leak in leaks(client, objects[owner])]
            checked += 1
    assert checked == 8  # 4 keys x 3 owners, minus each owner's own 4 (alpha has two keys)
    assert all_leaks == []
    # the objects are all still there for their owners (no foreign delete or cancel went through)
    for owner in owners:
        client = clients[owner]
        assert {f.id for f in client.files.list()} >= set(objects[owner]["files"])
        assert client.batches.retrieve(objects[owner]["batches"][1]).status in ("validating", "in_progress",
                                                                                  "finalizing", "completed")
    # a project's keys share: alpha's second key sees and can use alpha's objects
    second = clients["alpha2"]
    assert second.files.retrieve(objects["alpha"]["files"][0]).id == objects["alpha"]["files"][0]
    assert second.files.content(objects["alpha"]["files"][1]).text.startswith("{")
    assert {b.id for b in second.batches.list()} >= set(objects["alpha"]["batches"])
    try:
        second.batches.cancel(objects["alpha"]["batches"][1])
    except openai.BadRequestError:  # it finished already: visible to the project (not a 404)
        pass
    assert "Traceback" not in server.log()


def test_a_file_in_use_by_another_tenant_is_still_404(tenants):
    _, clients = tenants
    upload = clients["beta"].files.create(file=("x.jsonl", json.dumps(LINE).encode() + b"\n"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        clients["solo"].files.delete(upload.id)
    clients["beta"].files.delete(upload.id)  # its owner can


# -- data dirs from before ownership --------------------------------------------------------------------

OLD_FILES = """CREATE TABLE files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER)"""


def old_data_dir(path) -> str:
    (path / "files").mkdir(parents=True)
    db = sqlite3.connect(path / "state.sqlite3")
    db.execute(OLD_FILES)
    db.execute("INSERT INTO files (id, purpose, filename, bytes, created_at) VALUES ('file-old', 'batch', "
               "'old.jsonl', 3, 1)")
    db.commit()
    db.close()
    (path / "files" / "file-old").write_bytes(b"{}\n")
    return str(path)


def test_old_data_dir_migrates_and_unowned_rows_need_a_keyless_server(tmp_path_factory):
    data_dir = old_data_dir(tmp_path_factory.mktemp("old-data"))
    keyed = start_server(tmp_path_factory, "old-keyed", ["--model", f"tiny={TINY_MODEL}", "--data-dir", data_dir,
                                                         "--api-key", "k-new:proj"])
    try:
        with openai.OpenAI(base_url=keyed.url + "/v1", api_key="k-new", max_retries=0) as client:
            assert [f.id for f in client.files.list()] == []
            with pytest.raises(openai.NotFoundError):
                client.files.retrieve("file-old")
            fresh = client.files.create(file=("n.jsonl", json.dumps(LINE).encode() + b"\n"), purpose="batch")
    finally:
        assert keyed.stop() == 0
    open_server = start_server(tmp_path_factory, "old-open", ["--model", f"tiny={TINY_MODEL}", "--data-dir", data_dir])
    try:
        with openai.OpenAI(base_url=open_server.url + "/v1", api_key="none", max_retries=0) as client:
            assert client.files.retrieve("file-old").filename == "old.jsonl"
            assert {f.id for f in client.files.list()} == {"file-old", fresh.id}  # no keys: no filter
    finally:
        assert open_server.stop() == 0
