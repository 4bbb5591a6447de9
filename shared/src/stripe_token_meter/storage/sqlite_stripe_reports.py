"""What Stripe reports back, kept in the SQLite outbox: its error reports (dead letters and
per-code counts) and the delivered totals `reconcile` compares with its event summaries."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

ERROR_REPORTS_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS error_reports ("
    " event_id TEXT PRIMARY KEY, type TEXT NOT NULL, received REAL NOT NULL,"
    " counts TEXT NOT NULL)"
)
"""One row per Stripe error-report event: its per-code counts as JSON, no samples (Stripe
redelivers webhooks: the event id keeps a report from counting twice). Created on first
use, so read-only openers (the CLI) never change an outbox file."""


class SqliteStripeReports:
    """Mixed into `Outbox`, which provides the connection, its lock and `_query`."""

    _conn: sqlite3.Connection
    _lock: threading.Lock

    def _rollback(self) -> None:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def dead_letter_identifiers(self, items: Sequence[tuple[str, str, str]]) -> tuple[int, int]:
        """Dead-letter events Stripe reported as failed: (identifier, code, message).

        Only rows still in the outbox change: sent (`delivered`, as the v2 stream's `{}`
        counted them) or not yet (`pending`); dead, cancelled or resolved rows keep their
        state. Returns (dead-lettered now, identifiers this outbox does not hold)."""
        changed = unknown = 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for identifier, code, message in items:
                    cur = self._conn.execute(
                        "UPDATE events SET status='dead', lease_owner=NULL, lease_until=0,"
                        " delivered=NULL, error_code=?, error_message=? WHERE identifier=?"
                        " AND status IN ('delivered', 'pending')",
                        (code, message[:500], identifier),
                    )
                    if cur.rowcount:
                        changed += cur.rowcount
                    elif not self._conn.execute(
                        "SELECT 1 FROM events WHERE identifier=?", (identifier,)
                    ).fetchone():
                        unknown += 1
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return changed, unknown

    def record_error_report(self, event_id: str, kind: str, counts: Mapping[str, int]) -> bool:
        """Keep a report's per-code error counts; False if this event was recorded before."""
        with self._lock:
            self._conn.execute(ERROR_REPORTS_SQL)
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO error_reports (event_id, type, received, counts)"
                " VALUES (?,?,?,?)",
                (event_id, kind, time.time(), json.dumps(dict(counts), sort_keys=True)),
            )
            return cur.rowcount == 1

    def error_report_counts(self, *, since: float | None = None) -> dict[str, int]:
        """Errors Stripe reported per code, summed over the reports received since `since`."""
        with self._lock:
            if not self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='error_reports'"
            ).fetchone():
                return {}
            rows = self._conn.execute(
                "SELECT counts FROM error_reports WHERE (? IS NULL OR received>=?)",
                (since, since),
            ).fetchall()
        return sum_report_counts(text for (text,) in rows)

    def delivered_per_customer_hour(
        self, event_name: str, since: float, customer: str | None = None
    ) -> list[tuple[str, int, int, int]]:
        """(customer, hour start, summed value, events) of delivered events by event
        timestamp, hours starting at or after `since` (Unix seconds, UTC)."""
        start = int(since) // 3600 * 3600
        return [
            (str(c), int(h), int(v), int(n))
            for c, h, v, n in self._query(
                "SELECT customer_id, (timestamp/3600)*3600 AS hour, SUM(value), COUNT(*)"
                " FROM events WHERE status='delivered' AND event_name=? AND timestamp>=?"
                " AND (? IS NULL OR customer_id=?) GROUP BY 1, 2 ORDER BY 1, 2",
                (event_name, start, customer, customer),
            )
        ]

    def spent_since(
        self, event_name: str, since: float, until: float | None = None
    ) -> dict[str, int]:
        """Summed value per customer of `event_name` events timed at or after `since` and
        before `until` (Unix seconds; None: no end), whatever their delivery state except cancelled: what a guard must
        count as already spent (pending and dead letters were spent too; a cancelled
        event was withdrawn). Rows pruned after `retain_delivered` are not counted."""
        return {
            str(c): int(v)
            for c, v in self._query(
                "SELECT customer_id, SUM(value) FROM events WHERE event_name=?"
                " AND timestamp>=? AND (? IS NULL OR timestamp<?) AND status<>'cancelled'"
                " GROUP BY 1",
                (event_name, int(since), until, until),
            )
        }


def sum_report_counts(texts: Any) -> dict[str, int]:
    """Per-code counts summed over stored reports (each a JSON object of code -> count)."""
    out: dict[str, int] = {}
    for text in texts:
        for code, n in json.loads(text).items():
            out[code] = out.get(code, 0) + int(n)
    return out
