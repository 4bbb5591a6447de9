"""The SQLite outbox's operator actions and reports (the CLI's `status`, `report`, `replay`,
`resolve`, `cancel`), kept apart from the delivery path in `sqlite.py`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from ..aggregate import summed_call_message
from . import sqlite_windows
from .base import (
    DEAD,
    LOCAL,
    PENDING,
    STATUSES,
    UNCONFIRMED_CODE,
    EventRef,
)

IN_CHUNK: Final = 500
"""Ids per `WHERE id IN (...)`: well under SQLite's oldest variable limit (999)."""


def _replayable(code: str | None) -> tuple[str, tuple[str, ...]]:
    """Dead letters with `code`; without one, all but those that may be at Stripe already
    past its duplicate check (`UNCONFIRMED_CODE`), which are replayed only by name."""
    if code is None:
        return "status='dead' AND error_code IS NOT ?", (UNCONFIRMED_CODE,)
    return "status='dead' AND error_code=?", (code,)


def _like_prefix(ident: str) -> str:
    """`ident:` as a LIKE pattern (its own `%`, `_` and `\\` taken literally)."""
    escaped = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ":%"


class SqliteOperations:
    """Mixed into `Outbox`, which provides the connection, its lock and `_update_ids`."""

    _conn: sqlite3.Connection
    _lock: threading.Lock

    def _rollback(self) -> None:
        raise NotImplementedError

    def _update_ids(
        self, sql: str, params: tuple[Any, ...], ids: Sequence[int], *, pending_only: bool = False
    ) -> None:
        raise NotImplementedError

    def requeue_dead(self, code: str | None = None) -> int:
        """Dead letters back to pending (after their cause is fixed); identifiers unchanged.
        `unconfirmed_past_dedup_window` ones only when `code` names them: they may be at
        Stripe already, past its duplicate check."""
        where, params = _replayable(code)
        with self._lock:
            # Replaying is the operator's decision to send: the unconfirmed clock restarts.
            return self._conn.execute(
                "UPDATE events SET status='pending', next_attempt=0, lease_until=0,"
                " unconfirmed=NULL WHERE " + where,
                params,
            ).rowcount

    def replayable_ids(self, code: str | None = None) -> list[int]:
        """The dead letters `requeue_dead(code)` would put back."""
        where, params = _replayable(code)
        return [int(r[0]) for r in self._query("SELECT id FROM events WHERE " + where, params)]

    def withdraw(self, identifier: str) -> str | None:
        """Cancel an event Stripe does not have, here only: a pending, dead or local row
        goes to `cancelled` and is never sent. Returns why not if it cannot be: its request
        may be out now (leased), or an earlier send may have reached Stripe (unconfirmed)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT status, lease_owner, lease_until, unconfirmed FROM events"
                    " WHERE identifier=?",
                    (identifier,),
                ).fetchone()
                why = None
                if row is None:
                    why = "no such event in the outbox"
                    window = sqlite_windows.window_of_call(self._conn, identifier)
                    if window is not None:
                        why = summed_call_message(*window)
                elif row[0] not in (PENDING, DEAD, LOCAL):
                    why = f"the event is {row[0]}"
                elif row[1] is not None:
                    why = (
                        "it is leased to a sender, so its request may be out or may have "
                        "reached Stripe: try again once it is delivered or handed back"
                    )
                elif row[3] is not None:
                    why = (
                        "an earlier send of it may have reached Stripe (no confirmed answer): "
                        "if pending, let it be delivered and cancel it then; if dead-lettered, "
                        "see `stripe-token-meter status`"
                    )
                else:
                    self._conn.execute(
                        "UPDATE events SET status='cancelled', lease_owner=NULL, lease_until=0"
                        " WHERE identifier=?",
                        (identifier,),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return why

    def resolve_dead(self, code: str) -> int:
        """Dead letters with `code` -> `resolved`: kept with their reason, never sent, no
        longer counted as dead-lettered (the operator settled them, e.g. found them in
        Stripe). Returns how many."""
        with self._lock:
            return self._conn.execute(
                "UPDATE events SET status='resolved' WHERE status='dead' AND error_code=?",
                (code,),
            ).rowcount

    def open_codes(self) -> tuple[list[str], list[str]]:
        """Error codes of the dead letters, and of the rejected records not resolved."""
        dead = self._query("SELECT DISTINCT error_code FROM events WHERE status='dead' ORDER BY 1")
        rejected = self._query(
            "SELECT DISTINCT code FROM rejected WHERE resolved IS NULL ORDER BY 1"
        )
        return [str(r[0]) for r in dead], [str(r[0]) for r in rejected]

    def resolve_rejected(self, code: str) -> int:
        """Rejected usage records with `code` -> resolved (stamped now): kept with their
        record and reason, no longer counted as rejected. Returns how many."""
        with self._lock:
            return self._conn.execute(
                "UPDATE rejected SET resolved=? WHERE code=? AND resolved IS NULL",
                (time.time(), code),
            ).rowcount

    def record_adjustment(
        self, identifier: str, event_name: str, status: str, error: str | None
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO adjustments (identifier, event_name, status, error_message,"
                " created) VALUES (?,?,?,?,?)",
                (identifier, event_name, status, error, time.time()),
            )
            if status == "cancelled":
                self._conn.execute(
                    "UPDATE events SET status='cancelled' WHERE identifier=? AND status='delivered'",
                    (identifier,),
                )

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", (key, value)
            )

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        """Rows per status, plus `rejected` usage records (open / `rejected_resolved`) and
        `retrying` pending rows.

        `delivered` counts only rows still kept: the worker deletes delivered rows older
        than `TokenMeter(retain_delivered=...)` (35 days by default, see `prune_delivered`).
        """
        with self._lock:
            out = dict.fromkeys(STATUSES, 0)
            for status, n in self._conn.execute(
                "SELECT status, COUNT(*) FROM events GROUP BY status"
            ):
                out[str(status)] = int(n)
            out["retrying"] = int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM events WHERE status='pending' AND attempts>0"
                ).fetchone()[0]
            )
            open_, settled = self._conn.execute(
                "SELECT COUNT(*) - COUNT(resolved), COUNT(resolved) FROM rejected"
            ).fetchone()
            out["rejected"], out["rejected_resolved"] = int(open_), int(settled)
            out["aggregating"] = sqlite_windows.open_count(self._conn)
        return out

    def has_pending(self) -> bool:
        """Whether any row waits for delivery: O(1) on the index, unlike a COUNT over a backlog."""
        with self._lock:
            row = self._conn.execute(
                "SELECT EXISTS(SELECT 1 FROM events WHERE status='pending')"
            ).fetchone()
        return bool(row[0])

    def pending_count(self) -> int:
        with self._lock:
            return int(
                self._conn.execute("SELECT COUNT(*) FROM events WHERE status='pending'").fetchone()[
                    0
                ]
            )

    def next_due(self) -> float | None:
        """When the earliest pending row may be sent (None if nothing is pending)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(MAX(next_attempt, lease_until)) FROM events WHERE status='pending'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read. Not part of `OutboxStore`: library code calls named methods;
        tests use it to look inside a SQLite file."""
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def pending_by_api(self, default_api: str) -> dict[str, int]:
        """Pending rows per API they are to be sent with (`default_api` for rows older than
        the `api` column): the CLI delivers each group through its own API."""
        rows = self._query(
            "SELECT COALESCE(api, ?), COUNT(*) FROM events WHERE status='pending' GROUP BY 1",
            (default_api,),
        )
        return {str(a): int(n) for a, n in rows}

    def hold_other_apis(self, api: str, default_api: str, seconds: float) -> list[int]:
        """Keep pending rows of APIs other than `api` from being claimed for `seconds`
        (returns their ids, for `release_held`), so a sender on `api` never sends them.

        The hold is a lease without an owner: should the holder die, it simply runs out,
        and `claim` never takes an ownerless lease for a send that may have happened. Rows
        leased now are left alone; one whose owner's lease ran out is stamped unconfirmed
        first, exactly as `claim` would."""
        now = time.time()
        with self._lock:
            return [
                int(r[0])
                for r in self._conn.execute(
                    "UPDATE events SET unconfirmed=CASE WHEN lease_owner IS NULL THEN unconfirmed"
                    " ELSE COALESCE(unconfirmed, lease_until) END, lease_owner=NULL, lease_until=?"
                    " WHERE status='pending' AND lease_until<=? AND COALESCE(api, ?)<>?"
                    " RETURNING id",
                    (now + seconds, now, default_api, api),
                ).fetchall()
            ]

    def release_held(self, ids: Sequence[int]) -> None:
        """End `hold_other_apis`' hold on rows still pending and not leased since."""
        self._update_ids(
            "UPDATE events SET lease_until=CASE WHEN lease_owner IS NULL THEN 0"
            " ELSE lease_until END",
            (),
            ids,
            pending_only=True,
        )

    def replayable_rows(self, code: str | None = None) -> list[tuple[int, str | None, str]]:
        """(id, api, error code) of the dead letters `requeue_dead(code)` would put back."""
        where, params = _replayable(code)
        return [
            (int(i), None if a is None else str(a), str(c))
            for i, a, c in self._query(
                "SELECT id, api, COALESCE(error_code, 'unknown') FROM events WHERE " + where,
                params,
            )
        ]

    def requeue_dead_ids(self, ids: Sequence[int]) -> int:
        """`requeue_dead` for these dead letters only; returns how many went back."""
        n = 0
        with self._lock:
            for lo in range(0, len(ids), IN_CHUNK):
                chunk = ids[lo : lo + IN_CHUNK]
                n += self._conn.execute(
                    "UPDATE events SET status='pending', next_attempt=0, lease_until=0,"
                    f" unconfirmed=NULL WHERE status='dead' AND id IN ({','.join('?' * len(chunk))})",
                    tuple(chunk),
                ).rowcount
        return n

    def outcomes(
        self, ids: Sequence[int], default_api: str
    ) -> list[tuple[str, str, str | None, int]]:
        """(api, status, error code if dead, rows) of these rows: what a replay achieved."""
        out: list[tuple[str, str, str | None, int]] = []
        for lo in range(0, len(ids), IN_CHUNK):
            chunk = ids[lo : lo + IN_CHUNK]
            out += [
                (str(a), str(s), None if c is None else str(c), int(n))
                for a, s, c, n in self._query(
                    "SELECT COALESCE(api, ?), status, CASE WHEN status='dead' THEN"
                    " COALESCE(error_code, 'unknown') END, COUNT(*) FROM events"
                    f" WHERE id IN ({','.join('?' * len(chunk))}) GROUP BY 1, 2, 3",
                    (default_api, *chunk),
                )
            ]
        return out

    def apis(self, *, since: float | None = None, customer: str | None = None) -> dict[str, int]:
        """Events per API they were recorded to be sent with ('unknown': written before the
        `api` column); local-ledger rows are never sent and are left out."""
        rows = self._query(
            "SELECT COALESCE(api, 'unknown'), COUNT(*) FROM events WHERE status<>'local'"
            " AND (? IS NULL OR timestamp>=?) AND (? IS NULL OR customer_id=?) GROUP BY 1",
            (since, since, customer, customer),
        )
        return {str(a): int(n) for a, n in rows}

    def event_names(self) -> dict[str, int]:
        """Events per meter event name."""
        rows = self._query("SELECT event_name, COUNT(*) FROM events GROUP BY 1 ORDER BY 1")
        return {str(e): int(n) for e, n in rows}

    def last_delivered(self) -> float | None:
        """When an event was last delivered (among the delivered rows still kept)."""
        value = self._query("SELECT MAX(delivered) FROM events WHERE status='delivered'")[0][0]
        return None if value is None else float(value)

    def rejected_count(self, *, since: float | None = None, customer: str | None = None) -> int:
        """Rejected usage records (created at or after `since`); with `customer`, only the
        records whose own customer is that one: the call's `customer_id`, else its scope's,
        else its fallback (as the meter picks it; the record JSON keeps all three)."""
        value = self._query(
            "SELECT COUNT(*) FROM rejected WHERE (? IS NULL OR created>=?) AND (? IS NULL OR"
            " COALESCE(NULLIF(json_extract(record, '$.customer_id'), ''),"
            " NULLIF(json_extract(record, '$.scope_customer'), ''),"
            " NULLIF(json_extract(record, '$.fallback_customer'), ''))=?)",
            (since, since, customer, customer),
        )[0][0]
        return int(value)

    def oldest_pending(self) -> float | None:
        """When the oldest pending row was stored (None if nothing is pending)."""
        value = self._query("SELECT MIN(created) FROM events WHERE status='pending'")[0][0]
        return None if value is None else float(value)

    def dead_by_code(self) -> list[tuple[str, int, int, str | None]]:
        """(error code, rows, tokens, a message) of the dead letters, largest group first."""
        return [
            (str(c), int(n), int(v or 0), None if m is None else str(m))
            for c, n, v, m in self._query(
                "SELECT COALESCE(error_code, 'unknown'), COUNT(*), SUM(value), MAX(error_message)"
                " FROM events WHERE status='dead' GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        ]

    def rejected_by_code(self) -> list[tuple[str, int, str, str]]:
        """(code, records, a field, a message) of the rejected records not resolved."""
        return [
            (str(c), int(n), str(f), str(m))
            for c, n, f, m in self._query(
                "SELECT code, COUNT(*), MAX(field), MAX(message) FROM rejected"
                " WHERE resolved IS NULL GROUP BY code ORDER BY 2 DESC, 1"
            )
        ]

    def adjustment_counts(self) -> dict[str, int]:
        """Adjustments (`cancel`) per outcome."""
        rows = self._query("SELECT status, COUNT(*) FROM adjustments GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def report_rows(
        self, *, since: float | None = None, customer: str | None = None
    ) -> list[tuple[str, str, str, str, int, int]]:
        """(customer, model, token type, status, events, tokens) of the events timestamped
        at or after `since`, of `customer` if given."""
        rows = self._query(
            "SELECT customer_id, model, token_type, status, COUNT(*), SUM(value) FROM events"
            " WHERE (? IS NULL OR timestamp>=?) AND (? IS NULL OR customer_id=?)"
            " GROUP BY 1, 2, 3, 4",
            (
                None if since is None else int(since),
                None if since is None else int(since),
                customer,
                customer,
            ),
        )
        return [(str(c), str(m), str(t), str(s), int(n), int(v)) for c, m, t, s, n, v in rows]

    def delivered_totals(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(events, tokens) delivered per (customer, model, token type)."""
        rows = self._query(
            "SELECT customer_id, model, token_type, COUNT(*), SUM(value) FROM events"
            " WHERE status='delivered' GROUP BY 1, 2, 3"
        )
        return {(str(c), str(m), str(t)): (int(n), int(v)) for c, m, t, n, v in rows}

    def find_events(self, identifier: str) -> list[EventRef]:
        """The event with this identifier, else those of the request id `identifier`
        (identifiers `identifier:...`), in the order stored."""
        sql = "SELECT identifier, event_name, status, delivered FROM events WHERE identifier"
        rows = self._query(f"{sql}=?", [identifier])
        if not rows:
            rows = self._query(f"{sql} LIKE ? ESCAPE '\\' ORDER BY id", [_like_prefix(identifier)])
        return [(str(i), str(e), str(s), None if d is None else float(d)) for i, e, s, d in rows]

    def last_event_error(self) -> tuple[str | None, str] | None:
        """(code, message) of the newest error on an event still pending or dead."""
        rows = self._query(
            "SELECT error_code, error_message FROM events WHERE error_message IS NOT NULL"
            " AND status IN ('pending', 'dead') ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        code, message = rows[0]
        return (None if code is None else str(code)), str(message)

    def rejected_records(self) -> list[tuple[str, str, str, dict[str, Any], float | None]]:
        """Every rejected record: (code, field, message, record, resolved at), oldest first."""
        return [
            (str(c), str(f), str(m), json.loads(r), None if d is None else float(d))
            for c, f, m, r, d in self._query(
                "SELECT code, field, message, record, resolved FROM rejected ORDER BY id"
            )
        ]
