"""The SQLite outbox's schema, statements and file handling (used by `sqlite.py`)."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Final

from ..errors import OutboxError
from .base import UNCONFIRMED_CODE

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    identifier TEXT NOT NULL UNIQUE,
    event_name TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    model TEXT NOT NULL,
    token_type TEXT NOT NULL,
    value INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    created REAL NOT NULL,
    delivered REAL,
    unconfirmed REAL,
    api TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, next_attempt, id);
CREATE INDEX IF NOT EXISTS events_delivered ON events (delivered) WHERE status='delivered';
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    code TEXT NOT NULL,
    field TEXT NOT NULL,
    message TEXT NOT NULL,
    record TEXT NOT NULL,
    resolved REAL
);
CREATE TABLE IF NOT EXISTS adjustments (
    identifier TEXT PRIMARY KEY,
    event_name TEXT NOT NULL,
    status TEXT NOT NULL,
    error_message TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (segment TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""
_ADDED_COLUMNS: Final = (("events", "unconfirmed"), ("rejected", "resolved"), ("events", "api"))
"""Columns later versions added (NULL by default): added to older files on open."""
_ADDED_TYPES: Final = {("events", "api"): "TEXT"}
"""Types of `_ADDED_COLUMNS` that are not REAL. `events.api`: 'v1' or 'v2', the API the
event was recorded to be sent with (NULL: written before the column existed)."""
_STAMP: Final = "unconfirmed=COALESCE(unconfirmed, ?)"
"""The first time a row may have reached Stripe is kept; a NULL parameter keeps it as is."""
_EXPIRE_SQL: Final = (
    "UPDATE events SET status='dead', lease_owner=NULL, lease_until=0, error_code=?,"
    " error_message='sent at ' || strftime('%Y-%m-%dT%H:%M:%SZ', unconfirmed, 'unixepoch')"
    " || ' without a confirmed answer (last error: ' || COALESCE(error_code, 'none')"
    " || '), and Stripe refuses a repeated identifier for 24 hours only: sending it again now"
    " could bill it twice. Check this customer''s usage for that time in Stripe; if it is"
    " missing there, `stripe-token-meter replay --code " + UNCONFIRMED_CODE + "` sends it'"
)
"""Dead-letters claimed rows by id (`... WHERE id IN (...)` is appended)."""


WAL_CHECKPOINT_PAGES: Final = 10_000
"""Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB. Random identifiers dirty a
different index page per insert, so a 500-record commit writes ~2 MB of pages; checkpoints
every few commits copied (and synced) the same hot pages again and again: 9.8 -> 6.1 us of
commit per event (benchmarks/README.md, finding 16)."""
_PRUNE_SQL: Final = (
    "DELETE FROM events WHERE id IN ("
    " SELECT id FROM events INDEXED BY events_delivered"
    " WHERE status='delivered' AND delivered<? AND timestamp<? ORDER BY delivered LIMIT ?)"
)
"""`INDEXED BY`: the partial index `events_delivered`, never a scan (SQLite refuses the
statement rather than fall back). `timestamp<?` as well: an event timestamped up to 5
minutes ahead stays until its own timestamp is past the window too."""

_INSERT_COLUMNS: Final = (
    "identifier, event_name, customer_id, model, token_type, value, timestamp, payload,"
    " status, created, delivered, lease_owner, lease_until, api"
)
_N_COLUMNS: Final = 14
_INSERT_SQL: dict[int, str] = {}


def _insert_sql(n: int) -> str:
    """One INSERT of `n` rows. `executemany` steps the statement once per row, and each step
    gives up the GIL and must win it back from the event loop's thread: one multi-row
    statement per batch delivered ~4 % more end to end (finding 16)."""
    sql = _INSERT_SQL.get(n)
    if sql is None:
        one = "(" + ",".join("?" * _N_COLUMNS) + ")"
        sql = _INSERT_SQL[n] = (
            f"INSERT OR IGNORE INTO events ({_INSERT_COLUMNS}) VALUES " + ",".join([one] * n)
        )
    return sql


def _chunk(remaining: int, most: int) -> int:
    """Rows for the next INSERT: `most`, else the largest power of two that fits, so only a
    dozen statement sizes are ever prepared (each is cached by sqlite3, and a 500-row one
    is large)."""
    if remaining >= most:
        return most
    return 1 << (remaining.bit_length() - 1)


_REJECT_SQL: Final = (
    "INSERT INTO rejected (created, code, field, message, record) VALUES (?,?,?,?,?)"
)
_PROGRESS_SQL: Final = "INSERT OR REPLACE INTO journal (segment, offset) VALUES (?,?)"
_EVENT_COLUMNS: Final = frozenset(
    {"identifier", "event_name", "customer_id", "value", "payload", "status", "lease_until"}
)
"""Columns any outbox version has: a file whose `events` lacks them is someone else's."""

_compact = json.JSONEncoder(separators=(",", ":")).encode
"""`json.dumps(separators=...)` builds a new encoder per call: 0.8 us of 2.4 per event."""


def _record_json(record: dict[str, Any]) -> str:
    return json.dumps(record, default=repr, sort_keys=True)


def _owner_is_dead(owner: str, host: str) -> bool:
    """Owners are `host:pid:nonce`; only a process on this host can be checked."""
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """`_ADDED_COLUMNS` an older file lacks (none of a table the file does not have)."""
    missing = []
    for table, column in _ADDED_COLUMNS:
        columns = {r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")}
        if columns and column not in columns:
            missing.append((table, column))
    return missing


def _create_private(path: str) -> None:
    """Create the file 0600 (its directory 0700) before SQLite does: it holds customer ids
    and usage. SQLite gives its -wal and -shm files the database file's permissions."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _outbox_error(path: str, exc: sqlite3.Error, readonly: bool) -> OutboxError:
    """A raw SQLite failure on open -> what it means for this file and what to do."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        why = (
            "is not a SQLite database (corrupt, or some other file): move it aside; a new "
            "outbox is created at the path (events still in the old file are not sent)"
        )
    elif "readonly" in text or "unable to open" in text:
        why = (
            f"cannot be {'opened' if readonly else 'opened for writing'} ({text}): check the "
            "file's and its directory's permissions, or choose another path"
        )
    elif "malformed" in text:
        why = (
            f"is damaged ({text}): copy it aside and try `sqlite3 FILE .recover`; a new "
            "outbox is created if you move it away"
        )
    else:
        why = f"cannot be used: {type(exc).__name__}: {text}"
    return OutboxError(path, why)
