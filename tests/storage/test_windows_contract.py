"""Aggregation windows, the same on every backend (SQLite, PostgreSQL).

Only the `OutboxStore` interface: `ingest(..., aggregate=)` sums, `close_windows()` turns
windows into events. `clock` moves `time.time()` past window ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stripe_token_meter.aggregate import Aggregation
from stripe_token_meter.storage import LOCAL, PENDING, OutboxStore
from support.events import stored_event

from .conftest import Clock

Open = Callable[..., OutboxStore]
AGG = Aggregation(seconds=60, grace=2.0, value_key="value")


def _pending_values(store: OutboxStore) -> dict[str, int]:
    rows = store.claim("reader", 1000, 30)
    return {r.event.customer_id + "/" + str(r.event.timestamp): r.event.value for r in rows}


def test_calls_sum_once_each_and_close_into_one_event(store: OutboxStore, clock: Clock) -> None:
    start = int(clock.now) - int(clock.now) % 60
    a = stored_event("a", value=5, timestamp=start + 1)
    b = stored_event("b", value=7, timestamp=start + 2)
    added, rows = store.ingest([a, b, a], [], [("seg.jnl", 9)], aggregate=AGG, api="v2")
    assert (added, rows) == (2, [])
    assert store.ingest([b], [], [], aggregate=AGG)[0] == 0  # recorded again: not summed
    assert store.journal_offset("seg.jnl") == 9
    assert store.counts()["aggregating"] == 1
    assert store.close_windows() == 0  # not due yet
    clock.advance(start + 60 + 2.5 - clock.now)
    assert store.close_windows() == 1
    assert store.close_windows() == 0
    assert store.counts()["aggregating"] == 0
    rows = store.claim("w", 10, 30)
    assert len(rows) == 1
    event = rows[0].event
    assert (event.value, event.timestamp, event.customer_id) == (12, start, "cus_known")
    assert event.payload["value"] == "12" and event.identifier.startswith(f"stmw_{start}_0_")


def test_a_call_after_its_window_closed_goes_to_the_next_generation(
    store: OutboxStore, clock: Clock
) -> None:
    start = int(clock.now) - int(clock.now) % 60
    store.ingest([stored_event("a", value=3, timestamp=start)], [], [], aggregate=AGG)
    assert store.close_windows(everything=True) == 1
    store.ingest([stored_event("late", value=4, timestamp=start)], [], [], aggregate=AGG)
    assert store.close_windows(everything=True) == 1
    rows = sorted(store.claim("w", 10, 30), key=lambda r: r.event.identifier)
    assert sorted(r.event.value for r in rows) == [3, 4]
    assert len({r.event.identifier for r in rows}) == 2
    assert {r.event.timestamp for r in rows} == {start}
    why = store.withdraw("a:input:token-billing-tokens")
    assert why is not None and "aggregation window" in why and "stmw_" in why


def test_ledger_windows_close_into_local_rows(store: OutboxStore) -> None:
    store.ingest([stored_event("a", value=2)], [], [], aggregate=AGG, status=LOCAL)
    assert store.close_windows(everything=True) == 1
    counts = store.counts()
    assert counts[LOCAL] == 1 and counts[PENDING] == 0


def test_two_processes_sum_and_close_each_window_once(open_stores: Open, clock: Clock) -> None:
    """Four writers (two stores, as two processes would be) summing the same windows while
    closers run: every call is in exactly one event, every window sent once."""
    first, second = open_stores(), open_stores()
    start = int(clock.now) - int(clock.now) % 60
    errors: list[BaseException] = []

    def write(store: OutboxStore, prefix: str) -> None:
        try:
            for k in range(60):
                event = stored_event(f"{prefix}{k}", value=k + 1, timestamp=start + k % 60)
                store.ingest([event], [], [], aggregate=AGG)
                if k % 10 == 0:
                    store.close_windows(everything=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(s, p))
        for s, p in ((first, "x"), (second, "y"), (first, "x"), (second, "z"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    first.close_windows(everything=True)
    rows = first.claim("w", 1000, 30)
    # x's calls were written twice (two threads): counted once.
    assert sum(r.event.value for r in rows) == 3 * sum(range(1, 61))
    assert len({r.event.identifier for r in rows}) == len(rows)
    assert first.counts()["aggregating"] == 0
