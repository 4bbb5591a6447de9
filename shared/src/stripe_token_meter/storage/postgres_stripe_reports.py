"""What Stripe reports back, kept in the PostgreSQL outbox: its error reports (dead letters
and per-code counts) and the delivered totals `reconcile` compares with its summaries."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from .sqlite_stripe_reports import sum_report_counts

MIGRATION: Final = """
CREATE TABLE IF NOT EXISTS error_reports (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    received double precision NOT NULL,
    counts text NOT NULL
);
"""
"""Schema 2 -> 3: one row per Stripe error-report event, its per-code counts as JSON."""


class PostgresStripeReports:
    """Mixed into `PostgresOutbox`, which provides the transaction helpers."""

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _query(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        raise NotImplementedError

    def dead_letter_identifiers(self, items: Sequence[tuple[str, str, str]]) -> tuple[int, int]:
        """As `SqliteStripeReports.dead_letter_identifiers`: one transaction for the batch."""
        changed = unknown = 0
        with self._tx() as cur:
            for identifier, code, message in items:
                cur.execute(
                    "UPDATE events SET status = 'dead', lease_owner = NULL, lease_until = 0,"
                    " delivered = NULL, error_code = %s, error_message = %s"
                    " WHERE identifier = %s AND status IN ('delivered', 'pending')",
                    (code, message[:500], identifier),
                )
                if cur.rowcount:
                    changed += cur.rowcount
                    continue
                cur.execute("SELECT 1 FROM events WHERE identifier = %s", (identifier,))
                if cur.fetchone() is None:
                    unknown += 1
        return changed, unknown

    def record_error_report(self, event_id: str, kind: str, counts: Mapping[str, int]) -> bool:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO error_reports (event_id, type, received, counts)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                (event_id, kind, time.time(), json.dumps(dict(counts), sort_keys=True)),
            )
            return bool(cur.rowcount == 1)

    def error_report_counts(self, *, since: float | None = None) -> dict[str, int]:
        rows = self._query(
            "SELECT counts FROM error_reports WHERE %(since)s::double precision IS NULL"
            " OR received >= %(since)s::double precision",
            {"since": since},
        )
        return sum_report_counts(text for (text,) in rows)

    def delivered_per_customer_hour(
        self, event_name: str, since: float, customer: str | None = None
    ) -> list[tuple[str, int, int, int]]:
        start = int(since) // 3600 * 3600
        rows = self._query(
            "SELECT customer_id, (timestamp / 3600) * 3600 AS hour, SUM(value), COUNT(*)"
            " FROM events WHERE status = 'delivered' AND event_name = %(name)s"
            " AND timestamp >= %(start)s AND (%(customer)s::text IS NULL"
            " OR customer_id = %(customer)s::text) GROUP BY 1, 2 ORDER BY 1, 2",
            {"name": event_name, "start": start, "customer": customer},
        )
        return [(str(c), int(h), int(v), int(n)) for c, h, v, n in rows]

    def spent_since(
        self, event_name: str, since: float, until: float | None = None
    ) -> dict[str, int]:
        rows = self._query(
            "SELECT customer_id, SUM(value) FROM events WHERE event_name = %(name)s"
            " AND timestamp >= %(since)s AND (%(until)s::double precision IS NULL"
            " OR timestamp < %(until)s::double precision) AND status <> 'cancelled'"
            " GROUP BY 1",
            {"name": event_name, "since": int(since), "until": until},
        )
        return {str(c): int(v) for c, v in rows}
