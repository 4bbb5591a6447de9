"""SQLite storage of aggregation windows (see `aggregate.py` for the rules).

Every function runs inside the caller's transaction on the outbox's connection, so the
sums, the calls' identifiers, the journal progress and the window's event are committed
together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..aggregate import Aggregation, window_identifier
from ..events import MeterEvent

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    event_name TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    model TEXT NOT NULL,
    token_type TEXT NOT NULL,
    key TEXT NOT NULL,
    start INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    value INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    close_at REAL NOT NULL,
    status TEXT NOT NULL,
    identifier TEXT,
    created REAL NOT NULL,
    value_key TEXT NOT NULL,
    becomes TEXT NOT NULL,
    api TEXT,
    UNIQUE (event_name, key, start, generation)
);
CREATE INDEX IF NOT EXISTS windows_open ON windows (close_at) WHERE status='open';
CREATE TABLE IF NOT EXISTS window_calls (
    identifier TEXT PRIMARY KEY,
    window_id INTEGER NOT NULL,
    created REAL NOT NULL
);
"""
"""`windows.key`: the event's payload without its value (customer, model, token type and
every dimension), compact JSON with sorted keys; `value_key`, `becomes` (the status its
event gets: pending, or local for the ledger) and `api` are the recording meter's, so any
process on the outbox (or `stripe-token-meter flush`) can close it. `window_calls`: each summed call's own
event identifier, kept as long as delivered events are (`prune`), so a call recorded again
is refused rather than summed twice."""

_compact = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def add(
    conn: sqlite3.Connection,
    events: Sequence[MeterEvent],
    agg: Aggregation,
    now: float,
    becomes: str,
    api: str | None,
) -> int:
    """Sum `events` into their open windows; a call's event already summed is skipped.
    Returns how many were summed (the rest were repeats)."""
    added = 0
    for e in events:
        if conn.execute(
            "SELECT 1 FROM window_calls WHERE identifier=?", (e.identifier,)
        ).fetchone():
            continue
        if conn.execute("SELECT 1 FROM events WHERE identifier=?", (e.identifier,)).fetchone():
            continue  # sent one by one before aggregation was turned on
        payload = {k: v for k, v in e.payload.items() if k != agg.value_key}
        key = _compact(payload)
        start = agg.start(e.timestamp)
        row = conn.execute(
            "SELECT id FROM windows WHERE event_name=? AND key=? AND start=? AND status='open'",
            (e.event_name, key, start),
        ).fetchone()
        if row is not None:
            window_id = int(row[0])
            conn.execute(
                "UPDATE windows SET value=value+?, calls=calls+1 WHERE id=?", (e.value, window_id)
            )
        else:
            (gen,) = conn.execute(
                "SELECT COALESCE(MAX(generation)+1, 0) FROM windows"
                " WHERE event_name=? AND key=? AND start=?",
                (e.event_name, key, start),
            ).fetchone()
            # A late call's window (generation > 0) waits one grace for its neighbours.
            close_at = max(start + agg.seconds, now) + agg.grace
            cur = conn.execute(
                "INSERT INTO windows (event_name, customer_id, model, token_type, key, start,"
                " generation, value, calls, close_at, status, created, value_key, becomes, api)"
                " VALUES (?,?,?,?,?,?,?,?,1,?,'open',?,?,?,?)",
                (
                    e.event_name,
                    e.customer_id,
                    e.model,
                    e.token_type,
                    key,
                    start,
                    int(gen),
                    e.value,
                    close_at,
                    now,
                    agg.value_key,
                    becomes,
                    api,
                ),
            )
            window_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO window_calls (identifier, window_id, created) VALUES (?,?,?)",
            (e.identifier, window_id, now),
        )
        added += 1
    return added


def close(
    conn: sqlite3.Connection,
    now: float,
    everything: bool,
    insert: Callable[[list[MeterEvent], str, str | None], Any],
) -> int:
    """Close the windows due by `now` (all open ones if `everything`): each becomes one
    event, handed to `insert(events, status, api)` (the outbox's own insert, in the same
    transaction). Returns how many."""
    sql = (
        "SELECT id, event_name, customer_id, model, token_type, key, start, generation, value,"
        " value_key, becomes, api FROM windows WHERE status='open'"
    )
    rows = conn.execute(
        sql if everything else sql + " AND close_at<=?", () if everything else (now,)
    )
    due = rows.fetchall()
    if not due:
        return 0
    groups: dict[tuple[str, str | None], list[MeterEvent]] = {}
    for wid, name, customer, model, token_type, key, start, gen, value, vkey, becomes, api in due:
        ident = window_identifier(name, customer, model, token_type, key, start, gen)
        payload = {**json.loads(key), vkey: str(value)}
        groups.setdefault((becomes, api), []).append(
            MeterEvent(
                identifier=ident,
                event_name=name,
                timestamp=int(start),
                customer_id=customer,
                model=model,
                token_type=token_type,
                value=int(value),
                payload=payload,
            )
        )
        conn.execute("UPDATE windows SET status='closed', identifier=? WHERE id=?", (ident, wid))
    for (becomes, api), events in groups.items():
        insert(events, becomes, api)
    return len(due)


def window_of_call(conn: sqlite3.Connection, identifier: str) -> tuple[str, str | None] | None:
    """(status, event identifier) of the window a call's event was summed into, if any."""
    row = conn.execute(
        "SELECT w.status, w.identifier FROM window_calls c JOIN windows w ON w.id=c.window_id"
        " WHERE c.identifier=?",
        (identifier,),
    ).fetchone()
    return None if row is None else (str(row[0]), row[1])


def any_open(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT EXISTS(SELECT 1 FROM windows WHERE status='open')").fetchone()
    return bool(row[0])


def open_count(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT COUNT(*) FROM windows WHERE status='open'").fetchone()[0])
    except sqlite3.OperationalError:  # a read-only open of a file from before windows
        return 0


def prune(conn: sqlite3.Connection, older_than: float, limit: int) -> int:
    """Forget summed calls and closed windows older than `older_than` (the delivered-row
    retention): by then Stripe refuses their timestamps, so a repeat could not be sent."""
    n = conn.execute(
        "DELETE FROM window_calls WHERE rowid IN (SELECT rowid FROM window_calls"
        " WHERE created<? LIMIT ?)",
        (older_than, limit),
    ).rowcount
    n += conn.execute(
        "DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE status='closed'"
        " AND start<? AND created<? LIMIT ?)",
        (older_than, older_than, limit),
    ).rowcount
    return n
