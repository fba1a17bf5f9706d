"""Tenant isolation of the Files and Batches API, with the real `openai` client: two projects
(alpha with two keys, beta) and a key without a project; every files/batches route tried by
every other tenant on every object. Also: old data dirs (no owner column) migrate, and their
unowned rows are visible only while the server runs without keys."""

from __future__ import annotations

import json
import sqlite3

import openai
import pytest

from conftest import TINY_MODEL, start_server
from test_batch_api import wait as wait_done

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


def not_404(calls) -> list[str]:
    """The names of the calls that did not raise NotFoundError (each one a leak)."""
    found = []
    for name, call in calls:
        try:
            call()
            found.append(name)
        except openai.NotFoundError:
            pass
    return found


def leaks(client, objects: dict) -> list[str]:
    """Every files/batches route tried on someone else's objects: what should have been a 404 and was not."""
    found = []
    listed = {f.id for f in client.files.list()} | {f.id for f in client.files.list(order="asc")}
    listed |= {b.id for b in client.batches.list(limit=100)}
    for file_id in objects["files"]:
        found += not_404([
            (f"files.retrieve {file_id}", lambda: client.files.retrieve(file_id)),
            (f"files.content {file_id}", lambda: client.files.content(file_id)),
            (f"files.delete {file_id}", lambda: client.files.delete(file_id)),
            (f"batches.create on {file_id}", lambda: client.batches.create(
                input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"))])
        if list(client.files.list(after=file_id)):  # paging from another tenant's id reveals nothing
            found.append(f"files.list(after={file_id}) pages from it")
    for batch_id in objects["batches"]:
        found += not_404([(f"batches.retrieve {batch_id}", lambda: client.batches.retrieve(batch_id)),
                          (f"batches.cancel {batch_id}", lambda: client.batches.cancel(batch_id))])
        if list(client.batches.list(after=batch_id)):
            found.append(f"batches.list(after={batch_id}) pages from it")
    found += [f"listed: {object_id}" for object_id in listed & {*objects["files"], *objects["batches"]}]
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


@pytest.mark.parametrize("spec,key,project", [("k", "k", None), ("k:proj", "k", "proj"), ("k:", "k", None),
                                               ("a:b:proj", "a:b", "proj"), ("k:has space", "k:has space", None),
                                               (":proj", ":proj", None)])
def test_key_and_project_split(spec, key, project):
    from tinyembed.server.auth import split_key

    assert split_key(spec) == (key, project)
