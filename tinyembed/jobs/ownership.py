"""Who may see a file or a batch (issue 14: tenants kept apart).

Every file and batch row has an `owner`: `project:NAME` when the creating key names a project
(`--api-key KEY:PROJECT`), else that key's fingerprint (`key-...`), or NULL when the server runs
without API keys. A request sees a row only if the row's owner is one of `ApiKeys.owners(key)`;
anything else is answered exactly like an id that does not exist (404, never listed), so a key
cannot even learn that another tenant's id exists.

Without keys there is no filter: everything is visible, as before ownership existed.

Data dirs from before ownership: the `files.owner` column is added on open (NULL for old rows),
and batches made without keys carry `client:ADDRESS` there. Both count as unowned: visible while
the server runs without keys, invisible to every key once keys are configured. To hand such rows
to a tenant, stop the server and run e.g.
    sqlite3 DATA_DIR/state.sqlite3 "UPDATE files SET owner='project:NAME' WHERE owner IS NULL"
(and the same for `batches ... WHERE owner IS NULL OR owner LIKE 'client:%'`).
"""

from __future__ import annotations

import sqlite3


def owned_by(owners: tuple[str, ...] | None) -> tuple[str, tuple]:
    """An SQL condition (and its arguments) that keeps only rows `owners` may see."""
    if owners is None:
        return "1", ()
    if not owners:
        return "0", ()
    return f"owner IN ({', '.join('?' * len(owners))})", tuple(owners)


def batch_owner(row: dict | None) -> str | None:
    """The owner a batch passes to its result files (a pre-ownership `client:` owner is none)."""
    owner = row.get("owner") if row else None
    return None if owner is None or owner.startswith("client:") else owner


def migrate(db: sqlite3.Connection) -> None:
    """Bring a data dir from before ownership up to date (idempotent)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    if "owner" not in columns:
        db.execute("ALTER TABLE files ADD COLUMN owner TEXT")
