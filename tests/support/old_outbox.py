"""An outbox file as versions before `events.unconfirmed`, `events.api` and
`rejected.resolved` wrote it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stripe_token_meter.outbox import _SCHEMA


def write_old_outbox(path: Path, event_status: str) -> None:
    """The older schema, one event ('a', 5 input tokens) in `event_status` and one rejected
    `missing_customer` record."""
    old_schema = _SCHEMA.replace(
        "    delivered REAL,\n    unconfirmed REAL,\n    api TEXT\n", "    delivered REAL\n"
    ).replace("    record TEXT NOT NULL,\n    resolved REAL\n", "    record TEXT NOT NULL\n")
    assert "unconfirmed" not in old_schema and "resolved REAL" not in old_schema
    assert "api TEXT" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO events (identifier, event_name, customer_id, model, token_type, value,"
            " timestamp, payload, status, created) VALUES ('a', 'e', 'cus_1', 'm', 'input', 5,"
            " 1, '{}', ?, 1)",
            (event_status,),
        )
        db.execute(
            "INSERT INTO rejected (created, code, field, message, record)"
            " VALUES (1, 'missing_customer', 'customer_id', 'no customer', '{}')"
        )
