"""The PostgreSQL outbox's schema, its migrations and its statements (used by `postgres.py`).

Times are Unix seconds from the client's clock (`double precision`), as in the SQLite
outbox: leases and retry delays compare client clocks, so hosts must keep NTP time (a
lease is 30 s; a skew of seconds only shortens or lengthens it).
"""

from __future__ import annotations

from typing import Final

from .postgres_stripe_reports import MIGRATION as ERROR_REPORTS_MIGRATION
from .postgres_windows import MIGRATION as WINDOWS_MIGRATION

SCHEMA_VERSION: Final = 3
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the tables of SQLite outbox version 3 (with `unconfirmed`, `api`, `resolved`).
    """
    CREATE TABLE IF NOT EXISTS events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        identifier text NOT NULL UNIQUE,
        event_name text NOT NULL,
        customer_id text NOT NULL,
        model text NOT NULL,
        token_type text NOT NULL,
        value bigint NOT NULL,
        timestamp bigint NOT NULL,
        payload text NOT NULL,
        status text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision NOT NULL DEFAULT 0,
        lease_owner text,
        lease_until double precision NOT NULL DEFAULT 0,
        error_code text,
        error_message text,
        created double precision NOT NULL,
        delivered double precision,
        unconfirmed double precision,
        api text
    );
    CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt, id) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS events_delivered ON events (delivered) WHERE status = 'delivered';
    CREATE INDEX IF NOT EXISTS events_dead ON events (error_code) WHERE status = 'dead';
    CREATE TABLE IF NOT EXISTS rejected (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created double precision NOT NULL,
        code text NOT NULL,
        field text NOT NULL,
        message text NOT NULL,
        record text NOT NULL,
        resolved double precision
    );
    CREATE TABLE IF NOT EXISTS adjustments (
        identifier text PRIMARY KEY,
        event_name text NOT NULL,
        status text NOT NULL,
        error_message text,
        created double precision NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE IF NOT EXISTS journal (segment text PRIMARY KEY, offset_bytes bigint NOT NULL);
    """,
    # 2: aggregation windows (postgres_windows.py).
    WINDOWS_MIGRATION,
    # 3: Stripe's error reports (postgres_stripe_reports.py).
    ERROR_REPORTS_MIGRATION,
)
"""Migration `k` takes the schema from version `k` to `k + 1`; never edit a released one."""

VERSION_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, applied double"
    " precision NOT NULL)"
)

EVENT_COLUMNS: Final = (
    "id, identifier, event_name, customer_id, model, token_type, value, timestamp, payload,"
    " attempts, unconfirmed"
)
INSERT_EVENTS: Final = (
    "INSERT INTO events (identifier, event_name, customer_id, model, token_type, value,"
    " timestamp, payload, status, created, delivered, lease_owner, lease_until, api)"
    " SELECT *, %(status)s, %(now)s, %(delivered)s, %(owner)s, %(until)s, %(api)s FROM unnest("
    "%(identifier)s::text[], %(event_name)s::text[], %(customer_id)s::text[],"
    " %(model)s::text[], %(token_type)s::text[], %(value)s::bigint[], %(timestamp)s::bigint[],"
    " %(payload)s::text[]) ON CONFLICT (identifier) DO NOTHING RETURNING id, identifier"
)
"""One statement per batch (arrays, not a row per statement)."""
INSERT_REJECT: Final = (
    "INSERT INTO rejected (created, code, field, message, record) VALUES (%s, %s, %s, %s, %s)"
)
UPSERT_PROGRESS: Final = (
    "INSERT INTO journal (segment, offset_bytes) VALUES (%s, %s)"
    " ON CONFLICT (segment) DO UPDATE SET offset_bytes = EXCLUDED.offset_bytes"
)
CLAIM: Final = (
    "WITH picked AS (SELECT id FROM events WHERE status = 'pending'"
    " AND next_attempt <= %(now)s AND lease_until <= %(now)s"
    " AND (%(api)s::text IS NULL OR api IS NULL OR api = %(api)s::text)"
    " ORDER BY next_attempt, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " UPDATE events e SET lease_owner = %(owner)s, lease_until = %(until)s,"
    " unconfirmed = CASE WHEN e.lease_owner IS NULL THEN e.unconfirmed"
    " ELSE COALESCE(e.unconfirmed, LEAST(e.lease_until, %(now)s)) END"
    " FROM picked WHERE e.id = picked.id RETURNING e.id, e.identifier, e.event_name,"
    " e.customer_id, e.model, e.token_type, e.value, e.timestamp, e.payload, e.attempts,"
    " e.unconfirmed, e.error_code"
)
"""`FOR UPDATE SKIP LOCKED`: concurrent claimers each take other rows, never wait. A row
whose owner's lease ran out is stamped unconfirmed as of that lease's end."""
EXPIRE: Final = (
    "UPDATE events SET status = 'dead', lease_owner = NULL, lease_until = 0,"
    " error_code = %s, error_message = %s WHERE id = %s"
)
STAMP: Final = "unconfirmed = COALESCE(unconfirmed, %(stamp)s::double precision)"
PRUNE: Final = (
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = 'delivered'"
    " AND delivered < %s AND timestamp < %s ORDER BY delivered LIMIT %s)"
)
HOLD: Final = (
    "UPDATE events SET unconfirmed = CASE WHEN lease_owner IS NULL THEN unconfirmed"
    " ELSE COALESCE(unconfirmed, lease_until) END, lease_owner = NULL, lease_until = %s"
    " WHERE status = 'pending' AND lease_until <= %s AND COALESCE(api, %s) <> %s RETURNING id"
)


def replayable(code: str | None) -> tuple[str, tuple[str, ...]]:
    """Dead letters with `code`; without one, all but the unconfirmed-past-24h ones."""
    from .base import UNCONFIRMED_CODE

    if code is None:
        return "status = 'dead' AND error_code IS DISTINCT FROM %s", (UNCONFIRMED_CODE,)
    return "status = 'dead' AND error_code = %s", (code,)
