"""Bounded retention: delivered rows older than `retain_delivered` are deleted, nothing else.

Rows are written through the Outbox API, then aged with SQL on a separate connection (as
time would age them); the worker's prune timers are shortened with monkeypatch.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import stripe_token_meter.worker as worker_module
from stripe_token_meter import ConfigurationError, TokenMeter, Usage
from stripe_token_meter.events import MeterEvent
from stripe_token_meter.outbox import _PRUNE_SQL, _SCHEMA, LOCAL, PENDING, Outbox
from support.events import stored_event

MeterFactory = Callable[..., TokenMeter]
DAY = 86_400.0
WINDOW = 35 * DAY
INDEX_LINE = (
    "CREATE INDEX IF NOT EXISTS events_delivered ON events (delivered) WHERE status='delivered';"
)


def _event(name: str) -> MeterEvent:
    return stored_event(name, event_name="m", customer="cus_a")


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
    assert box._query("SELECT COUNT(*) FROM adjustments") == [(2,)]
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
    (sql,) = box._query("SELECT sql FROM sqlite_master WHERE name='events_delivered'")[0]
    assert sql == "CREATE INDEX events_delivered ON events (delivered) WHERE status='delivered'"
    plan = [str(r[3]) for r in box._query("EXPLAIN QUERY PLAN " + _PRUNE_SQL, (1.0, 1.0, 5))]
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
    assert box._query("SELECT name FROM sqlite_master WHERE name='events_delivered'") == [
        ("events_delivered",)
    ]
    assert box.prune_delivered(time.time() - WINDOW) == 1
    assert _names(path) == {"kept": "delivered"}
    box.close()


def _usage(request_id: str, timestamp: float | None = None) -> Usage:
    return Usage(
        customer_id="cus_a",
        model="openai/gpt-4o",
        input_tokens=10,
        output_tokens=5,
        request_id=request_id,
        timestamp=timestamp,
    )


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def fast_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "PRUNE_FIRST", 0.0)
    monkeypatch.setattr(worker_module, "PRUNE_INTERVAL", 0.05)


def test_the_worker_prunes_old_delivered_rows(
    fast_prune: None, make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(retain_delivered=DAY)
    path = meter.stats()["outbox"]
    for name in ("r0", "r1", "r2"):
        meter.record(_usage(name))
    assert meter.flush(10)
    assert meter.stats()["delivered"] == 6
    _age(path, ["r0", "r2"], DAY + 600)
    _age(path, ["r1"], DAY - 600)
    assert _wait(lambda: meter.stats()["delivered"] == 2)
    assert _names(path) == {"r1": "delivered"}
    # Delivery goes on after pruning.
    meter.record(_usage("r3"))
    assert meter.flush(10)
    assert _names(path) == {"r1": "delivered", "r3": "delivered"}
    assert len(fake_stripe.identifiers()) == 8


def test_one_pass_deletes_chunk_after_chunk_while_they_are_full(
    monkeypatch: pytest.MonkeyPatch, make_meter: MeterFactory, tmp_path: Path
) -> None:
    """Chunks of 2 here (5,000 in use): one pass takes all 5 old rows, though the next
    pass is an hour away."""
    monkeypatch.setattr(worker_module, "PRUNE_FIRST", 0.0)
    monkeypatch.setattr(worker_module, "PRUNE_INTERVAL", 3600.0)
    monkeypatch.setattr(worker_module, "PRUNE_LIMIT", 2)
    path = tmp_path / "shared.sqlite3"
    box = Outbox(path)
    _delivered(box, [f"old{i}" for i in range(5)])
    _age(path, [f"old{i}" for i in range(5)], DAY + 600)
    box.close()
    meter = make_meter(retain_delivered=DAY, outbox_path=path)
    meter.record(_usage("new"))
    assert meter.flush(10)
    assert _wait(lambda: _names(path) == {"new": "delivered"})


def test_the_worker_keeps_the_local_ledger(fast_prune: None, local_meter: MeterFactory) -> None:
    meter = local_meter(retain_delivered=DAY)
    path = meter.stats()["outbox"]
    meter.record(_usage("l0"))
    assert meter.flush(5)
    _age(path, ["l0"], 30 * DAY)
    other = Outbox(path)  # a process with a key on the same file delivered this one
    _delivered(other, ["x0"])
    _age(path, ["x0"], 30 * DAY)
    assert _wait(lambda: "x0" not in _names(path))  # the worker has pruned since
    assert _names(path) == {"l0": "local"}
    assert meter.stats()["local"] == 2
    other.close()


def test_a_re_recorded_identifier_inside_the_window_is_not_sent_twice(
    fast_prune: None, make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(retain_delivered=DAY)
    path = meter.stats()["outbox"]
    ts = time.time() - 3 * DAY  # Stripe still takes it (35 days)
    meter.record(_usage("inside", ts))
    meter.record(_usage("outside", ts))
    assert meter.flush(10)
    _age(path, ["inside"], DAY - 600)
    _age(path, ["outside"], DAY + 600)
    assert _wait(lambda: set(_names(path)) == {"inside"})

    meter.record(_usage("inside", ts))
    meter.record(_usage("outside", ts))
    assert meter.flush(10)
    assert meter.stats()["duplicates"] == 2  # the outbox refused "inside" again
    counts = fake_stripe.identifier_counts()["identifiers"]
    got = {k: (v["accepted"], v["duplicates"]) for k, v in counts.items()}
    assert got == {
        "inside:input:token-billing-tokens": (1, 0),
        "inside:output:token-billing-tokens": (1, 0),
        # Pruned: sent again, and only Stripe's own 24 h dedup refuses it.
        "outside:input:token-billing-tokens": (1, 1),
        "outside:output:token-billing-tokens": (1, 1),
    }


def test_a_failing_prune_is_logged_and_delivery_goes_on(
    fast_prune: None,
    make_meter: MeterFactory,
    fake_stripe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meter = make_meter(retain_delivered=DAY)
    path = meter.stats()["outbox"]
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX events_delivered")  # the prune statement now fails
    conn.close()
    with caplog.at_level(logging.WARNING, logger="stripe_token_meter"):
        meter.record(_usage("a"))
        assert meter.flush(10)
        assert _wait(lambda: "deleting delivered events" in caplog.text)
        meter.record(_usage("b"))
        assert meter.flush(10)
    assert "no such index: events_delivered" in caplog.text
    assert "sk_test_fake" not in caplog.text
    assert _names(path) == {"a": "delivered", "b": "delivered"}
    assert len(fake_stripe.identifiers()) == 4


@pytest.mark.parametrize("bad", [10, 86_399.9, -math.inf, math.nan, True, "86400", None])
def test_retain_delivered_must_be_at_least_a_day(bad: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        TokenMeter(outbox_path=tmp_path / "o.sqlite3", retain_delivered=bad)
    message = str(err.value)
    assert message.startswith("retain_delivered: must be a number of seconds >= 86400 (one day)")
    assert "math.inf" in message and "35 * 86400" in message
    assert not (tmp_path / "o.sqlite3").exists()


@pytest.mark.parametrize("ok", [86_400, 35 * 86_400, math.inf])
def test_retain_delivered_accepts_a_day_or_more(ok: float, local_meter: MeterFactory) -> None:
    meter = local_meter(retain_delivered=ok)
    assert meter._retain_delivered == ok
