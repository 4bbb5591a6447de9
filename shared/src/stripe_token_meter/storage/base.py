"""What every outbox backend is: the statuses, the row type and the `OutboxStore` interface.

The worker, the intake and the CLI use only these methods, so SQL stays inside the
backend modules (`sqlite.py`, `postgres.py`) and one contract suite
(tests/storage/test_contract.py) holds every backend to the same behaviour.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from ..aggregate import Aggregation
from ..errors import OutboxError
from ..events import MeterEvent
from ..retry import DEDUP_WINDOW

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
LOCAL: Final = "local"
CANCELLED: Final = "cancelled"
RESOLVED: Final = "resolved"
"""A dead letter an operator settled without sending it (`stripe-token-meter resolve`)."""
STATUSES: Final = (PENDING, DELIVERED, DEAD, LOCAL, CANCELLED, RESOLVED)

UNCONFIRMED_CODE: Final = "unconfirmed_past_dedup_window"
UNCONFIRMED_LIMIT: Final = DEDUP_WINDOW - 3600.0
"""A row first sent without a confirmed outcome longer ago than this is not sent again:
Stripe's duplicate check on identifiers lasts 24 hours (`retry.DEDUP_WINDOW`), and the
hour kept in hand covers a request's own duration and clock steps."""
PRUNE_LIMIT: Final = 5000
"""Rows `prune_delivered` deletes per transaction: the write lock is held only briefly."""
POSTGRES_SCHEMES: Final = ("postgresql", "postgres")

Reject = tuple[str, str, str, dict[str, Any]]
"""A usage record that could not become events: (code, field, message, record)."""
Progress = tuple[str, int]
"""How far a journal segment is in the outbox: (segment name, byte offset)."""
EventRef = tuple[str, str | None, str | None, float | None]
"""(identifier, event name, status, delivered at) as `find_events` returns them."""


class OutboxUnavailable(OutboxError):
    """The outbox's database cannot be reached now (a PostgreSQL outage or failover): the
    backend has said so once in the log; callers keep records and try again later."""


@dataclass(frozen=True, slots=True)
class Row:
    """A claimed outbox row: the event plus its delivery bookkeeping."""

    id: int
    event: MeterEvent
    attempts: int


def expire_message(unconfirmed: str, last_code: str | None) -> str:
    """The reason kept on a row dead-lettered as unconfirmed past Stripe's 24 h check."""
    return (
        f"sent at {unconfirmed} without a confirmed answer (last error: {last_code or 'none'}),"
        " and Stripe refuses a repeated identifier for 24 hours only: sending it again now"
        " could bill it twice. Check this customer's usage for that time in Stripe; if it is"
        f" missing there, `stripe-token-meter replay --code {UNCONFIRMED_CODE}` sends it"
    )


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    """Whether `target` names a PostgreSQL outbox (`postgresql://` or `postgres://`)."""
    scheme, sep, _ = os.fspath(target).partition("://")
    return bool(sep) and scheme.lower() in POSTGRES_SCHEMES


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_url(target: str | os.PathLike[str]) -> str:
    """`target` fit for messages and logs: a URL's password (inline or as a parameter) is
    replaced by `***`. File paths come back unchanged."""
    text = os.fspath(target)
    if "://" not in text:
        return text
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", text))


def check_outbox_path(path: str | os.PathLike[str]) -> str:
    """A file path, `:memory:` or a PostgreSQL URL; any other URL is refused by name."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    if sep and scheme and scheme.replace("+", "").isalnum() and not is_postgres_url(text):
        raise OutboxError(
            redact_url(text),
            f"'{scheme}://' outboxes are not supported; give a file path (a SQLite file is "
            "created there), a postgresql:// URL (pip install 'stripe-token-meter[postgres]'), "
            "or leave it unset for the per-user default",
        )
    return text


def default_outbox_path() -> Path | str:
    """`$STRIPE_TOKEN_METER_OUTBOX` (a path or a PostgreSQL URL), else a per-user data dir
    (XDG on Linux)."""
    env = os.environ.get("STRIPE_TOKEN_METER_OUTBOX")
    if env:
        return env if "://" in env else Path(env).expanduser()  # a URL: checked on open
    return per_user_outbox_path()


def per_user_outbox_path() -> Path:
    """`$XDG_DATA_HOME` (else `~/.local/share`) `/stripe-token-meter/outbox.sqlite3`."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "stripe-token-meter" / "outbox.sqlite3"


class OutboxStore(Protocol):
    """Every outbox backend: what the intake, the worker and the CLI may call.

    Semantics every backend keeps (tests/storage/test_contract.py): an identifier is stored
    once; a row is leased to one claimer at a time; a lease that runs out without being
    handed back makes the row claimable again, stamped `unconfirmed` (Stripe may have it);
    rows unconfirmed past `UNCONFIRMED_LIMIT` are dead-lettered instead of sent again.
    """

    path: str
    """What `TokenMeter(outbox_path=...)` named (a PostgreSQL URL keeps its password: show
    `label` instead)."""

    @property
    def label(self) -> str:
        """`path` fit for messages: no password."""
        ...

    @property
    def journal_home(self) -> str | None:
        """Where this outbox's local journals live (None: none, e.g. `:memory:`)."""
        ...

    def close(self) -> None: ...
    def replaced(self) -> bool: ...
    def recreate(self) -> int: ...

    # -- intake ---------------------------------------------------------------------------
    def add(
        self, events: Iterable[MeterEvent], status: str = PENDING, *, api: str | None = None
    ) -> int: ...
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
    ) -> tuple[int, list[Row]]: ...
    def close_windows(self, *, everything: bool = False) -> int: ...
    def reject(self, code: str, field: str, message: str, record: dict[str, Any]) -> None: ...
    def journal_offset(self, segment: str) -> int: ...
    def forget_journal(self, segment: str) -> None: ...

    # -- worker ---------------------------------------------------------------------------
    def claim(
        self, owner: str, limit: int, lease_seconds: float, *, api: str | None = None
    ) -> list[Row]: ...
    def take_expired(self) -> int: ...
    def reclaim_from_dead_processes(self, host: str) -> int: ...
    def mark_delivered(self, ids: Sequence[int]) -> None: ...
    def mark_retry(
        self, ids: Sequence[int], delay: float, code: str, message: str, *, maybe_sent: bool = False
    ) -> None: ...
    def mark_dead(self, items: Sequence[tuple[int, str, str]]) -> None: ...
    def release(
        self, ids: Sequence[int], delay: float = 0.0, *, maybe_sent: bool = False
    ) -> None: ...
    def prune_delivered(self, older_than: float, limit: int = PRUNE_LIMIT) -> int: ...
    def has_pending(self) -> bool: ...

    # -- operator actions (CLI) -----------------------------------------------------------
    def requeue_dead(self, code: str | None = None) -> int: ...
    def requeue_dead_ids(self, ids: Sequence[int]) -> int: ...
    def replayable_ids(self, code: str | None = None) -> list[int]: ...
    def replayable_rows(self, code: str | None = None) -> list[tuple[int, str | None, str]]: ...
    def withdraw(self, identifier: str) -> str | None: ...
    def resolve_dead(self, code: str) -> int: ...
    def resolve_rejected(self, code: str) -> int: ...
    def record_adjustment(
        self, identifier: str, event_name: str, status: str, error: str | None
    ) -> None: ...
    def hold_other_apis(self, api: str, default_api: str, seconds: float) -> list[int]: ...
    def release_held(self, ids: Sequence[int]) -> None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    # -- reads (CLI reports) --------------------------------------------------------------
    def get_meta(self, key: str) -> str | None: ...
    def counts(self) -> dict[str, int]: ...
    def pending_count(self) -> int: ...
    def next_due(self) -> float | None: ...
    def pending_by_api(self, default_api: str) -> dict[str, int]: ...
    def outcomes(
        self, ids: Sequence[int], default_api: str
    ) -> list[tuple[str, str, str | None, int]]: ...
    def apis(
        self, *, since: float | None = None, customer: str | None = None
    ) -> dict[str, int]: ...
    def event_names(self) -> dict[str, int]: ...
    def last_delivered(self) -> float | None: ...
    def rejected_count(self, *, since: float | None = None, customer: str | None = None) -> int: ...
    def open_codes(self) -> tuple[list[str], list[str]]: ...
    def oldest_pending(self) -> float | None: ...
    def dead_by_code(self) -> list[tuple[str, int, int, str | None]]: ...
    def rejected_by_code(self) -> list[tuple[str, int, str, str]]: ...
    def adjustment_counts(self) -> dict[str, int]: ...
    def report_rows(
        self, *, since: float | None = None, customer: str | None = None
    ) -> list[tuple[str, str, str, str, int, int]]: ...
    def delivered_totals(self) -> dict[tuple[str, str, str], tuple[int, int]]: ...
    def find_events(self, identifier: str) -> list[EventRef]: ...
    def last_event_error(self) -> tuple[str | None, str] | None: ...
    def rejected_records(self) -> list[tuple[str, str, str, dict[str, Any], float | None]]: ...

    # -- what Stripe reports back (error reports, reconciliation) -------------------------
    def dead_letter_identifiers(self, items: Sequence[tuple[str, str, str]]) -> tuple[int, int]: ...
    def record_error_report(self, event_id: str, kind: str, counts: Mapping[str, int]) -> bool: ...
    def error_report_counts(self, *, since: float | None = None) -> dict[str, int]: ...
    def delivered_per_customer_hour(
        self, event_name: str, since: float, customer: str | None = None
    ) -> list[tuple[str, int, int, int]]: ...
    def spent_since(
        self, event_name: str, since: float, until: float | None = None
    ) -> dict[str, int]: ...
