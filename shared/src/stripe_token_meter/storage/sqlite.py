"""Durable SQLite outbox (WAL): every event is here before any send, until Stripe accepts it.

Rows are claimed with leases, so several processes (gunicorn/uvicorn workers) can share one
file: a killed process's rows become claimable again when its lease runs out, and Stripe's
identifier dedup plus our own UNIQUE identifier make a second send harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..aggregate import Aggregation
from ..errors import OutboxError
from ..events import MeterEvent
from . import sqlite_windows
from .base import (
    LOCAL,
    PENDING,
    PRUNE_LIMIT,
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    Progress,
    Reject,
    Row,
    check_outbox_path,
    default_outbox_path,
    is_postgres_url,
    redact_url,
)
from .sqlite_ops import IN_CHUNK, SqliteOperations
from .sqlite_sql import (
    _ADDED_TYPES,
    _EVENT_COLUMNS,
    _EXPIRE_SQL,
    _N_COLUMNS,
    _PROGRESS_SQL,
    _PRUNE_SQL,
    _REJECT_SQL,
    _SCHEMA,
    _STAMP,
    WAL_CHECKPOINT_PAGES,
    _chunk,
    _compact,
    _create_private,
    _insert_sql,
    _missing_columns,
    _outbox_error,
    _owner_is_dead,
    _record_json,
)
from .sqlite_stripe_reports import SqliteStripeReports


class Outbox(SqliteOperations, SqliteStripeReports):
    """Thread-safe access to one outbox file (one connection, one lock): `OutboxStore`."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, readonly: bool = False
    ) -> None:
        if path is None:
            path = default_outbox_path()
        self.path = check_outbox_path(path)
        if is_postgres_url(self.path):
            raise OutboxError(
                redact_url(self.path),
                "is a PostgreSQL URL: open it with stripe_token_meter.storage.open_store",
            )
        self._readonly = readonly
        self._lock = threading.Lock()
        self._expired = 0  # see take_expired()
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise _outbox_error(self.path, exc, readonly) from None
        except OSError as exc:  # its directory cannot be made or the file created
            raise OutboxError(
                self.path,
                f"cannot be created ({exc.strerror or exc}): check the directory's permissions "
                "or choose another path (TokenMeter(outbox_path=...), STRIPE_TOKEN_METER_OUTBOX)",
            ) from None
        self._inode = self._file_inode()

    def _connect(self) -> sqlite3.Connection:
        if self._readonly:
            # Reports must not create or change the file (nor need write permission).
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=30000")
            self._check_foreign(conn)
            nulls: dict[str, str] = {}
            for table, column in _missing_columns(conn):  # an older file, left as it is:
                nulls[table] = nulls.get(table, "") + f", NULL AS {column}"
            for table, columns in nulls.items():
                # a temp view of the same name (searched first) adds the columns as NULL
                conn.execute(f"CREATE TEMP VIEW {table} AS SELECT *{columns} FROM main.{table}")
            return conn
        if self.path != ":memory:":
            _create_private(self.path)
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=30000")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        limit = 999  # SQLite's oldest limit on variables per statement
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        which = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
        if getlimit is not None and which is not None:
            limit = int(getlimit(which))
        self._rows_per_insert = max(1, min(500, limit // _N_COLUMNS))
        self._check_foreign(conn)
        conn.executescript(_SCHEMA + sqlite_windows.SCHEMA)
        for table, column in _missing_columns(conn):  # a file from before them
            kind = _ADDED_TYPES.get((table, column), "REAL")
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # not another process's doing
                    raise
        return conn

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse a SQLite file some other program owns rather than write into it."""
        columns = {r[1] for r in conn.execute("PRAGMA main.table_info(events)")}
        if columns and not columns >= _EVENT_COLUMNS:
            raise OutboxError(
                self.path,
                "this SQLite file has an 'events' table that is not a stripe-token-meter "
                "outbox's; point TokenMeter(outbox_path=...) or STRIPE_TOKEN_METER_OUTBOX at "
                "a file of its own",
            )

    def _file_inode(self) -> int | None:
        if self.path == ":memory:":
            return None
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    @property
    def label(self) -> str:
        return self.path

    @property
    def journal_home(self) -> str | None:
        """`<outbox>.journal/` beside the file; None for `:memory:`."""
        return None if self.path == ":memory:" else self.path + ".journal"

    def replaced(self) -> bool:
        """Whether the file at our path was deleted or replaced since we opened it."""
        if self._inode is None:
            return False
        return self._file_inode() != self._inode

    def recreate(self) -> int:
        """After `replaced()`: put everything this connection still holds (it keeps the
        deleted file open) back at the path, and use that file from now on. Returns the
        rows still waiting (pending and dead) that were saved."""
        with self._lock:
            (waiting,) = self._conn.execute(
                "SELECT COUNT(*) FROM events WHERE status IN ('pending', 'dead')"
            ).fetchone()
            copy = f"{self.path}.saved-{os.getpid()}"
            self._conn.execute("VACUUM INTO ?", (copy,))  # the deleted file, whole
            os.chmod(copy, 0o600)
            self._conn.close()
            self._conn = self._connect()  # a new file at the path (or one made meanwhile)
            try:
                self._merge_from(copy)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(copy + suffix)
            self._inode = self._file_inode()
        return int(waiting)

    def _merge_from(self, copy: str) -> None:
        """Every row of the outbox file `copy` into ours (under the lock): events by their
        unique identifier, rejected records, journal progress (the furthest offset)."""
        columns = ", ".join(
            r[1] for r in self._conn.execute("PRAGMA main.table_info(events)") if r[1] != "id"
        )
        rejected = ", ".join(
            r[1] for r in self._conn.execute("PRAGMA main.table_info(rejected)") if r[1] != "id"
        )
        self._conn.execute("ATTACH DATABASE ? AS saved", (copy,))
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    f"INSERT OR IGNORE INTO main.events ({columns})"
                    f" SELECT {columns} FROM saved.events ORDER BY id"
                )
                self._conn.execute(
                    f"INSERT INTO main.rejected ({rejected}) SELECT {rejected} FROM saved.rejected"
                )
                self._conn.execute(
                    "INSERT INTO main.journal (segment, offset) SELECT segment, offset"
                    " FROM saved.journal WHERE true ON CONFLICT(segment)"
                    " DO UPDATE SET offset=MAX(offset, excluded.offset)"
                )
                self._conn.execute(
                    "INSERT OR IGNORE INTO main.meta (key, value) SELECT key, value FROM saved.meta"
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        finally:
            self._conn.execute("DETACH DATABASE saved")

    def _rollback(self) -> None:
        """Roll back if a transaction is still open: SQLite already rolled back on some
        errors (disk full), and a second ROLLBACK would hide the real one."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ---------------------------------------------------------------------------

    def add(
        self, events: Iterable[MeterEvent], status: str = PENDING, *, api: str | None = None
    ) -> int:
        """Insert events; an identifier already present is ignored (never doubled). Returns new rows.
        `api` ('v1'/'v2'): how they are to be sent, so a replay resends them the same way."""
        return self._insert(events, status, None, 0.0, api=api)[0]

    def add_leased(
        self,
        events: Iterable[MeterEvent],
        owner: str,
        lease_seconds: float,
        *,
        api: str | None = None,
    ) -> list[Row]:
        """Insert pending events already leased to `owner`; returns the new ones as claimed rows.

        The worker sends what it has just stored without claiming it back: a claim rewrites
        every row and decodes its payload, 15 % of the worker's time at 13,000 events/s.
        Identifiers already present are left out, exactly as `add` does.
        """
        return self._insert(events, PENDING, owner, time.time() + lease_seconds, api=api)[1]

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
        """Events, rejected records and how far each journal segment was read, in one
        transaction: a crash either keeps all of it or none, so a journal is never read
        into the outbox twice. (rows added, those rows leased to `owner` if given).

        With `aggregate` the events are summed into their windows instead (the count is
        of events summed; a call already summed is not summed again), nothing is leased."""
        if aggregate is not None:
            return self._sum(events, rejects, progress, aggregate, status, api), []
        lease_until = time.time() + lease_seconds if owner is not None else 0.0
        return self._insert(events, status, owner, lease_until, rejects, progress, api=api)

    def _sum(
        self,
        events: Sequence[MeterEvent],
        rejects: Sequence[Reject],
        progress: Sequence[Progress],
        aggregate: Aggregation,
        status: str,
        api: str | None,
    ) -> int:
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                added = sqlite_windows.add(self._conn, events, aggregate, now, status, api)
                self._store_rejects_and_progress(rejects, progress, now)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return added

    def _store_rejects_and_progress(
        self, rejects: Sequence[Reject], progress: Sequence[Progress], now: float
    ) -> None:
        """Inside the caller's transaction: rejected records and journal progress."""
        if rejects:
            self._conn.executemany(
                _REJECT_SQL, [(now, c, f, m, _record_json(r)) for c, f, m, r in rejects]
            )
        if progress:
            self._conn.executemany(_PROGRESS_SQL, progress)

    def close_windows(self, *, everything: bool = False) -> int:
        """Turn the aggregation windows due now (all open ones if `everything`: a flush
        or a close) into events; each window exactly once, whichever process gets there
        first. Returns how many events were made."""
        now = time.time()
        with self._lock:
            if not sqlite_windows.any_open(self._conn):
                return 0  # the common case, without taking the write lock
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                n = sqlite_windows.close(
                    self._conn,
                    now,
                    everything,
                    lambda batch, status, api: self._execute_inserts(
                        self._rows(batch, status, None, 0.0, now, api)
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return n

    def journal_offset(self, segment: str) -> int:
        """How far `segment` is already in the outbox (0 if never read)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT offset FROM journal WHERE segment=?", (segment,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def forget_journal(self, segment: str) -> None:
        """A segment that is all in and deleted: its progress row is not needed."""
        with self._lock:
            self._conn.execute("DELETE FROM journal WHERE segment=?", (segment,))

    def _insert(
        self,
        events: Iterable[MeterEvent],
        status: str,
        owner: str | None,
        lease_until: float,
        rejects: Sequence[Reject] = (),
        progress: Sequence[Progress] = (),
        *,
        api: str | None = None,
    ) -> tuple[int, list[Row]]:
        """(rows added, and with an `owner` those rows as claimed by it)."""
        now = time.time()
        batch = list(events)
        rows = self._rows(batch, status, owner, lease_until, now, api)
        if not rows and not rejects and not progress:
            return 0, []
        added: list[tuple[int, str]] = []
        with self._lock:
            before = self._conn.total_changes
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if owner is not None:
                    # Under the write lock no one else inserts: rows above the current
                    # maximum id are exactly the ones this statement adds.
                    (last,) = self._conn.execute(
                        "SELECT COALESCE(MAX(id), 0) FROM events"
                    ).fetchone()
                self._execute_inserts(rows)
                count = self._conn.total_changes - before
                if owner is not None and count != len(rows):
                    added = self._conn.execute(
                        "SELECT id, identifier FROM events WHERE id>? ORDER BY id", (last,)
                    ).fetchall()
                self._store_rejects_and_progress(rejects, progress, now)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if owner is None or not rows:
            return count, []
        if count == len(rows):
            # Nothing ignored: each insert took the next id (max + 1), in order.
            return count, [Row(id=last + 1 + k, event=e, attempts=0) for k, e in enumerate(batch)]
        first: dict[str, MeterEvent] = {}
        for e in batch:
            first.setdefault(e.identifier, e)
        return len(added), [Row(id=i, event=first[ident], attempts=0) for i, ident in added]

    def _execute_inserts(self, rows: list[tuple[Any, ...]]) -> None:
        """Multi-row INSERTs inside the caller's transaction (the lock is held)."""
        lo = 0
        while lo < len(rows):
            n = _chunk(len(rows) - lo, self._rows_per_insert)
            chunk = rows[lo : lo + n]
            self._conn.execute(_insert_sql(n), [v for row in chunk for v in row])
            lo += n

    @staticmethod
    def _rows(
        batch: list[MeterEvent],
        status: str,
        owner: str | None,
        lease_until: float,
        now: float,
        api: str | None,
    ) -> list[tuple[Any, ...]]:
        return [
            (
                e.identifier,
                e.event_name,
                e.customer_id,
                e.model,
                e.token_type,
                e.value,
                e.timestamp,
                _compact(e.payload),
                status,
                now,
                now if status == LOCAL else None,
                owner,
                lease_until,
                api,
            )
            for e in batch
        ]

    def reject(self, code: str, field: str, message: str, record: dict[str, Any]) -> None:
        """Keep a usage record that could not become events (dead letter with its reason)."""
        self.ingest([], [(code, field, message, record)], [])

    def claim(
        self, owner: str, limit: int, lease_seconds: float, *, api: str | None = None
    ) -> list[Row]:
        """Lease up to `limit` due pending rows to `owner` (atomic across processes). With
        `api`, only rows recorded for that API (or before the `api` column): an event is
        only ever sent through the API it was first sent with.

        Ordered by the `events_due` index (status, next_attempt, id): ordering by id alone
        made SQLite sort the whole backlog on every claim (2,400 events/s drained from a
        1,000,000-event backlog, against 28,000 with the index order).

        A row whose lease ran out without being handed back (its holder died or stalled
        mid-request) may be at Stripe: it is stamped `unconfirmed` as of that lease's end.
        Rows unconfirmed for `UNCONFIRMED_LIMIT` are dead-lettered here instead of being
        returned (`take_expired()` says how many).
        """
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(
                    "UPDATE events SET lease_owner=?, lease_until=?, unconfirmed=CASE WHEN"
                    " lease_owner IS NULL THEN unconfirmed"
                    " ELSE COALESCE(unconfirmed, MIN(lease_until, ?)) END"
                    " WHERE id IN ("
                    " SELECT id FROM events WHERE status='pending' AND next_attempt<=?"
                    " AND lease_until<=? AND (? IS NULL OR api IS NULL OR api=?)"
                    " ORDER BY next_attempt, id LIMIT ?)"
                    " RETURNING id, identifier, event_name, customer_id, model, token_type,"
                    " value, timestamp, payload, attempts, unconfirmed",
                    (owner, now + lease_seconds, now, now, now, api, api, limit),
                )
                fetched = cur.fetchall()
                cutoff = now - UNCONFIRMED_LIMIT
                stale = [r[0] for r in fetched if r[10] is not None and r[10] < cutoff]
                for lo in range(0, len(stale), IN_CHUNK):
                    chunk = stale[lo : lo + IN_CHUNK]
                    self._conn.execute(
                        f"{_EXPIRE_SQL} WHERE id IN ({','.join('?' * len(chunk))})",
                        (UNCONFIRMED_CODE, *chunk),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._expired += len(stale)
        if stale:
            fetched = [r for r in fetched if r[10] is None or r[10] >= cutoff]
        fetched.sort(key=lambda r: r[0])
        return [
            Row(
                id=r[0],
                event=MeterEvent(
                    identifier=r[1],
                    event_name=r[2],
                    timestamp=r[7],
                    customer_id=r[3],
                    model=r[4],
                    token_type=r[5],
                    value=r[6],
                    payload=json.loads(r[8]),
                ),
                attempts=r[9],
            )
            for r in fetched
        ]

    def take_expired(self) -> int:
        """Rows `claim()` dead-lettered as unconfirmed past the window since the last call."""
        with self._lock:
            n, self._expired = self._expired, 0
        return n

    def reclaim_from_dead_processes(self, host: str) -> int:
        """Free rows leased by processes of this host that no longer exist (killed workers)."""
        now = time.time()
        with self._lock:
            owners = [
                str(r[0])
                for r in self._conn.execute(
                    "SELECT DISTINCT lease_owner FROM events WHERE status='pending' AND lease_until>?"
                    " AND lease_owner IS NOT NULL",
                    (now,),
                )
            ]
        dead = [o for o in owners if _owner_is_dead(o, host)]
        # A killed process may have had their requests out: Stripe may have them.
        self._update_many(
            "UPDATE events SET lease_owner=NULL, lease_until=0, " + _STAMP + " WHERE"
            " status='pending' AND lease_owner=?",
            [(now, o) for o in dead],
        )
        return len(dead)

    def _update_many(self, sql: str, params: Sequence[tuple[Any, ...]]) -> None:
        if not params:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _update_ids(
        self, sql: str, params: tuple[Any, ...], ids: Sequence[int], *, pending_only: bool = False
    ) -> None:
        """`sql ... WHERE id IN (ids)` in one transaction: one statement per 500 rows
        rather than one per row (3.8 -> 2.4 us per delivered event). `pending_only`: rows
        meanwhile dead-lettered or withdrawn elsewhere keep their status and reason."""
        if not ids:
            return
        where = "WHERE status='pending' AND id IN" if pending_only else "WHERE id IN"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for lo in range(0, len(ids), IN_CHUNK):
                    chunk = ids[lo : lo + IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    self._conn.execute(f"{sql} {where} ({marks})", (*params, *chunk))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def mark_delivered(self, ids: Sequence[int]) -> None:
        self._update_ids(
            "UPDATE events SET status='delivered', delivered=?, lease_owner=NULL, lease_until=0,"
            " error_code=NULL, error_message=NULL",
            (time.time(),),
            ids,
        )

    def mark_retry(
        self, ids: Sequence[int], delay: float, code: str, message: str, *, maybe_sent: bool = False
    ) -> None:
        """Back to pending, due after `delay`; attempts counted. `maybe_sent`: Stripe may
        have recorded them (no answer, a 5xx): the first such time is kept (`unconfirmed`)."""
        now = time.time()
        self._update_ids(
            "UPDATE events SET attempts=attempts+1, next_attempt=?, lease_owner=NULL,"
            " lease_until=0, error_code=?, error_message=?, " + _STAMP,
            (now + delay, code, message[:500], now if maybe_sent else None),
            ids,
            pending_only=True,
        )

    def release(self, ids: Sequence[int], delay: float = 0.0, *, maybe_sent: bool = False) -> None:
        """Give rows back without counting an attempt (pause, shutdown). `maybe_sent`: their
        request was cancelled while out, so Stripe may have them (see `mark_retry`)."""
        now = time.time()
        self._update_ids(
            "UPDATE events SET lease_owner=NULL, lease_until=0, next_attempt=?, " + _STAMP,
            (now + delay, now if maybe_sent else None),
            ids,
            pending_only=True,
        )

    def mark_dead(self, items: Sequence[tuple[int, str, str]]) -> None:
        """Dead-letter rows: (id, Stripe error code, message). Replayable later."""
        self._update_many(
            "UPDATE events SET status='dead', lease_owner=NULL, lease_until=0, error_code=?,"
            " error_message=?, attempts=attempts+1 WHERE id=?",
            [(code, msg[:500], i) for i, code, msg in items],
        )

    def prune_delivered(self, older_than: float, limit: int = PRUNE_LIMIT) -> int:
        """Delete at most `limit` delivered rows delivered (and timestamped) before
        `older_than` (Unix seconds), oldest first, in one short transaction; returns how many.

        Only `delivered` rows go: pending, dead, cancelled and local-ledger rows, rejected
        records and adjustments are never touched. Safe with several processes on one file:
        deleting rows already gone is a no-op.
        """
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                n = self._conn.execute(_PRUNE_SQL, (older_than, older_than, limit)).rowcount
                sqlite_windows.prune(self._conn, older_than, limit)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return n
