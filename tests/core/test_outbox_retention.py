"""Bounded retention: delivered rows older than `retain_delivered` are deleted, nothing else.

Rows are written through the Outbox API, then aged with SQL on a separate connection (as
time would age them).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from stripe_token_meter.events import MeterEvent
from stripe_token_meter.outbox import _PRUNE_SQL, _SCHEMA, LOCAL, PENDING, Outbox

DAY = 86_400.0
WINDOW = 35 * DAY
INDEX_LINE = (
    "CREATE INDEX IF NOT EXISTS events_delivered ON events (delivered) WHERE status='delivered';"
)


def _event(name: str) -> MeterEvent:
    return MeterEvent(
        identifier=f"{name}:input:m",
        event_name="m",
        timestamp=int(time.time()),
        customer_id="cus_a",
        model="openai/gpt-4o",
        token_type="input",
        value=1,
        payload={"stripe_customer_id": "cus_a", "value": "1"},
    )


def _age(path: Path | str, names: list[str], seconds_ago: float) -> None:
    """Move `created`, `delivered` (when set) and the event timestamp back in time."""
    at = time.time() - seconds_ago
    conn = sqlite3.connect(str(path), timeout=30.0)
    with conn:
        for name in names:
            cur = conn.execute(
                "UPDATE events SET created=?, delivered=CASE WHEN delivered IS NULL THEN NULL"
                " ELSE ? END, timestamp=? WHERE identifier LIKE ?",
                (at, at, int(at), f"{name}:%"),
            )
            assert cur.rowcount >= 1, name
    conn.close()


def _names(path: Path | str) -> dict[str, str]:
    conn = sqlite3.connect(str(path))
    rows = conn.execute("SELECT identifier, status FROM events").fetchall()
    conn.close()
    return {ident.split(":")[0]: status for ident, status in rows}


def _delivered(box: Outbox, names: list[str]) -> None:
    rows = box.add_leased([_event(n) for n in names], "me", 30.0)
    box.mark_delivered([r.id for r in rows])


def _fill(box: Outbox) -> None:
    """Two rows of every status, one that will be aged past the window and one not."""
    _delivered(box, ["old-delivered-1", "old-delivered-2", "old-delivered-3", "new-delivered"])
    _delivered(box, ["recent-ts", "inside"])
    box.add([_event("old-pending"), _event("new-pending")], PENDING)
    dead = box.add_leased([_event("old-dead"), _event("new-dead")], "me", 30.0)
    box.mark_dead([(r.id, "archived_meter", "archived") for r in dead])
    _delivered(box, ["old-cancelled", "new-cancelled"])
    for name in ("old-cancelled", "new-cancelled"):
        box.record_adjustment(f"{name}:input:m", "m", "cancelled", None)
    box.add([_event("old-local"), _event("new-local")], LOCAL)
    box.reject("missing_customer", "customer_id", "no customer", {"model": "x"})


def test_prune_deletes_only_delivered_rows_older_than_the_window(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    _fill(box)
    old = [n for n in _names(path) if n.startswith("old-")]
    _age(path, old, WINDOW + 3600)
    _age(path, ["inside"], WINDOW - 3600)
    # Delivered long ago, but its own timestamp is recent: Stripe would still take it.
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute(
            "UPDATE events SET delivered=? WHERE identifier LIKE 'recent-ts:%'",
            (time.time() - WINDOW - 3600,),
        )
        conn.execute("UPDATE rejected SET created=?", (time.time() - WINDOW - 3600,))
        conn.execute("UPDATE adjustments SET created=?", (time.time() - WINDOW - 3600,))
    conn.close()
    before = box.counts()
    assert (before["delivered"], before["cancelled"], before["rejected"]) == (6, 2, 1)

    assert box.prune_delivered(time.time() - WINDOW) == 3
    assert box.prune_delivered(time.time() - WINDOW) == 0

    assert _names(path) == {
        "new-delivered": "delivered",
        "recent-ts": "delivered",
        "inside": "delivered",
        "old-pending": "pending",
        "new-pending": "pending",
        "old-dead": "dead",
        "new-dead": "dead",
        "old-cancelled": "cancelled",
        "new-cancelled": "cancelled",
        "old-local": "local",
        "new-local": "local",
    }
    after = box.counts()
    assert {k: after[k] for k in ("delivered", "pending", "dead", "cancelled", "local")} == {
        "delivered": 3,
        "pending": 2,
        "dead": 2,
        "cancelled": 2,
        "local": 2,
    }
    assert after["rejected"] == 1
    assert box.query("SELECT COUNT(*) FROM adjustments") == [(2,)]
    box.close()


def test_prune_honours_its_limit_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    names = [f"d{i:02d}" for i in range(12)]
    _delivered(box, names)
    for i, name in enumerate(names):  # d00 oldest
        _age(path, [name], WINDOW + 1000 - i)
    cutoff = time.time() - WINDOW
    assert box.prune_delivered(cutoff, limit=5) == 5
    assert sorted(_names(path)) == names[5:]
    assert box.prune_delivered(cutoff, limit=5) == 5
    assert box.prune_delivered(cutoff, limit=5) == 2
    assert box.prune_delivered(cutoff, limit=5) == 0
    assert _names(path) == {}
    with pytest.raises(ValueError, match="limit: must be at least 1"):
        box.prune_delivered(cutoff, limit=0)  # SQLite reads LIMIT -1 as "no limit"
    box.close()


def test_the_partial_index_exists_and_the_prune_query_uses_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    (sql,) = box.query("SELECT sql FROM sqlite_master WHERE name='events_delivered'")[0]
    assert sql == "CREATE INDEX events_delivered ON events (delivered) WHERE status='delivered'"
    plan = [str(r[3]) for r in box.query("EXPLAIN QUERY PLAN " + _PRUNE_SQL, (1.0, 1.0, 5))]
    assert any("USING INDEX events_delivered (delivered<?)" in step for step in plan), plan
    assert not any("SCAN" in step or "TEMP B-TREE" in step for step in plan), plan
    box.close()


def test_an_outbox_made_by_the_previous_schema_gets_the_index_on_open(tmp_path: Path) -> None:
    assert INDEX_LINE in _SCHEMA
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(str(path))
    conn.executescript(_SCHEMA.replace(INDEX_LINE, ""))
    conn.close()
    box = Outbox(path)
    _delivered(box, ["gone", "kept"])
    box.close()
    conn = sqlite3.connect(str(path))
    conn.execute("DROP INDEX events_delivered")  # as the previous version left the file
    conn.close()
    _age(path, ["gone"], WINDOW + 60)

    box = Outbox(path)
    assert box.query("SELECT name FROM sqlite_master WHERE name='events_delivered'") == [
        ("events_delivered",)
    ]
    assert box.prune_delivered(time.time() - WINDOW) == 1
    assert _names(path) == {"kept": "delivered"}
    box.close()
