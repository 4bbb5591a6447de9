"""Sends with an unknown outcome, and Stripe's 24 h duplicate check.

Stripe refuses a repeated meter event identifier for 24 hours, so resending an event it
may have recorded (no answer, a 5xx) is harmless only within that day. A row that is still
unconfirmed after it is dead-lettered with its reason instead of risking a second bill.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.outbox import (
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    Outbox,
)
from support.events import stored_event
from support.old_outbox import write_old_outbox

MeterFactory = Callable[..., TokenMeter]
CUS = "cus_unconfirmed"
EVENTS_PATH = {"v2": "/v2/billing/meter_event_stream", "v1": "/v1/billing/meter_events"}


def _usage(request_id: str) -> Usage:
    return Usage(
        model="gpt-4o", input_tokens=100, output_tokens=20, request_id=request_id, customer_id=CUS
    )


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT token_type, status, attempts, unconfirmed, error_code FROM events ORDER BY id"
        ).fetchall()


def _wait(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _attempted(path: Path) -> Callable[[], bool]:
    return lambda: all(r[2] >= 1 for r in _rows(path)) and len(_rows(path)) == 2


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_a_5xx_or_a_lost_answer_marks_rows_unconfirmed_and_they_are_delivered_once(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path, api: str
) -> None:
    path = tmp_path / "o.sqlite3"
    fake_stripe.fail_next(1, status=500, path_prefix=EVENTS_PATH[api])
    meter = make_meter(api=api, outbox_path=path, retry_base_delay=0.05)
    meter.record(_usage("req_500"))
    assert meter.flush(10)
    rows = _rows(path)
    assert [r[1] for r in rows] == ["delivered", "delivered"]
    if api == "v2":  # one request for both events: both were unconfirmed once
        assert all(r[3] is not None for r in rows)
    else:  # one request per event: only the first one failed
        assert sum(r[3] is not None for r in rows) == 1
    # Stripe processed the lost answer's request: the resend is caught as a duplicate.
    fake_stripe.drop_next(1, after_processing=True)
    meter.record(_usage("req_lost"))
    assert meter.flush(10)
    assert len(fake_stripe.identifiers()) == 4
    assert sorted(fake_stripe.totals().values()) == [40, 200]
    assert sum(r[3] is not None for r in _rows(path)) == (4 if api == "v2" else 2)


def test_a_429_or_a_refused_connection_never_reached_stripe(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "o.sqlite3"
    fake_stripe.fail_next(1, status=429, retry_after=None)
    meter = make_meter(outbox_path=path, retry_base_delay=0.05)
    meter.record(_usage("req_429"))
    assert meter.flush(10)
    assert [(r[1], r[3]) for r in _rows(path)] == [("delivered", None), ("delivered", None)]

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    refused = tmp_path / "refused.sqlite3"
    down = make_meter(outbox_path=refused, api_base=closed, retry_base_delay=0.05)
    down.record(_usage("req_refused"))
    _wait(_attempted(refused))
    assert [(r[1], r[3], r[4]) for r in _rows(refused)] == [
        ("pending", None, "connection_error"),
        ("pending", None, "connection_error"),
    ]


def _leave_unconfirmed(
    make_meter: MeterFactory, fake_stripe: Any, path: Path, request_id: str
) -> None:
    """Record while every send gets a 500, then stop: the rows stay pending, unconfirmed."""
    fake_stripe.fail_every(1, status=500, retry_after=None, path_prefix=EVENTS_PATH["v2"])
    meter = make_meter(outbox_path=path, retry_base_delay=0.05, exit_timeout=0.5)
    meter.record(_usage(request_id))
    _wait(_attempted(path))
    meter.close(timeout=0.5)
    fake_stripe.clear_faults()
    rows = _rows(path)
    assert [r[1] for r in rows] == ["pending", "pending"]
    assert all(r[3] is not None for r in rows)


def _age_unconfirmed(path: Path, seconds: float) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET unconfirmed = unconfirmed - ?", (seconds,))


def test_unconfirmed_for_nearly_a_day_is_dead_lettered_not_resent_until_replayed(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "o.sqlite3"
    _leave_unconfirmed(make_meter, fake_stripe, path, "req_old")
    _age_unconfirmed(path, UNCONFIRMED_LIMIT + 60)

    meter = make_meter(outbox_path=path)
    assert meter.flush(10)
    assert fake_stripe.identifiers() == []  # not sent again
    stats = meter.stats()
    assert stats["dead_lettered"] == 2 and stats["pending"] == 0
    # The worker notes it right after the claim that dead-lettered them, which flush() may beat.
    deadline = time.monotonic() + 5
    while meter.stats()["last_error"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    last_error = meter.stats()["last_error"] or ""
    # One claim may take both rows or each its own (a busy machine): "2 events" or "1".
    assert re.match(rf"{UNCONFIRMED_CODE}: [12] events were first sent", last_error), last_error
    with sqlite3.connect(path) as db:
        messages = [r[0] for r in db.execute("SELECT error_message FROM events")]
    assert all(
        "without a confirmed answer (last error: " in m
        and f"stripe-token-meter replay --code {UNCONFIRMED_CODE}" in m
        for m in messages
    ), messages

    # The operator checked Stripe and replays: sent once, and not dead-lettered again.
    outbox = Outbox(path)
    assert outbox.requeue_dead(UNCONFIRMED_CODE) == 2
    outbox.close()
    assert meter.flush(10)
    assert [r[1] for r in _rows(path)] == ["delivered", "delivered"]
    assert sorted(fake_stripe.totals().values()) == [20, 100]
    assert len(fake_stripe.identifiers()) == 2


def test_unconfirmed_for_less_than_a_day_is_resent(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "o.sqlite3"
    _leave_unconfirmed(make_meter, fake_stripe, path, "req_recent")
    _age_unconfirmed(path, UNCONFIRMED_LIMIT - 600)
    meter = make_meter(outbox_path=path)
    assert meter.flush(10)
    assert [r[1] for r in _rows(path)] == ["delivered", "delivered"]
    assert sorted(fake_stripe.totals().values()) == [20, 100]


def test_an_outbox_from_before_the_columns_gets_them_and_the_index(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_old_outbox(path, "pending")
    outbox = Outbox(path)
    assert outbox._query("SELECT api FROM events") == [(None,)]  # sent how: not recorded then
    columns = {r[1]: r[2] for r in outbox._query("PRAGMA table_info(events)")}
    assert columns["api"] == "TEXT"
    assert (outbox.counts()["rejected"], outbox.counts()["rejected_resolved"]) == (1, 0)
    assert outbox.resolve_rejected("missing_customer") == 1
    assert (outbox.counts()["rejected"], outbox.counts()["rejected_resolved"]) == (0, 1)
    [row] = outbox.claim("me", 10, 30.0)  # the old row was never sent: claimed as usual
    outbox.mark_retry([row.id], 0.0, "api_error", "boom", maybe_sent=True)
    _age_unconfirmed(path, UNCONFIRMED_LIMIT + 1)
    assert outbox.claim("me", 10, 30.0) == []
    assert outbox.take_expired() == 1 and outbox.take_expired() == 0
    assert outbox._query("SELECT status, error_code FROM events") == [("dead", UNCONFIRMED_CODE)]
    outbox.close()
    Outbox(path).close()  # opening again (the column exists now) is fine


def test_a_lease_that_ran_out_long_ago_is_dead_lettered_not_resent(tmp_path: Path) -> None:
    """A process was killed mid-request and nothing opened the outbox for two days: the
    row is stamped as of its lease's end, so the claim sees it is past the window."""
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    _leased(outbox, "otherhost:1:abc", 1, lease=30.0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET lease_until = ?", (time.time() - 2 * 86400,))
    assert outbox.claim("me", 10, 30.0) == []
    assert outbox.take_expired() == 1
    [(status, code, unconfirmed)] = outbox._query(
        "SELECT status, error_code, unconfirmed FROM events"
    )
    assert (status, code) == ("dead", UNCONFIRMED_CODE)
    assert unconfirmed < time.time() - 86400
    # An unrelated replay leaves it alone; only naming its code sends it.
    assert outbox.requeue_dead() == 0
    assert outbox.requeue_dead(UNCONFIRMED_CODE) == 1
    outbox.close()


def test_answers_for_rows_dead_lettered_meanwhile_keep_their_reason(tmp_path: Path) -> None:
    """A slow send's failure must not rewrite a dead letter into a replayable one."""
    outbox = Outbox(tmp_path / "o.sqlite3")
    [rid] = _leased(outbox, "me", 1, lease=30.0)
    outbox.mark_dead([(rid, UNCONFIRMED_CODE, "past the window")])
    outbox.mark_retry([rid], 0.0, "connection_error", "timeout", maybe_sent=True)
    outbox.release([rid])
    assert outbox._query("SELECT status, error_code, error_message FROM events") == [
        ("dead", UNCONFIRMED_CODE, "past the window")
    ]
    outbox.close()


def test_a_failed_v2_session_is_not_a_send(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    """Only the session token request failed: no event left, nothing to suspect."""
    path = tmp_path / "o.sqlite3"
    fake_stripe.fail_next(1, status=500, path_prefix="/v2/billing/meter_event_session")
    meter = make_meter(outbox_path=path, retry_base_delay=0.05)
    meter.record(_usage("req_session"))
    assert meter.flush(10)
    rows = _rows(path)
    assert [(r[1], r[2], r[3]) for r in rows] == [("delivered", 1, None)] * 2


def test_a_request_cancelled_at_close_leaves_its_rows_unconfirmed(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    """close()'s deadline cancels a request that is out: Stripe may have recorded it."""
    path = tmp_path / "o.sqlite3"
    fake_stripe.stall_next(3.0, path_prefix="/v1/billing/meter_events")
    meter = make_meter(api="v1", outbox_path=path, concurrency=1)
    meter.record(_usage("req_stalled"))
    _wait(lambda: len(_rows(path)) == 2)
    time.sleep(0.3)  # the first event's request is out, stalled by FakeStripe
    meter.close(timeout=0.3)
    rows = _rows(path)
    assert [r[1] for r in rows] == ["pending", "pending"]
    # One request was out (the stalled one); the other event never left the queue.
    assert sorted(r[3] is not None for r in rows) == [False, True]
    assert [r[2] for r in rows] == [0, 0]  # released, not counted as attempts


def _leased(outbox: Outbox, owner: str, n: int, lease: float) -> list[int]:
    events = [stored_event(f"{owner}-{i}", timestamp=1) for i in range(n)]
    return [r.id for r in outbox.add_leased(events, owner, lease)]


def test_rows_whose_lease_ran_out_or_whose_process_died_are_unconfirmed(tmp_path: Path) -> None:
    """Their holder never handed them back: it may have sent them before it stopped."""
    outbox = Outbox(tmp_path / "o.sqlite3")
    unconfirmed = "SELECT COUNT(*) FROM events WHERE unconfirmed IS NOT NULL"
    expired = _leased(outbox, "otherhost:1:abc", 3, lease=0.0)
    released = _leased(outbox, "otherhost:1:def", 2, lease=30.0)
    outbox.release(released)  # handed back unsent: nothing to suspect
    claimed = outbox.claim("me", 10, 30.0)
    assert sorted(r.id for r in claimed) == sorted(expired + released)
    assert outbox._query(unconfirmed) == [(3,)]
    assert outbox._query("SELECT id FROM events WHERE unconfirmed IS NOT NULL ORDER BY id") == [
        (i,) for i in sorted(expired)
    ]

    proc = subprocess.run(  # a pid that no longer exists on this host
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = f"{socket.gethostname()}:{proc.stdout.strip()}:0000"
    orphans = _leased(outbox, dead, 2, lease=30.0)
    assert outbox.reclaim_from_dead_processes(socket.gethostname()) == 1
    assert outbox._query(
        "SELECT COUNT(*) FROM events WHERE unconfirmed IS NOT NULL AND id IN (?, ?)", orphans
    ) == [(2,)]
    assert outbox._query(unconfirmed) == [(5,)]
    outbox.close()
