"""Delivery through the real stripe SDK over real HTTP to FakeStripe: exact, once, despite faults."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from support.events import event_tuples

MeterFactory = Callable[..., TokenMeter]


def _usage(i: int, customer: str = "cus_a") -> Usage:
    return Usage.from_openai(
        model="gpt-4o-2024-08-06",
        provider="openai",
        customer_id=customer,
        request_id=f"req-{i}",
        prompt_tokens=100 + i,
        completion_tokens=50,
        cached_tokens=30,
        reasoning_tokens=10,
    )


def _assert_once(fake: Any, expected: int) -> None:
    ids = fake.identifiers()
    dupes = [k for k, n in Counter(ids).items() if n > 1]
    assert dupes == []
    assert len(ids) == expected


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_exact_events_basic(make_meter: MeterFactory, fake_stripe: Any, api: str) -> None:
    meter = make_meter(api=api)
    meter.record(_usage(1))
    meter.record(
        counts="anthropic",
        model="claude-3-5-sonnet-20241022",
        provider="anthropic",
        customer_id="cus_b",
        request_id="claude-1",
        input_tokens=50,
        output_tokens=30,
        cache_read_input_tokens=200,
        cache_creation_input_tokens=100,
    )
    assert meter.flush(10)
    assert event_tuples(fake_stripe) == [
        ("cus_a", "openai/gpt-4o", "input", 101),
        ("cus_a", "openai/gpt-4o", "output", 50),
        ("cus_b", "anthropic/claude-3.5-sonnet", "input", 350),
        ("cus_b", "anthropic/claude-3.5-sonnet", "output", 30),
    ]
    assert {e.api for e in fake_stripe.events()} == {api}
    assert sorted(fake_stripe.identifiers()) == [
        "claude-1:input:token-billing-tokens",
        "claude-1:output:token-billing-tokens",
        "req-1:input:token-billing-tokens",
        "req-1:output:token-billing-tokens",
    ]
    s = meter.stats()
    assert (s["delivered"], s["pending"], s["dead_lettered"]) == (4, 0, 0)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_exact_events_detailed(make_meter: MeterFactory, fake_stripe: Any, api: str) -> None:
    meter = make_meter(api=api, token_types="detailed")
    meter.record(_usage(0))
    meter.record(
        counts="anthropic",
        model="claude-opus-4-1",
        provider="anthropic",
        customer_id="cus_b",
        request_id="c",
        input_tokens=50,
        output_tokens=30,
        cache_read_input_tokens=200,
        cache_creation_input_tokens=100,
    )
    assert meter.flush(10)
    assert event_tuples(fake_stripe) == [
        ("cus_a", "openai/gpt-4o", "cached_input", 30),
        ("cus_a", "openai/gpt-4o", "input", 70),
        ("cus_a", "openai/gpt-4o", "output", 40),
        ("cus_a", "openai/gpt-4o", "reasoning", 10),
        ("cus_b", "anthropic/claude-opus-4.1", "cache_write", 100),
        ("cus_b", "anthropic/claude-opus-4.1", "cached_input", 200),
        ("cus_b", "anthropic/claude-opus-4.1", "input", 50),
        ("cus_b", "anthropic/claude-opus-4.1", "output", 30),
    ]


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_replay_from_another_outbox_never_bills_twice(
    make_meter: MeterFactory, fake_stripe: Any, api: str
) -> None:
    first, second = make_meter(api=api), make_meter(api=api)
    for i in range(5):
        first.record(_usage(i))
    assert first.flush(10)
    for i in range(5):  # the same calls again, as after a crash that lost the outbox
        second.record(_usage(i))
    assert second.flush(10)
    _assert_once(fake_stripe, 10)
    assert second.stats()["delivered"] == 10 and second.stats()["dead_lettered"] == 0


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_429_storm_with_retry_after(make_meter: MeterFactory, fake_stripe: Any, api: str) -> None:
    fake_stripe.fail_next(6, status=429, retry_after=0.2)
    meter = make_meter(api=api, retry_base_delay=0.02)
    n = 150 if api == "v2" else 40  # v1 with a sandbox key: 25 requests/s at most
    for i in range(n):
        meter.record(_usage(i, f"cus_{i % 8}"))
    start = time.monotonic()
    assert meter.flush(30)
    assert time.monotonic() - start >= 0.2  # Retry-After honoured
    _assert_once(fake_stripe, 2 * n)
    stats = meter.stats()
    assert stats["last_error"] is None  # delivery recovered: not a stale error
    assert stats["last_delivery_error"]["error"].startswith("rate_limit")


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_500_bursts_and_dropped_connections(
    make_meter: MeterFactory, fake_stripe: Any, api: str
) -> None:
    fake_stripe.fail_next(4, status=500)
    fake_stripe.drop_next(3)
    meter = make_meter(api=api, retry_base_delay=0.02)
    n = 120 if api == "v2" else 40  # v1 with a sandbox key: 25 requests/s at most
    for i in range(n):
        meter.record(_usage(i, f"cus_{i % 8}"))
    assert meter.flush(30)
    _assert_once(fake_stripe, 2 * n)


def test_v2_session_expiry_mid_stream(make_meter: MeterFactory, fake_stripe: Any) -> None:
    meter = make_meter(api="v2")
    for i in range(50):
        meter.record(_usage(i))
    assert meter.flush(10)
    fake_stripe.expire_sessions()
    for i in range(50, 100):
        meter.record(_usage(i))
    assert meter.flush(10)
    _assert_once(fake_stripe, 200)
    assert fake_stripe.requests[("POST", "/v2/billing/meter_event_session")] == 2


def test_v1_unknown_customer_is_dead_lettered_with_stripe_code(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    fake_stripe.auto_customers = False
    fake_stripe.create_customer("cus_known")
    meter = make_meter(api="v1")
    meter.record(_usage(1, "cus_known"))
    meter.record(_usage(2, "cus_ghost"))
    assert meter.flush(10)
    assert {e.customer for e in fake_stripe.events()} == {"cus_known"}
    dead = meter._outbox._query(
        "SELECT identifier, error_code FROM events WHERE status='dead' ORDER BY identifier"
    )
    assert dead == [
        ("req-2:input:token-billing-tokens", "meter_event_customer_not_found"),
        ("req-2:output:token-billing-tokens", "meter_event_customer_not_found"),
    ]
    s = meter.stats()
    assert (s["delivered"], s["dead_events"], s["dead_lettered"]) == (2, 2, 2)
    # The cause is fixed: replay with the same identifiers.
    fake_stripe.create_customer("cus_ghost")
    assert meter._outbox.requeue_dead("meter_event_customer_not_found") == 2
    assert meter.flush(10)
    _assert_once(fake_stripe, 4)


def test_wrong_key_pauses_and_keeps_events(make_meter: MeterFactory, fake_stripe: Any) -> None:
    fake_stripe.valid_keys = {"rk_test_right"}
    meter = make_meter(api="v1")
    meter.record(_usage(1))
    assert not meter.flush(1.0)
    s = meter.stats()
    assert s["paused"] and s["pending"] == 2 and s["delivered"] == 0 and s["dead_lettered"] == 0
    assert fake_stripe.events() == []


def test_api_key_and_api_base_build_their_own_client(fake_stripe: Any, tmp_path: Any) -> None:
    meter = TokenMeter(
        api_key="rk_test_abc", api_base=fake_stripe.url, outbox_path=tmp_path / "o.sqlite3"
    )
    meter.record(_usage(7))
    assert meter.flush(10)
    assert sorted(fake_stripe.identifiers()) == [
        "req-7:input:token-billing-tokens",
        "req-7:output:token-billing-tokens",
    ]
    assert "rk_test_abc" not in repr(meter.stats())
    meter.close()


def test_forked_child_gets_a_fresh_worker(fake_stripe: Any, tmp_path: Any) -> None:
    import os

    meter = TokenMeter(
        api_key="sk_test_abc", api_base=fake_stripe.url, outbox_path=tmp_path / "o.sqlite3"
    )
    meter.record(_usage(1))
    assert meter.flush(10)
    pid = os.fork()
    if pid == 0:  # child: record and deliver through its own worker, then exit hard
        try:
            meter.record(_usage(2))
            ok = meter.flush(10)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    meter.record(_usage(3))
    assert meter.flush(10)
    _assert_once(fake_stripe, 6)
    meter.close()


@pytest.mark.parametrize("key", ["pk_test_123", "whatever"])
def test_publishable_or_unknown_keys_are_refused(key: str) -> None:
    from stripe_token_meter import ConfigurationError

    with pytest.raises(ConfigurationError, match="rk_") as e:
        TokenMeter(api_key=key, outbox_path=":memory:")
    assert key not in str(e.value)


def test_durable_sync_stores_before_record_returns(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(durable="sync")
    meter.record(_usage(1))
    stored = meter._outbox._query("SELECT identifier FROM events ORDER BY identifier")
    assert stored == [("req-1:input:token-billing-tokens",), ("req-1:output:token-billing-tokens",)]
    assert meter.flush(10)
    _assert_once(fake_stripe, 2)


def test_queue_bound_spills_to_outbox_never_drops(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(max_queue=0)
    for i in range(20):
        meter.record(_usage(i))
    assert meter.flush(10)
    _assert_once(fake_stripe, 40)
