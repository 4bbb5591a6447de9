"""Delivery paces itself inside Stripe's limits (issue 19): FakeStripe with limits on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import stripe
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.pacing import HOLD, TEST_RATE, Pacer, key_mode
from stripe_token_meter.retry import Verdict, classify
from stripe_token_meter.testing import FakeStripe

EVENT = "token-billing-tokens"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as f:
        f.create_meter(EVENT)
        f.auto_customers = True
        yield f


def _record(meter: TokenMeter, customer: str, rid: str) -> None:
    meter.record(Usage(customer_id=customer, model="openai/gpt-4o", input_tokens=3, request_id=rid))


def _once(fake: FakeStripe, n: int) -> None:
    counts = fake.identifier_counts()
    assert counts["accepted"] == n
    assert all(v["accepted"] == 1 for v in counts["identifiers"].values())


def test_v1_one_request_in_flight_per_customer_the_rest_interleaved(
    fake: FakeStripe, tmp_path: Path
) -> None:
    fake.latency = 0.02
    meter = TokenMeter(
        api_key="sk_live_pace", api_base=fake.url, outbox_path=tmp_path / "o.sqlite3", api="v1"
    )
    try:
        for i in range(40):
            _record(meter, "cus_hot", f"hot-{i}")
        for i in range(40):
            _record(meter, f"cus_c{i % 8}", f"spread-{i}")
        t0 = time.monotonic()
        assert meter.flush(30)
        elapsed = time.monotonic() - t0
    finally:
        meter.close(2)
    assert fake.limit_refusals == {}  # not one lock_timeout
    _once(fake, 80)
    assert len(fake.events(customer="cus_hot")) == 40
    # The hot customer needs 40 round trips; the 40 others ride alongside, not after it
    # (one at a time would take 80 round trips).
    assert elapsed < 80 * 0.02, elapsed


def test_v2_sandbox_paced_under_25_per_second(fake: FakeStripe, tmp_path: Path) -> None:
    meter = TokenMeter(
        api_key="rk_test_pace", api_base=fake.url, outbox_path=tmp_path / "o.sqlite3"
    )
    try:
        for i in range(3000):
            _record(meter, f"cus_{i % 7}", f"v2-{i}")
        t0 = time.monotonic()
        assert meter.flush(30)
        elapsed = time.monotonic() - t0
    finally:
        meter.close(2)
    assert fake.limit_refusals == {}
    _once(fake, 3000)
    requests = sum(fake.requests.values())
    assert requests >= 31  # a session and at least 30 stream requests
    assert elapsed >= (requests - 2) / TEST_RATE * 0.9  # paced, not bursted


def test_lock_timeouts_from_another_process_are_retried_for_that_customer(
    fake: FakeStripe, tmp_path: Path
) -> None:
    """Two meters (two processes' worth) on one key: the lock rule bites, nothing is lost."""
    fake.latency = 0.01
    path = tmp_path / "shared.sqlite3"
    meters = [
        TokenMeter(api_key="sk_live_pace", api_base=fake.url, outbox_path=p, api="v1")
        for p in (path, tmp_path / "other.sqlite3")
    ]
    try:
        for m, tag in zip(meters, "ab", strict=True):
            for i in range(30):
                _record(m, "cus_hot", f"{tag}-{i}")
        threads = [threading.Thread(target=m.flush, args=(30,)) for m in meters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(m.flush(30) for m in meters)
        stats = [m.stats() for m in meters]
    finally:
        for m in meters:
            m.close(2)
    _once(fake, 60)
    assert set(fake.limit_refusals) <= {"lock_timeout"}
    assert all(s["delivered"] == 30 and s["dead_lettered"] == 0 for s in stats)


def test_a_lock_timeout_is_about_one_customer_a_rate_limit_about_all(fake: FakeStripe) -> None:
    fake.latency = 0.2
    client = fake.client("sk_live_pace")
    event = {"event_name": EVENT, "payload": {"stripe_customer_id": "cus_x", "value": "1"}}
    t = threading.Thread(target=client.v1.billing.meter_events.create, args=(event,))
    t.start()
    time.sleep(0.05)
    with pytest.raises(stripe.RateLimitError) as lock:
        client.v1.billing.meter_events.create(event)
    t.join()
    outcome = classify(lock.value)
    assert (outcome.verdict, outcome.code, outcome.local) == (Verdict.RETRY, "lock_timeout", True)

    fake.latency = 0.0
    test_client = fake.client("sk_test_pace")
    with pytest.raises(stripe.RateLimitError) as rate:
        for _ in range(30):
            test_client.v1.billing.meters.list()
    outcome = classify(rate.value)
    assert (outcome.verdict, outcome.code, outcome.local) == (Verdict.RETRY, "rate_limit", False)
    assert "global-rate" in outcome.message


def test_pacer_spaces_requests_and_halves_on_a_global_429() -> None:
    assert (key_mode("sk_live_1"), key_mode("rk_live_1"), key_mode("rk_test_1")) == (
        "live",
        "live",
        "test",
    )
    pacer = Pacer(50.0)

    async def take(n: int) -> float:
        t0 = time.monotonic()
        for _ in range(n):
            await pacer.acquire()
        return time.monotonic() - t0

    assert 0.17 <= anyio.run(take, 10) < 0.4  # 10 starts, 1/50 s apart after the first
    pacer.rate_limited()
    assert pacer.rate == 25.0 and pacer.slowed == 1
    assert anyio.run(take, 1) >= HOLD * 0.9  # everyone waits after a global 429
    for _ in range(100):
        pacer.succeeded()
    assert pacer.rate == 50.0  # and the rate comes back
