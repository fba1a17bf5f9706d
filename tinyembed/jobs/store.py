"""Durable state of the Files and Batches API: one sqlite3 database (WAL) and the file contents,
both under --data-dir.

    DATA_DIR/state.sqlite3      files, batches, and the finished chunks of running batches
    DATA_DIR/files/<file id>    the bytes of every file (uploads and batch outputs)
    DATA_DIR/lock               held (flock) by the one process that uses the folder

Why it survives kill -9: a file's bytes are written to a temporary name, fsynced and renamed
before its row is committed, so a row never points at a partial file (a file without a row is
an orphan, removed at the next start). A batch's results are committed chunk by chunk: the
chunk's output lines and its "done" mark go in one transaction, so after a crash a chunk is
either wholly there or redone from scratch, and no custom_id is ever written twice. The output
file is assembled only at finalize, under a new id, and becomes visible in the same transaction
that marks the batch completed.

Every method is blocking; the server calls them on one dedicated thread (`Store.call`), which
also serializes all access to the connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

from tinyembed.common.errors import TinyEmbedError
from tinyembed.jobs.ownership import batch_owner, migrate, owned_by

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # the job runner owns these
TERMINAL = ("failed", "completed", "expired", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    owner TEXT            -- project:NAME or a key fingerprint; NULL: made without API keys
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
    output_file_id TEXT, error_file_id TEXT,
    output_expires_after INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    errors TEXT,          -- JSON list of {code, message, param, line}
    duplicates TEXT,      -- JSON list of line numbers whose custom_id was seen before
    metadata TEXT         -- JSON object
);
CREATE TABLE IF NOT EXISTS chunks (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start INTEGER NOT NULL,      -- byte range [start, end) of the input file
    end INTEGER NOT NULL,
    first_line INTEGER NOT NULL, -- 1-based line number of the byte at `start`
    done INTEGER NOT NULL DEFAULT 0,
    output BLOB, errors BLOB,    -- the chunk's result lines, once done
    PRIMARY KEY (batch_id, idx)
);
"""


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def write_atomically(path: Path, parts: Iterable[bytes]) -> int:
    """Write `parts` to `path` so that a reader (or a restart) sees all of it or nothing."""
    tmp = path.with_name(path.name + ".part")
    size = 0
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return size


def _lock_dir(root: Path) -> int:
    """An exclusive lock on DATA_DIR/lock for this process's lifetime (the OS drops it on kill -9)."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TinyEmbedError(f"--data-dir {root} is in use by another tinyembed process") from None
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, data_dir: str | Path, clock=time.time):
        self.root = Path(data_dir).expanduser()
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_dir(self.root)  # one process per data dir: two would run the same jobs
        self.clock = clock
        self.db = sqlite3.connect(self.root / "state.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit the client was told about stays
        self.db.executescript(SCHEMA)
        migrate(self.db)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tinyembed-store")

    async def call(self, fn, *args, **kwargs):
        """Run a blocking Store method on the store's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.db.close()
        os.close(self._lock)

    def now(self) -> int:
        return int(self.clock())

    def _tx(self):
        return _Transaction(self.db)

    # -- files ------------------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(self, parts: Iterable[bytes], filename: str, purpose: str, expires_in: int | None,
                 owner: str | None = None) -> dict:
        """Write the bytes durably, then commit the row: the file exists once this returns.
        `expires_in`: seconds until retention deletes it (None: kept until deleted)."""
        row = self._write_file(parts, filename, purpose, expires_in, owner)
        with self._tx():
            self._insert("files", row)
        return row

    def _write_file(self, parts: Iterable[bytes], filename: str, purpose: str, expires_in: int | None,
                    owner: str | None = None) -> dict:
        file_id = new_id("file-")
        size = write_atomically(self.file_path(file_id), parts)
        now = self.now()
        return dict(id=file_id, purpose=purpose, filename=filename, bytes=size, created_at=now,
                    expires_at=None if expires_in is None else now + expires_in, owner=owner)

    def _insert(self, table: str, row: dict) -> None:
        names = ", ".join(row)
        self.db.execute(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def get_file(self, file_id: str, owners: tuple[str, ...] | None = None) -> dict | None:
        """`owners`: only a file one of them owns (None: any file; ownership.py says who)."""
        clause, args = owned_by(owners)
        row = self.db.execute(f"SELECT * FROM files WHERE id = ? AND {clause}", (file_id, *args)).fetchone()
        return dict(row) if row else None

    def list_files(self, purpose: str | None, after: str | None, limit: int, order: str,
                   owners: tuple[str, ...] | None = None) -> tuple[list[dict], bool]:
        return self._page("files", after, limit, order, ("purpose = ?", purpose) if purpose else None, owners)

    def _page(self, table: str, after: str | None, limit: int, order: str, where=None,
              owners: tuple[str, ...] | None = None) -> tuple[list[dict], bool]:
        """Cursor paging by `after` (an id), newest first (`desc`) or oldest first (`asc`)."""
        clause, owner_args = owned_by(owners)
        clauses, args = [clause], list(owner_args)
        if where:
            clauses.append(where[0])
            args.append(where[1])
        if after:
            cursor = self.db.execute(f"SELECT seq FROM {table} WHERE id = ? AND {clause}",
                                     (after, *owner_args)).fetchone()
            if cursor is None:
                return [], False
            clauses.append("seq < ?" if order == "desc" else "seq > ?")
            args.append(cursor[0])
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += f" ORDER BY seq {'DESC' if order == 'desc' else 'ASC'} LIMIT ?"
        rows = [dict(r) for r in self.db.execute(sql, (*args, limit + 1))]
        return rows[:limit], len(rows) > limit

    def file_in_use(self, file_id: str) -> str | None:
        """The id of an unfinished batch that reads this file, if any."""
        row = self.db.execute(f"SELECT id FROM batches WHERE input_file_id = ? AND status IN {ACTIVE}",
                              (file_id,)).fetchone()
        return row[0] if row else None

    def delete_file(self, file_id: str) -> bool:
        with self._tx():
            deleted = self.db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    def delete_unused_file(self, file_id: str) -> str | bool:
        """Delete a file unless an unfinished batch reads it, in one transaction (so a batch
        created on it at the same moment either sees it deleted or keeps it): the id of that
        batch, else whether a file was deleted."""
        with self._tx():
            user = self.file_in_use(file_id)
            if user is not None:
                return user
            deleted = self.db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    def sweep(self, orphans: bool = False) -> list[str]:
        """Retention: delete expired files, except those an unfinished batch still reads.
        `orphans` (at start only): also delete bytes on disk without a row, left by a crash
        between a file's write and its commit."""
        now = self.now()
        expired = [r[0] for r in self.db.execute(
            f"SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? AND id NOT IN "
            f"(SELECT input_file_id FROM batches WHERE status IN {ACTIVE})", (now,))]
        for file_id in expired:
            self.delete_file(file_id)
        if orphans:
            known = {r[0] for r in self.db.execute("SELECT id FROM files")}
            for path in self.files_dir.iterdir():
                if path.name not in known:
                    path.unlink(missing_ok=True)
        return expired

    # -- batches ----------------------------------------------------------------------------------
    def add_batch(self, row: dict) -> dict:
        with self._tx():
            self._insert("batches", row)
        return self.get_batch(row["id"])

    def add_batch_on_file(self, row: dict, owners: tuple[str, ...] | None = None) -> dict | None:
        """add_batch, only if its input file still exists (and `owners` may see it), checked in
        the same transaction as the insert; None when it does not (deleted meanwhile)."""
        clause, args = owned_by(owners)
        with self._tx():
            if self.db.execute(f"SELECT 1 FROM files WHERE id = ? AND {clause}",
                               (row["input_file_id"], *args)).fetchone() is None:
                return None
            self._insert("batches", row)
        return self.get_batch(row["id"])

    def get_batch(self, batch_id: str, owners: tuple[str, ...] | None = None) -> dict | None:
        clause, args = owned_by(owners)
        row = self.db.execute(f"SELECT * FROM batches WHERE id = ? AND {clause}", (batch_id, *args)).fetchone()
        return dict(row) if row else None

    def list_batches(self, after: str | None, limit: int, owners: tuple[str, ...] | None = None
                     ) -> tuple[list[dict], bool]:
        return self._page("batches", after, limit, "desc", owners=owners)

    def next_active(self) -> dict | None:
        """The oldest batch the job runner still has work on (FIFO across batches)."""
        row = self.db.execute(f"SELECT * FROM batches WHERE status IN {ACTIVE} ORDER BY seq LIMIT 1").fetchone()
        return dict(row) if row else None

    def update_batch(self, batch_id: str, **fields) -> None:
        with self._tx():
            self._update(batch_id, fields)

    def _update(self, batch_id: str, fields: dict) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE batches SET {sets} WHERE id = ?", (*fields.values(), batch_id))

    def request_cancel(self, batch_id: str) -> dict | None:
        """validating/in_progress -> cancelling (other states are left as they are)."""
        with self._tx():
            self.db.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? AND "
                            "status IN ('validating', 'in_progress')", (self.now(), batch_id))
        return self.get_batch(batch_id)

    def start_batch(self, batch_id: str, chunks: list[tuple[int, int, int]], fields: dict) -> bool:
        """Validation's result, all at once: the chunk plan and the batch's new status. Returns
        False (and changes nothing) if the batch left `validating` meanwhile (a cancel)."""
        with self._tx():
            current = self.db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if current is None or current[0] != "validating":
                return False
            self.db.execute("DELETE FROM chunks WHERE batch_id = ?", (batch_id,))
            self.db.executemany("INSERT INTO chunks (batch_id, idx, start, end, first_line) VALUES (?, ?, ?, ?, ?)",
                                [(batch_id, i, *chunk) for i, chunk in enumerate(chunks)])
            self._update(batch_id, fields)
        return True

    def pending_chunks(self, batch_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT idx, start, end, first_line FROM chunks WHERE batch_id = ? AND done = 0 ORDER BY idx",
            (batch_id,))]

    def finish_chunk(self, batch_id: str, idx: int, output: bytes, errors: bytes, ok: int, failed: int) -> None:
        """One transaction: the chunk's lines, its done mark, and the batch's counts."""
        with self._tx():
            marked = self.db.execute("UPDATE chunks SET done = 1, output = ?, errors = ? WHERE batch_id = ? AND "
                                     "idx = ? AND done = 0", (output, errors, batch_id, idx)).rowcount
            if marked:
                self.db.execute("UPDATE batches SET completed = completed + ?, failed = failed + ? WHERE id = ?",
                                (ok, failed, batch_id))

    def chunk_results(self, batch_id: str, column: str) -> Iterator[bytes]:
        """The done chunks' output (or errors) lines, in input order."""
        assert column in ("output", "errors")
        for (blob,) in self.db.execute(f"SELECT {column} FROM chunks WHERE batch_id = ? AND done = 1 ORDER BY idx",
                                       (batch_id,)):
            if blob:
                yield bytes(blob)

    def _has_results(self, batch_id: str, column: str) -> bool:
        return self.db.execute(f"SELECT 1 FROM chunks WHERE batch_id = ? AND done = 1 AND length({column}) > 0 "
                               f"LIMIT 1", (batch_id,)).fetchone() is not None

    def finalize(self, batch_id: str, fields: dict, extra_errors: bytes = b"",
                 expires_in: int | None = None) -> dict:
        """Assemble the output and error files from the done chunks (plus `extra_errors`), then
        make them visible and the batch terminal in one transaction; the chunk rows go with it.
        A crash before the commit leaves only orphan bytes: finalize runs again after a restart."""
        files = []
        owner = batch_owner(self.get_batch(batch_id))  # the results belong to whoever owns the batch
        if self._has_results(batch_id, "output"):
            files.append(("output_file_id", self._write_file(self.chunk_results(batch_id, "output"),
                                                             f"{batch_id}_output.jsonl", "batch_output", expires_in,
                                                             owner)))
        if extra_errors or self._has_results(batch_id, "errors"):
            parts = [*self.chunk_results(batch_id, "errors"), extra_errors]
            files.append(("error_file_id", self._write_file(parts, f"{batch_id}_error.jsonl", "batch_output",
                                                            expires_in, owner)))
        with self._tx():
            for field, row in files:
                self._insert("files", row)
                fields = {**fields, field: row["id"]}
            self._update(batch_id, fields)
            self.db.execute("DELETE FROM chunks WHERE batch_id = ?", (batch_id,))
        return self.get_batch(batch_id)


def dump_json(value) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def load_json(text: str | None):
    return None if text is None else json.loads(text)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, kind, exc, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
