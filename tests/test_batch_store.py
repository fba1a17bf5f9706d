"""batch_store.Store: durable files and batches in sqlite (WAL) + a data folder.

What a user relies on: a file or result exists completely or not at all, a finished chunk is
never counted (or written) twice, retention deletes expired files but not one a running batch
reads, and a restart finds everything where it was.
"""

from __future__ import annotations

import sqlite3

import pytest

from tinyembed.jobs.store import Store


class Clock:
    def __init__(self, now: float = 1_700_000_000):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = Store(tmp_path / "data", clock=clock)
    yield s
    s.close()


def batch_row(batch_id: str, file_id: str, status: str = "validating", now: int = 1_700_000_000) -> dict:
    return dict(id=batch_id, input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h",
                status=status, owner=None, created_at=now, expires_at=now + 86400)


def test_state_is_a_wal_database_in_the_data_dir(store, tmp_path):
    assert (tmp_path / "data" / "state.sqlite3").is_file()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_file_bytes_and_row_survive_a_reopen(tmp_path, clock):
    store = Store(tmp_path / "d", clock=clock)
    row = store.add_file([b'{"a":', b"1}\n"], "in.jsonl", "batch", expires_in=3600)
    store.close()  # as after a restart
    again = Store(tmp_path / "d", clock=clock)
    assert {k: v for k, v in again.get_file(row["id"]).items() if k != "seq"} == row
    assert row["bytes"] == 8 and row["expires_at"] == row["created_at"] + 3600
    assert again.file_path(row["id"]).read_bytes() == b'{"a":1}\n'
    again.close()


def test_a_failed_write_leaves_no_file_and_no_row(store):
    def parts():
        yield b"half"
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.add_file(parts(), "x.jsonl", "batch", None)
    assert store.list_files(None, None, 100, "desc") == ([], False)
    assert all(p.name.endswith(".part") for p in store.files_dir.iterdir())  # never under its real name
    store.sweep(orphans=True)
    assert list(store.files_dir.iterdir()) == []


def test_orphans_from_a_crash_are_removed_at_start_but_rows_are_kept(store):
    kept = store.add_file([b"{}\n"], "a.jsonl", "batch", None)
    (store.files_dir / "file-orphan").write_bytes(b"written, never committed")
    (store.files_dir / "file-x.part").write_bytes(b"half written")
    store.sweep(orphans=True)
    assert sorted(p.name for p in store.files_dir.iterdir()) == [kept["id"]]


def test_retention_deletes_expired_files_except_the_input_of_an_unfinished_batch(store, clock):
    old = store.add_file([b"{}\n"], "old.jsonl", "batch", expires_in=60)
    busy = store.add_file([b"{}\n"], "busy.jsonl", "batch", expires_in=60)
    forever = store.add_file([b"{}\n"], "forever.jsonl", "batch", expires_in=None)
    store.add_batch(batch_row("batch_busy", busy["id"], status="in_progress"))
    assert store.sweep() == []  # nothing expired yet
    clock.now += 61
    assert store.sweep() == [old["id"]]
    assert store.get_file(old["id"]) is None and not store.file_path(old["id"]).exists()
    assert store.get_file(busy["id"]) and store.get_file(forever["id"])
    store.update_batch("batch_busy", status="completed")
    assert store.sweep() == [busy["id"]]


def test_paging_newest_first_with_after_cursor(store):
    ids = [store.add_file([b"{}\n"], f"{i}.jsonl", "batch", None)["id"] for i in range(5)]
    page, more = store.list_files(None, None, 2, "desc")
    assert [r["id"] for r in page] == ids[:2:-1][:2] == [ids[4], ids[3]] and more
    page, more = store.list_files(None, ids[3], 2, "desc")
    assert [r["id"] for r in page] == [ids[2], ids[1]] and more
    page, more = store.list_files(None, ids[1], 2, "desc")
    assert [r["id"] for r in page] == [ids[0]] and not more
    assert [r["id"] for r in store.list_files(None, None, 10, "asc")[0]] == ids
    assert store.list_files("batch_output", None, 10, "desc") == ([], False)


def test_a_chunk_is_counted_and_stored_once_even_if_finished_twice(store):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_1", f["id"]))
    assert store.start_batch("batch_1", [(0, 10, 1), (10, 20, 5)], dict(status="in_progress", total=8))
    store.finish_chunk("batch_1", 0, b"a\nb\n", b"e\n", 2, 1)
    store.finish_chunk("batch_1", 0, b"a\nb\n", b"e\n", 2, 1)  # redone after a crash: ignored
    batch = store.get_batch("batch_1")
    assert (batch["completed"], batch["failed"]) == (2, 1)
    assert [c["idx"] for c in store.pending_chunks("batch_1")] == [1]


def test_validation_result_is_not_applied_to_a_cancelled_batch(store):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_c", f["id"]))
    store.request_cancel("batch_c")
    assert not store.start_batch("batch_c", [(0, 3, 1)], dict(status="in_progress"))
    assert store.get_batch("batch_c")["status"] == "cancelling"
    assert store.pending_chunks("batch_c") == []


def test_finalize_makes_files_and_status_visible_together(store):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_f", f["id"]))
    store.start_batch("batch_f", [(0, 1, 1), (1, 2, 2), (2, 3, 3)], dict(status="in_progress", total=3))
    store.finish_chunk("batch_f", 2, b"third\n", b"", 1, 0)
    store.finish_chunk("batch_f", 0, b"first\n", b"", 1, 0)
    store.finish_chunk("batch_f", 1, b"", b"second failed\n", 0, 1)
    assert store.get_batch("batch_f")["output_file_id"] is None  # nothing exposed before finalize
    batch = store.finalize("batch_f", dict(status="completed", completed_at=store.now()), expires_in=100)
    assert batch["status"] == "completed"
    assert store.file_path(batch["output_file_id"]).read_bytes() == b"first\nthird\n"  # input order
    assert store.file_path(batch["error_file_id"]).read_bytes() == b"second failed\n"
    out = store.get_file(batch["output_file_id"])
    assert out["purpose"] == "batch_output" and out["filename"] == "batch_f_output.jsonl"
    assert out["expires_at"] == out["created_at"] + 100
    assert store.db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0


def test_no_error_file_when_nothing_failed(store):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_ok", f["id"]))
    store.start_batch("batch_ok", [(0, 1, 1)], dict(status="in_progress", total=1))
    store.finish_chunk("batch_ok", 0, b"ok\n", b"", 1, 0)
    batch = store.finalize("batch_ok", dict(status="completed"))
    assert batch["output_file_id"] and batch["error_file_id"] is None


def test_file_in_use_blocks_nothing_once_the_batch_is_done(store):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_u", f["id"], status="in_progress"))
    assert store.file_in_use(f["id"]) == "batch_u"
    store.update_batch("batch_u", status="cancelled")
    assert store.file_in_use(f["id"]) is None
    assert store.delete_file(f["id"]) and not store.delete_file(f["id"])


def test_concurrent_reader_sees_committed_state_only(store, tmp_path):
    f = store.add_file([b"{}\n"], "in.jsonl", "batch", None)
    store.add_batch(batch_row("batch_r", f["id"]))
    reader = sqlite3.connect(tmp_path / "data" / "state.sqlite3")
    store.db.execute("BEGIN IMMEDIATE")
    store.db.execute("UPDATE batches SET status = 'in_progress' WHERE id = 'batch_r'")
    assert reader.execute("SELECT status FROM batches").fetchone()[0] == "validating"  # WAL: readers not blocked
    store.db.execute("ROLLBACK")
    reader.close()


def test_one_process_per_data_dir(store, tmp_path):
    from tinyembed.common.errors import TinyEmbedError

    with pytest.raises(TinyEmbedError, match="in use by another tinyembed process"):
        Store(tmp_path / "data")
