"""The outbox under its historical name: the SQLite backend and the shared definitions.

New code opens an outbox with `stripe_token_meter.storage.open_store`, which also takes a
PostgreSQL URL; `Outbox` is the SQLite backend (`storage/sqlite.py`).
"""

from __future__ import annotations

from .storage.base import (
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
)
from .storage.sqlite import Outbox
from .storage.sqlite_sql import _PRUNE_SQL, _SCHEMA, WAL_CHECKPOINT_PAGES

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
    "WAL_CHECKPOINT_PAGES",
    "_PRUNE_SQL",
    "_SCHEMA",
    "Outbox",
    "OutboxStore",
    "Progress",
    "Reject",
    "Row",
    "check_outbox_path",
    "default_outbox_path",
]
