"""`record_later()`: adapters hand over what a callback got; reading it runs on the worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from stripe_token_meter import InvalidTokenCount, TokenMeter
from support.disk import disk_full

MeterFactory = Callable[..., TokenMeter]


def _rows(meter: TokenMeter) -> list[tuple[Any, ...]]:
    return meter._outbox._query(
        "SELECT customer_id, model, token_type, value, identifier FROM events ORDER BY id"
    )


THREADS: list[str] = []
"""Where `read_usage` ran: a module-level reader, as the journal needs (it names it)."""


@pytest.fixture(autouse=True)
def _fresh_threads() -> None:
    THREADS.clear()


def read_usage(usage: dict[str, int] | None, request_id: str) -> dict[str, Any] | None:
    THREADS.append(threading.current_thread().name)
    if usage is None:
        return None
    return {
        "counts": "openai",
        "model": "gpt-4o",
        "request_id": request_id,
        "fallback_customer_id": "cus_fallback",
        "prompt_tokens": usage["in"],
        "completion_tokens": usage["out"],
    }


def _threads() -> list[str]:
    return list(THREADS)


def test_read_runs_on_the_worker_with_the_callers_scope(local_meter: MeterFactory) -> None:
    meter = local_meter()
    read = read_usage
    with meter.customer("cus_scoped"):
        meter.record_later("test", read, {"in": 12, "out": 3}, "r1")
    meter.record_later("test", read, {"in": 5, "out": 1}, "r2")  # no scope: the fallback
    meter.record_later("test", read, None, "r3")  # nothing to bill
    assert meter.flush(5)
    threads = _threads()
    assert threads and threading.current_thread().name not in threads
    assert [r[:4] for r in _rows(meter)] == [
        ("cus_scoped", "gpt-4o", "input", 12),
        ("cus_scoped", "gpt-4o", "output", 3),
        ("cus_fallback", "gpt-4o", "input", 5),
        ("cus_fallback", "gpt-4o", "output", 1),
    ]
    stats = meter.stats()
    assert (stats["recorded"], stats["events"], stats["adapter_errors"]) == (2, 4, 0)


def test_a_reader_the_journal_cannot_name_runs_on_the_caller(
    local_meter: MeterFactory,
) -> None:
    """A closure or bound method cannot be looked up by another process after a crash:
    it is read at once, so the call is journaled as a plain record and still survives."""
    meter = local_meter()
    seen: list[str] = []

    def closure(usage: dict[str, int], request_id: str) -> dict[str, Any] | None:
        seen.append(threading.current_thread().name)
        return read_usage(usage, request_id)

    meter.record_later("test", closure, {"in": 3, "out": 1}, "c1")
    assert seen == [threading.current_thread().name]
    assert meter.flush(5)
    assert [r[:4] for r in _rows(meter)] == [
        ("cus_fallback", "gpt-4o", "input", 3),
        ("cus_fallback", "gpt-4o", "output", 1),
    ]


def test_same_identifiers_as_record(local_meter: MeterFactory) -> None:
    later, now = local_meter(), local_meter()
    later.record_later("test", read_usage, {"in": 7, "out": 2}, "same-run")
    now.record(
        counts="openai",
        model="gpt-4o",
        request_id="same-run",
        prompt_tokens=7,
        completion_tokens=2,
        customer_id="cus_fallback",
    )
    assert later.flush(5) and now.flush(5)
    assert _rows(later) == _rows(now)
    assert len(_rows(later)) == 2


def test_a_failing_read_is_an_adapter_error_not_a_crash(local_meter: MeterFactory) -> None:
    meter = local_meter(default_customer_id="cus_d")

    def broken(_: object) -> dict[str, Any]:
        raise KeyError("usage")

    meter.record_later("my-adapter", broken, object())
    meter.record(model="m", input_tokens=1, output_tokens=1)  # the meter carries on
    assert meter.flush(5)
    stats = meter.stats()
    assert (stats["adapter_errors"], stats["recorded"], stats["events"]) == (1, 1, 2)
    assert "my-adapter: KeyError" in stats["last_error"]


def test_bad_fields_from_read_are_dead_lettered(local_meter: MeterFactory) -> None:
    meter = local_meter()
    meter.record_later("test", read_usage, {"in": -1, "out": 2}, "r1")
    assert meter.flush(5)
    assert _rows(meter) == []
    (code, field, record) = meter._outbox._query("SELECT code, field, record FROM rejected")[0]
    assert (code, field) == ("invalid_token_count", "prompt_tokens")
    assert '"request_id": "r1"' in record and '"fallback_customer": "cus_fallback"' in record
    assert meter.stats()["invalid"] == 1


def test_strict_meter_reads_on_the_caller_and_raises(local_meter: MeterFactory) -> None:
    meter = local_meter(strict=True)
    with pytest.raises(InvalidTokenCount):
        meter.record_later("test", read_usage, {"in": -1, "out": 2}, "r1")
    meter.record_later("test", read_usage, {"in": 4, "out": 2}, "r2")
    assert _threads() == [threading.current_thread().name] * 2
    assert meter.flush(5)
    assert [r[:4] for r in _rows(meter)] == [
        ("cus_fallback", "gpt-4o", "input", 4),
        ("cus_fallback", "gpt-4o", "output", 2),
    ]


def test_durable_sync_reads_and_stores_before_returning(local_meter: MeterFactory) -> None:
    meter = local_meter(durable="sync")
    meter.record_later("test", read_usage, {"in": 9, "out": 1}, "r1")
    meter.record_later("test", read_usage, None, "r2")
    # stored by the time it returns, without a flush
    assert [r[:4] for r in _rows(meter)] == [
        ("cus_fallback", "gpt-4o", "input", 9),
        ("cus_fallback", "gpt-4o", "output", 1),
    ]
    assert _threads() == [threading.current_thread().name] * 2
    assert meter.stats()["recorded"] == 1


def test_items_survive_a_failed_store(local_meter: MeterFactory) -> None:
    """Disk full while the worker stores them: read again once there is room, stored once."""
    meter = local_meter()
    meter.record_later("test", read_usage, {"in": 1, "out": 1}, "first")
    assert meter.flush(10)

    def fill() -> None:
        for i in range(300):
            meter.record_later("test", read_usage, {"in": 2, "out": 1}, f"r{i}")

    with disk_full(meter, fill) as stats:
        # The worker wakes on the first item and may store it (or a few) while the file
        # still has room in its last page; the rest wait.
        assert stats["queued"] + stats["local"] // 2 == 301 and stats["queued"] >= 250, stats
        assert not meter.flush(0.5)  # not claimed done while records wait in memory
    assert meter.flush(10)
    stats = meter.stats()
    assert (stats["queued"], stats["local"], stats["recorded"]) == (0, 602, 301)
    rows = _rows(meter)
    assert len({r[4] for r in rows}) == 602
    assert sum(r[3] for r in rows) == 2 + 300 * 3
