"""Outbox backends behind one interface (`OutboxStore`): a SQLite file, or PostgreSQL.

`open_store(target)` picks the backend from what `TokenMeter(outbox_path=...)`,
`STRIPE_TOKEN_METER_OUTBOX` or the CLI's `--outbox` named: a `postgresql://` (or
`postgres://`) URL opens the PostgreSQL outbox (psycopg 3 is imported only then), anything
else is a SQLite file path.
"""

from __future__ import annotations

import os

from .base import (
    CANCELLED,
    DEAD,
    DELIVERED,
    LOCAL,
    PENDING,
    PRUNE_LIMIT,
    RESOLVED,
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    OutboxStore,
    Progress,
    Reject,
    Row,
    check_outbox_path,
    default_outbox_path,
    is_postgres_url,
    redact_url,
)

__all__ = [
    "CANCELLED",
    "DEAD",
    "DELIVERED",
    "LOCAL",
    "PENDING",
    "PRUNE_LIMIT",
    "RESOLVED",
    "UNCONFIRMED_CODE",
    "UNCONFIRMED_LIMIT",
    "OutboxStore",
    "Progress",
    "Reject",
    "Row",
    "check_outbox_path",
    "default_outbox_path",
    "is_postgres_url",
    "open_store",
    "redact_url",
]


def open_store(
    target: str | os.PathLike[str] | None = None, *, readonly: bool = False
) -> OutboxStore:
    """The outbox `target` names (None: `default_outbox_path()`)."""
    if target is None:
        target = default_outbox_path()
    text = check_outbox_path(target)
    if is_postgres_url(text):
        from .postgres import PostgresOutbox  # psycopg: only for a PostgreSQL outbox

        return PostgresOutbox(text, readonly=readonly)
    from .sqlite import Outbox

    return Outbox(text, readonly=readonly)
