"""PostgreSQL storage of aggregation windows (the rules: `aggregate.py`; SQLite's twin:
`sqlite_windows.py`).

Every function runs on the caller's cursor, inside its transaction. Many hosts sum into
one outbox at once: a call's identifier is claimed with `ON CONFLICT DO NOTHING` (a
concurrent repeat waits for the first and is then skipped), an open window is locked
`FOR UPDATE` while summed, and closing skips windows another host holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..aggregate import Aggregation, window_identifier
from ..events import MeterEvent

MIGRATION: Final = """
CREATE TABLE IF NOT EXISTS windows (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_name text NOT NULL,
    customer_id text NOT NULL,
    model text NOT NULL,
    token_type text NOT NULL,
    key text NOT NULL,
    start bigint NOT NULL,
    generation integer NOT NULL,
    value bigint NOT NULL,
    calls integer NOT NULL,
    close_at double precision NOT NULL,
    status text NOT NULL,
    identifier text,
    created double precision NOT NULL,
    value_key text NOT NULL,
    becomes text NOT NULL,
    api text,
    UNIQUE (event_name, key, start, generation)
);
CREATE INDEX IF NOT EXISTS windows_open ON windows (close_at) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS window_calls (
    identifier text PRIMARY KEY,
    window_id bigint NOT NULL,
    created double precision NOT NULL
);
"""

_compact = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _open_window(cur: Any, e: MeterEvent, key: str, start: int) -> int | None:
    cur.execute(
        b"SELECT id FROM windows WHERE event_name = %s AND key = %s AND start = %s"
        b" AND status = 'open' FOR UPDATE",
        (e.event_name, key, start),
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def add(
    cur: Any,
    events: Sequence[MeterEvent],
    agg: Aggregation,
    now: float,
    becomes: str,
    api: str | None,
) -> int:
    """Sum `events` into their open windows; returns how many were summed (not repeats)."""
    added = 0
    for e in events:
        cur.execute(
            b"INSERT INTO window_calls (identifier, window_id, created) VALUES (%s, 0, %s)"
            b" ON CONFLICT (identifier) DO NOTHING RETURNING identifier",
            (e.identifier, now),
        )
        if cur.fetchone() is None:
            continue
        cur.execute(b"SELECT 1 FROM events WHERE identifier = %s", (e.identifier,))
        if cur.fetchone() is not None:  # sent one by one before aggregation was turned on
            cur.execute(b"DELETE FROM window_calls WHERE identifier = %s", (e.identifier,))
            continue
        key = _compact({k: v for k, v in e.payload.items() if k != agg.value_key})
        start = agg.start(e.timestamp)
        window_id = _open_window(cur, e, key, start)
        while window_id is None:
            cur.execute(
                b"SELECT COALESCE(MAX(generation) + 1, 0) FROM windows"
                b" WHERE event_name = %s AND key = %s AND start = %s",
                (e.event_name, key, start),
            )
            gen = int(cur.fetchone()[0])
            cur.execute(
                b"INSERT INTO windows (event_name, customer_id, model, token_type, key, start,"
                b" generation, value, calls, close_at, status, created, value_key, becomes, api)"
                b" VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0, %s, 'open', %s, %s, %s, %s)"
                b" ON CONFLICT (event_name, key, start, generation) DO NOTHING RETURNING id",
                (e.event_name, e.customer_id, e.model, e.token_type, key, start, gen,
                 max(start + agg.seconds, now) + agg.grace, now, agg.value_key, becomes, api),
            )  # fmt: skip
            row = cur.fetchone()
            # Another host made this generation meanwhile: sum into it if it is still open.
            window_id = int(row[0]) if row is not None else _open_window(cur, e, key, start)
        cur.execute(
            b"UPDATE windows SET value = value + %s, calls = calls + 1 WHERE id = %s",
            (e.value, window_id),
        )
        cur.execute(
            b"UPDATE window_calls SET window_id = %s WHERE identifier = %s",
            (window_id, e.identifier),
        )
        added += 1
    return added


def close(
    cur: Any,
    now: float,
    everything: bool,
    insert: Callable[[Any, list[MeterEvent], str, str | None], Any],
) -> int:
    """Close the windows due by `now` (all open ones if `everything`) into events, handed
    to `insert(cur, events, status, api)`; windows another host holds are left to it."""
    cur.execute(
        b"SELECT id, event_name, customer_id, model, token_type, key, start, generation, value,"
        b" value_key, becomes, api FROM windows WHERE status = 'open'"
        b" AND (%s OR close_at <= %s) FOR UPDATE SKIP LOCKED",
        (everything, now),
    )
    due = cur.fetchall()
    groups: dict[tuple[str, str | None], list[MeterEvent]] = {}
    for wid, name, customer, model, token_type, key, start, gen, value, vkey, becomes, api in due:
        ident = window_identifier(name, customer, model, token_type, key, int(start), int(gen))
        groups.setdefault((becomes, api), []).append(
            MeterEvent(
                identifier=ident,
                event_name=name,
                timestamp=int(start),
                customer_id=customer,
                model=model,
                token_type=token_type,
                value=int(value),
                payload={**json.loads(key), vkey: str(value)},
            )
        )
        cur.execute(
            b"UPDATE windows SET status = 'closed', identifier = %s WHERE id = %s", (ident, wid)
        )
    for (becomes, api), events in groups.items():
        insert(cur, events, becomes, api)
    return len(due)


def window_of_call(cur: Any, identifier: str) -> tuple[str, str | None] | None:
    cur.execute(
        b"SELECT w.status, w.identifier FROM window_calls c JOIN windows w ON w.id = c.window_id"
        b" WHERE c.identifier = %s",
        (identifier,),
    )
    row = cur.fetchone()
    return None if row is None else (str(row[0]), row[1])


def open_count(cur: Any) -> int:
    cur.execute(b"SELECT COUNT(*) FROM windows WHERE status = 'open'")
    return int(cur.fetchone()[0])


def prune(cur: Any, older_than: float, limit: int) -> None:
    """As SQLite's: forget summed calls and closed windows past the retention."""
    cur.execute(
        b"DELETE FROM window_calls WHERE identifier IN (SELECT identifier FROM window_calls"
        b" WHERE created < %s LIMIT %s)",
        (older_than, limit),
    )
    cur.execute(
        b"DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE status = 'closed'"
        b" AND start < %s AND created < %s LIMIT %s)",
        (older_than, older_than, limit),
    )
