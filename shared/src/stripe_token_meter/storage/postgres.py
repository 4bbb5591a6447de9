"""PostgreSQL outbox: one database every host shares (containers, autoscaling, serverless).

The same semantics as the SQLite outbox on the `OutboxStore` interface: unique
identifiers, claims with leases (`FOR UPDATE SKIP LOCKED`), a dead host's rows taken over
when their lease runs out and stamped unconfirmed (no pid checks across hosts). The
schema is created and migrated on first use under an advisory lock, so many hosts may
start at once. While the database is unreachable every call fails fast with `OutboxError`
(the worker keeps records in the journal and memory meanwhile) and a reconnect is tried
with backoff; one log line when it goes away, one when it is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..aggregate import Aggregation
from ..errors import OutboxError
from ..events import MeterEvent
from ..retry import backoff
from . import postgres_sql as q
from . import postgres_windows
from .base import (
    LOCAL,
    PENDING,
    PRUNE_LIMIT,
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    OutboxUnavailable,
    Progress,
    Reject,
    Row,
    expire_message,
    redact_url,
)
from .postgres_ops import PostgresOperations
from .postgres_stripe_reports import PostgresStripeReports

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("stripe_token_meter")

DEFAULT_SCHEMA: Final = "stripe_token_meter"
CONNECT_TIMEOUT: Final = 10
RECONNECT_BASE: Final = 0.5
RECONNECT_CAP: Final = 30.0
"""Reconnects are tried 0.5 s after a failure, doubling up to every 30 s."""
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_compact = json.JSONEncoder(separators=(",", ":")).encode


def parse_url(url: str) -> tuple[str, str]:
    """(libpq URL without our own parameters, schema). `schema=NAME` picks the schema."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in params if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema):
        raise OutboxError(
            redact_url(url),
            f"schema={schema!r}: a schema name is letters, digits and _ (at most 63, not "
            "starting with a digit)",
        )
    rest = urlencode([(k, v) for k, v in params if k != "schema"])
    scheme = "postgresql"  # libpq takes both; one spelling for the journal's key
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def journal_home_for(url: str, schema: str) -> str:
    """`$STRIPE_TOKEN_METER_JOURNAL_DIR`, else a per-user cache directory keyed by the URL
    without its password: processes of one host on one outbox share it, so a killed
    one's journal is taken over by the next."""
    env = os.environ.get("STRIPE_TOKEN_METER_JOURNAL_DIR")
    if env:
        return os.path.expanduser(env)
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0] if len(netloc) == 2 else ""
    key = f"{user}@{netloc[-1]}{parts.path}?{parts.query}#{schema}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stripe-token-meter", f"journal-{digest}")


_STORES: weakref.WeakSet[PostgresOutbox] = weakref.WeakSet()


def _forget_in_child() -> None:
    """After fork: the parent's connections are the parent's. Closing our copy would send
    the server a goodbye on the shared socket and end the parent's session, so the socket
    is closed here first (the parent's stays open) and the child connects afresh."""
    for store in list(_STORES):
        conn, store._conn = store._conn, None
        store._lock = threading.RLock()
        if conn is not None:
            with contextlib.suppress(Exception):
                os.close(conn.pgconn.socket)
            with contextlib.suppress(Exception):
                conn.close()


os.register_at_fork(after_in_child=_forget_in_child)


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: kept visible instead of failing the batch forever."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PostgresOutbox(PostgresOperations, PostgresStripeReports):
    """One connection (opened lazily, off the caller's thread) and one lock per process."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.path = url
        self._label = redact_url(url)
        if psycopg is None:
            raise OutboxError(
                self._label,
                "a PostgreSQL outbox needs psycopg 3: pip install 'stripe-token-meter[postgres]'",
            )
        self._conninfo, self.schema = parse_url(url)
        self._readonly = readonly
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._down: str | None = None
        """Why the database is unreachable (None: it is not known to be)."""
        self._expired = 0
        self._journal_home = journal_home_for(self._conninfo, self.schema)
        _STORES.add(self)

    @property
    def label(self) -> str:
        return self._label

    @property
    def journal_home(self) -> str | None:
        return self._journal_home

    def replaced(self) -> bool:
        return False  # a database is not a file someone can delete under us

    def recreate(self) -> int:
        return 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # -- connection ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        if time.monotonic() < self._retry_at:
            raise OutboxUnavailable(self._label, f"PostgreSQL is unreachable ({self._down})")
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        if self._down is not None:
            log.warning(
                "stripe-token-meter: the PostgreSQL outbox %s is reachable again", self._label
            )
        self._down, self._failures = None, 0
        self._conn = conn
        return conn

    def _unreachable(self, exc: BaseException) -> OutboxUnavailable:
        """Back off before the next connect; log once per outage."""
        why = redact_url(" ".join(str(exc).split()))[:300] or type(exc).__name__
        self._failures += 1
        self._retry_at = time.monotonic() + backoff(
            self._failures - 1, base=RECONNECT_BASE, cap=RECONNECT_CAP
        )
        if self._down is None:
            log.error(
                "stripe-token-meter: the PostgreSQL outbox %s is unreachable (%s); records wait "
                "in the local journal and memory, reconnecting with backoff",
                self._label,
                why,
            )
        self._down = why
        return OutboxUnavailable(self._label, f"PostgreSQL is unreachable ({why})")

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Point the session at our schema; create or migrate it (once per database)."""
        ident = sql.Identifier(self.schema)
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(ident))
            if self._readonly:
                conn.execute("SET default_transaction_read_only = on")
            if self._version(conn) == q.SCHEMA_VERSION:
                return
            if self._readonly:
                raise OutboxError(
                    self._label, f"no stripe-token-meter outbox in schema {self.schema!r}"
                )
            with conn.transaction():
                # Many hosts may start at once: one migrates, the others wait, then see it done.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"stripe_token_meter:{self.schema}",),
                )
                found = conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                ).fetchone()
                if found is None:  # CREATE SCHEMA needs CREATE on the database, even IF NOT EXISTS
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
                conn.execute(q.VERSION_TABLE)
                current = self._version(conn) or 0
                for k in range(current, q.SCHEMA_VERSION):
                    conn.execute(q.MIGRATIONS[k].encode())
                    conn.execute(
                        "INSERT INTO schema_version (version, applied) VALUES (%s, %s)",
                        (k + 1, time.time()),
                    )
        except psycopg.Error as exc:
            if conn.broken:
                raise self._unreachable(exc) from None
            raise OutboxError(
                self._label, f"cannot set up schema {self.schema!r}: {' '.join(str(exc).split())}"
            ) from None

    def _version(self, conn: psycopg.Connection[Any]) -> int | None:
        found = conn.execute("SELECT to_regclass('schema_version')").fetchone()
        if found is None or found[0] is None:
            return None
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = None if row is None or row[0] is None else int(row[0])
        if version is not None and version > q.SCHEMA_VERSION:
            raise OutboxError(
                self._label,
                f"schema {self.schema!r} is at version {version}, written by a newer "
                "stripe-token-meter: upgrade this one",
            )
        return version

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        """A transaction; a lost connection becomes `OutboxError` (and a reconnect later)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self._conn = None
                    raise self._unreachable(exc) from None
                raise OutboxError(self._label, " ".join(str(exc).split())[:500]) from None

    def _query(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        with self._tx() as cur:
            cur.execute(statement.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    def _count(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        with self._tx() as cur:
            cur.execute(statement.encode(), params)
            return cur.rowcount

    # -- intake ---------------------------------------------------------------------------

    def add(
        self, events: Iterable[MeterEvent], status: str = PENDING, *, api: str | None = None
    ) -> int:
        return self.ingest(list(events), [], [], status=status, api=api)[0]

    def ingest(
        self,
        events: Sequence[MeterEvent],
        rejects: Sequence[Reject],
        progress: Sequence[Progress],
        *,
        status: str = PENDING,
        owner: str | None = None,
        lease_seconds: float = 0.0,
        api: str | None = None,
        aggregate: Aggregation | None = None,
    ) -> tuple[int, list[Row]]:
        """Events, rejected records and journal progress in one transaction (see SQLite's)."""
        if not events and not rejects and not progress:
            return 0, []
        now = time.time()
        added: list[tuple[int, str]] = []
        summed: int | None = None  # with `aggregate`: calls summed into windows, no rows
        with self._tx() as cur:
            if events and aggregate is not None:
                summed = postgres_windows.add(cur, events, aggregate, now, status, api)
            elif events:
                until = now + lease_seconds if owner is not None else 0.0
                cur.execute(
                    q.INSERT_EVENTS.encode(), _event_params(events, status, now, owner, until, api)
                )
                added = [(int(i), str(ident)) for i, ident in cur.fetchall()]
            if rejects:
                cur.executemany(
                    q.INSERT_REJECT.encode(),
                    [
                        (now, c, _text(f), _text(m), json.dumps(r, default=repr, sort_keys=True))
                        for c, f, m, r in rejects
                    ],
                )
            if progress:
                cur.executemany(q.UPSERT_PROGRESS.encode(), list(progress))
        if summed is not None:
            return summed, []
        if owner is None:
            return len(added), []
        first: dict[str, MeterEvent] = {}
        for e in events:
            first.setdefault(e.identifier, e)
        added.sort()
        return len(added), [Row(id=i, event=first[ident], attempts=0) for i, ident in added]

    def close_windows(self, *, everything: bool = False) -> int:
        """See the SQLite outbox's: each due window becomes one event, exactly once."""
        now = time.time()
        with self._tx() as cur:
            cur.execute(b"SELECT EXISTS (SELECT 1 FROM windows WHERE status = 'open')")
            row = cur.fetchone()
            if row is None or not row[0]:
                return 0
            return postgres_windows.close(cur, now, everything, _insert_closed(now))

    def reject(self, code: str, field: str, message: str, record: dict[str, Any]) -> None:
        self.ingest([], [(code, field, message, record)], [])

    def journal_offset(self, segment: str) -> int:
        rows = self._query("SELECT offset_bytes FROM journal WHERE segment = %s", (segment,))
        return int(rows[0][0]) if rows else 0

    def forget_journal(self, segment: str) -> None:
        self._count("DELETE FROM journal WHERE segment = %s", (segment,))

    # -- worker ---------------------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, lease_seconds: float, *, api: str | None = None
    ) -> list[Row]:
        """Lease up to `limit` due rows to `owner`; rows unconfirmed past the 24 h window
        are dead-lettered instead (`take_expired()`)."""
        now = time.time()
        cutoff = now - UNCONFIRMED_LIMIT
        params = {
            "now": now,
            "api": api,
            "limit": limit,
            "owner": owner,
            "until": now + lease_seconds,
        }
        with self._tx() as cur:
            cur.execute(q.CLAIM.encode(), params)
            fetched = cur.fetchall()
            stale = [r for r in fetched if r[10] is not None and r[10] < cutoff]
            if stale:
                cur.executemany(
                    q.EXPIRE.encode(),
                    [(UNCONFIRMED_CODE, expire_message(_iso(r[10]), r[11]), r[0]) for r in stale],
                )
        with self._lock:
            self._expired += len(stale)
        fetched.sort(key=lambda r: r[0])
        return [
            Row(
                id=int(r[0]),
                event=MeterEvent(
                    identifier=r[1],
                    event_name=r[2],
                    timestamp=int(r[7]),
                    customer_id=r[3],
                    model=r[4],
                    token_type=r[5],
                    value=int(r[6]),
                    payload=json.loads(r[8]),
                ),
                attempts=int(r[9]),
            )
            for r in fetched
            if r[10] is None or r[10] >= cutoff
        ]

    def take_expired(self) -> int:
        with self._lock:
            n, self._expired = self._expired, 0
        return n

    def reclaim_from_dead_processes(self, host: str) -> int:
        """Nothing: hosts share this database and pids mean nothing across them (nor across
        containers on one node); a dead process's rows come back when their lease runs out."""
        return 0

    def _update_ids(
        self,
        statement: str,
        params: dict[str, Any],
        ids: Sequence[int],
        *,
        pending_only: bool = False,
    ) -> None:
        if not ids:
            return
        where = " WHERE id = ANY(%(ids)s)" + (" AND status = 'pending'" if pending_only else "")
        self._count(statement + where, {**params, "ids": list(ids)})

    def mark_delivered(self, ids: Sequence[int]) -> None:
        self._update_ids(
            "UPDATE events SET status = 'delivered', delivered = %(now)s, lease_owner = NULL,"
            " lease_until = 0, error_code = NULL, error_message = NULL",
            {"now": time.time()},
            ids,
        )

    def mark_retry(
        self, ids: Sequence[int], delay: float, code: str, message: str, *, maybe_sent: bool = False
    ) -> None:
        now = time.time()
        self._update_ids(
            "UPDATE events SET attempts = attempts + 1, next_attempt = %(due)s, lease_owner = NULL,"
            " lease_until = 0, error_code = %(code)s, error_message = %(msg)s, " + q.STAMP,
            {
                "due": now + delay,
                "code": code,
                "msg": _text(message[:500]),
                "stamp": now if maybe_sent else None,
            },
            ids,
            pending_only=True,
        )

    def release(self, ids: Sequence[int], delay: float = 0.0, *, maybe_sent: bool = False) -> None:
        now = time.time()
        self._update_ids(
            "UPDATE events SET lease_owner = NULL, lease_until = 0, next_attempt = %(due)s, "
            + q.STAMP,
            {"due": now + delay, "stamp": now if maybe_sent else None},
            ids,
            pending_only=True,
        )

    def mark_dead(self, items: Sequence[tuple[int, str, str]]) -> None:
        if not items:
            return
        with self._tx() as cur:
            cur.executemany(
                b"UPDATE events SET status = 'dead', lease_owner = NULL, lease_until = 0,"
                b" error_code = %s, error_message = %s, attempts = attempts + 1 WHERE id = %s",
                [(code, _text(msg[:500]), i) for i, code, msg in items],
            )

    def prune_delivered(self, older_than: float, limit: int = PRUNE_LIMIT) -> int:
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        with self._tx() as cur:
            cur.execute(q.PRUNE.encode(), (older_than, older_than, limit))
            n = cur.rowcount
            postgres_windows.prune(cur, older_than, limit)
        return n

    def has_pending(self) -> bool:
        rows = self._query("SELECT EXISTS (SELECT 1 FROM events WHERE status = 'pending')")
        return bool(rows[0][0])


def _event_params(
    events: Sequence[MeterEvent],
    status: str,
    now: float,
    owner: str | None,
    until: float,
    api: str | None,
) -> dict[str, Any]:
    """`INSERT_EVENTS`' parameters: one array per column, one statement per batch."""
    return {
        "identifier": [e.identifier for e in events],
        "event_name": [e.event_name for e in events],
        "customer_id": [e.customer_id for e in events],
        "model": [_text(e.model) for e in events],
        "token_type": [e.token_type for e in events],
        "value": [e.value for e in events],
        "timestamp": [e.timestamp for e in events],
        "payload": [_compact(e.payload) for e in events],
        "status": status,
        "now": now,
        "delivered": now if status == LOCAL else None,
        "owner": owner,
        "until": until,
        "api": api,
    }


def _insert_closed(now: float) -> Callable[[Any, list[MeterEvent], str, str | None], None]:
    """Inserts a closed window's events on the closing transaction's cursor."""

    def insert(cur: Any, events: list[MeterEvent], status: str, api: str | None) -> None:
        cur.execute(q.INSERT_EVENTS.encode(), _event_params(events, status, now, None, 0.0, api))

    return insert
