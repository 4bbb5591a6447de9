"""The PostgreSQL outbox's operator actions and reports (the CLI), apart from delivery."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..aggregate import summed_call_message
from . import postgres_sql as q
from . import postgres_windows
from .base import DEAD, LOCAL, PENDING, STATUSES, EventRef


def _like_prefix(ident: str) -> str:
    escaped = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ":%"


def _own_customer(record: dict[str, Any]) -> str | None:
    """The record's customer as the meter picks it: the call's, its scope's, its fallback."""
    for key in ("customer_id", "scope_customer", "fallback_customer"):
        value = record.get(key)
        if value:
            return str(value)
    return None


class PostgresOperations:
    """Mixed into `PostgresOutbox`, which provides the transaction helpers."""

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _query(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _count(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        raise NotImplementedError

    def _update_ids(
        self,
        statement: str,
        params: dict[str, Any],
        ids: Sequence[int],
        *,
        pending_only: bool = False,
    ) -> None:
        raise NotImplementedError

    # -- operator actions -----------------------------------------------------------------

    def requeue_dead(self, code: str | None = None) -> int:
        where, params = q.replayable(code)
        return self._count(
            "UPDATE events SET status = 'pending', next_attempt = 0, lease_until = 0,"
            " unconfirmed = NULL WHERE " + where,
            params,
        )

    def requeue_dead_ids(self, ids: Sequence[int]) -> int:
        return self._count(
            "UPDATE events SET status = 'pending', next_attempt = 0, lease_until = 0,"
            " unconfirmed = NULL WHERE status = 'dead' AND id = ANY(%s)",
            (list(ids),),
        )

    def replayable_ids(self, code: str | None = None) -> list[int]:
        where, params = q.replayable(code)
        return [int(r[0]) for r in self._query("SELECT id FROM events WHERE " + where, params)]

    def replayable_rows(self, code: str | None = None) -> list[tuple[int, str | None, str]]:
        where, params = q.replayable(code)
        rows = self._query(
            "SELECT id, api, COALESCE(error_code, 'unknown') FROM events WHERE " + where, params
        )
        return [(int(i), None if a is None else str(a), str(c)) for i, a, c in rows]

    def withdraw(self, identifier: str) -> str | None:
        """See the SQLite outbox's `withdraw`: pending, dead or local rows only."""
        with self._tx() as cur:
            cur.execute(
                b"SELECT status, lease_owner, lease_until, unconfirmed FROM events"
                b" WHERE identifier = %s FOR UPDATE",
                (identifier,),
            )
            row = cur.fetchone()
            if row is None:
                window = postgres_windows.window_of_call(cur, identifier)
                if window is not None:
                    return summed_call_message(*window)
                return "no such event in the outbox"
            if row[0] not in (PENDING, DEAD, LOCAL):
                return f"the event is {row[0]}"
            if row[1] is not None:
                return (
                    "it is leased to a sender, so its request may be out or may have "
                    "reached Stripe: try again once it is delivered or handed back"
                )
            if row[3] is not None:
                return (
                    "an earlier send of it may have reached Stripe (no confirmed answer): "
                    "if pending, let it be delivered and cancel it then; if dead-lettered, "
                    "see `stripe-token-meter status`"
                )
            cur.execute(
                b"UPDATE events SET status = 'cancelled', lease_owner = NULL, lease_until = 0"
                b" WHERE identifier = %s",
                (identifier,),
            )
        return None

    def resolve_dead(self, code: str) -> int:
        return self._count(
            "UPDATE events SET status = 'resolved' WHERE status = 'dead' AND error_code = %s",
            (code,),
        )

    def resolve_rejected(self, code: str) -> int:
        return self._count(
            "UPDATE rejected SET resolved = %s WHERE code = %s AND resolved IS NULL",
            (time.time(), code),
        )

    def record_adjustment(
        self, identifier: str, event_name: str, status: str, error: str | None
    ) -> None:
        with self._tx() as cur:
            cur.execute(
                b"INSERT INTO adjustments (identifier, event_name, status, error_message, created)"
                b" VALUES (%s, %s, %s, %s, %s) ON CONFLICT (identifier) DO UPDATE SET"
                b" event_name = EXCLUDED.event_name, status = EXCLUDED.status,"
                b" error_message = EXCLUDED.error_message, created = EXCLUDED.created",
                (identifier, event_name, status, error, time.time()),
            )
            if status == "cancelled":
                cur.execute(
                    b"UPDATE events SET status = 'cancelled' WHERE identifier = %s"
                    b" AND status = 'delivered'",
                    (identifier,),
                )

    def hold_other_apis(self, api: str, default_api: str, seconds: float) -> list[int]:
        """See the SQLite outbox's `hold_other_apis`."""
        now = time.time()
        return [int(r[0]) for r in self._query(q.HOLD, (now + seconds, now, default_api, api))]

    def release_held(self, ids: Sequence[int]) -> None:
        self._update_ids(
            "UPDATE events SET lease_until = CASE WHEN lease_owner IS NULL THEN 0"
            " ELSE lease_until END",
            {},
            ids,
            pending_only=True,
        )

    def set_meta(self, key: str, value: str) -> None:
        self._count(
            "INSERT INTO meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    # -- reads ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0][0]) if rows else None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        with self._tx() as cur:
            cur.execute(b"SELECT status, COUNT(*) FROM events GROUP BY status")
            for status, n in cur.fetchall():
                out[str(status)] = int(n)
            cur.execute(b"SELECT COUNT(*) FROM events WHERE status = 'pending' AND attempts > 0")
            out["retrying"] = int(cur.fetchone()[0])
            cur.execute(b"SELECT COUNT(*) - COUNT(resolved), COUNT(resolved) FROM rejected")
            open_, settled = cur.fetchone()
            out["aggregating"] = postgres_windows.open_count(cur)
        out["rejected"], out["rejected_resolved"] = int(open_), int(settled)
        return out

    def pending_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM events WHERE status = 'pending'")[0][0])

    def next_due(self) -> float | None:
        value = self._query(
            "SELECT MIN(GREATEST(next_attempt, lease_until)) FROM events WHERE status = 'pending'"
        )[0][0]
        return None if value is None else float(value)

    def pending_by_api(self, default_api: str) -> dict[str, int]:
        rows = self._query(
            "SELECT COALESCE(api, %s), COUNT(*) FROM events WHERE status = 'pending' GROUP BY 1",
            (default_api,),
        )
        return {str(a): int(n) for a, n in rows}

    def outcomes(
        self, ids: Sequence[int], default_api: str
    ) -> list[tuple[str, str, str | None, int]]:
        rows = self._query(
            "SELECT COALESCE(api, %s), status, CASE WHEN status = 'dead' THEN"
            " COALESCE(error_code, 'unknown') END, COUNT(*) FROM events WHERE id = ANY(%s)"
            " GROUP BY 1, 2, 3",
            (default_api, list(ids)),
        )
        return [(str(a), str(s), None if c is None else str(c), int(n)) for a, s, c, n in rows]

    def apis(self, *, since: float | None = None, customer: str | None = None) -> dict[str, int]:
        rows = self._query(
            "SELECT COALESCE(api, 'unknown'), COUNT(*) FROM events WHERE status <> 'local'"
            " AND (%(since)s::bigint IS NULL OR timestamp >= %(since)s::bigint)"
            " AND (%(customer)s::text IS NULL OR customer_id = %(customer)s::text) GROUP BY 1",
            {"since": None if since is None else int(since), "customer": customer},
        )
        return {str(a): int(n) for a, n in rows}

    def event_names(self) -> dict[str, int]:
        rows = self._query("SELECT event_name, COUNT(*) FROM events GROUP BY 1 ORDER BY 1")
        return {str(e): int(n) for e, n in rows}

    def last_delivered(self) -> float | None:
        value = self._query("SELECT MAX(delivered) FROM events WHERE status = 'delivered'")[0][0]
        return None if value is None else float(value)

    def rejected_count(self, *, since: float | None = None, customer: str | None = None) -> int:
        """Counted here rather than in SQL: a record is any JSON, kept as text."""
        rows = self._query(
            "SELECT record FROM rejected WHERE %(since)s::double precision IS NULL"
            " OR created >= %(since)s::double precision",
            {"since": since},
        )
        if customer is None:
            return len(rows)
        return sum(1 for (r,) in rows if _own_customer(_loads(r)) == customer)

    def open_codes(self) -> tuple[list[str], list[str]]:
        dead = self._query(
            "SELECT DISTINCT error_code FROM events WHERE status = 'dead' ORDER BY 1"
        )
        rejected = self._query(
            "SELECT DISTINCT code FROM rejected WHERE resolved IS NULL ORDER BY 1"
        )
        return [str(r[0]) for r in dead], [str(r[0]) for r in rejected]

    def oldest_pending(self) -> float | None:
        value = self._query("SELECT MIN(created) FROM events WHERE status = 'pending'")[0][0]
        return None if value is None else float(value)

    def dead_by_code(self) -> list[tuple[str, int, int, str | None]]:
        rows = self._query(
            "SELECT COALESCE(error_code, 'unknown'), COUNT(*), SUM(value), MAX(error_message)"
            " FROM events WHERE status = 'dead' GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        return [(str(c), int(n), int(v or 0), None if m is None else str(m)) for c, n, v, m in rows]

    def rejected_by_code(self) -> list[tuple[str, int, str, str]]:
        rows = self._query(
            "SELECT code, COUNT(*), MAX(field), MAX(message) FROM rejected"
            " WHERE resolved IS NULL GROUP BY code ORDER BY 2 DESC, 1"
        )
        return [(str(c), int(n), str(f), str(m)) for c, n, f, m in rows]

    def adjustment_counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM adjustments GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def report_rows(
        self, *, since: float | None = None, customer: str | None = None
    ) -> list[tuple[str, str, str, str, int, int]]:
        rows = self._query(
            "SELECT customer_id, model, token_type, status, COUNT(*), SUM(value) FROM events"
            " WHERE (%(since)s::bigint IS NULL OR timestamp >= %(since)s::bigint)"
            " AND (%(customer)s::text IS NULL OR customer_id = %(customer)s::text)"
            " GROUP BY 1, 2, 3, 4",
            {"since": None if since is None else int(since), "customer": customer},
        )
        return [(str(c), str(m), str(t), str(s), int(n), int(v)) for c, m, t, s, n, v in rows]

    def delivered_totals(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        rows = self._query(
            "SELECT customer_id, model, token_type, COUNT(*), SUM(value) FROM events"
            " WHERE status = 'delivered' GROUP BY 1, 2, 3"
        )
        return {(str(c), str(m), str(t)): (int(n), int(v)) for c, m, t, n, v in rows}

    def find_events(self, identifier: str) -> list[EventRef]:
        head = "SELECT identifier, event_name, status, delivered FROM events WHERE identifier"
        rows = self._query(head + " = %s", (identifier,))
        if not rows:
            rows = self._query(
                head + " LIKE %s ESCAPE '\\' ORDER BY id", (_like_prefix(identifier),)
            )
        return [(str(i), str(e), str(s), None if d is None else float(d)) for i, e, s, d in rows]

    def last_event_error(self) -> tuple[str | None, str] | None:
        rows = self._query(
            "SELECT error_code, error_message FROM events WHERE error_message IS NOT NULL"
            " AND status IN ('pending', 'dead') ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        code, message = rows[0]
        return (None if code is None else str(code)), str(message)

    def rejected_records(self) -> list[tuple[str, str, str, dict[str, Any], float | None]]:
        rows = self._query(
            "SELECT code, field, message, record, resolved FROM rejected ORDER BY id"
        )
        return [
            (str(c), str(f), str(m), _loads(r), None if d is None else float(d))
            for c, f, m, r, d in rows
        ]


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["PostgresOperations"]
