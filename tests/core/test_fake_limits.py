"""FakeStripe enforces Stripe's request limits by key mode (issue 19), through the real SDK."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import stripe
from stripe_token_meter.testing import FakeStripe

EVENT = "token-billing-tokens"


def _event(customer: str, identifier: str) -> dict[str, Any]:
    return {
        "event_name": EVENT,
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": "1"},
    }


@pytest.fixture
def fake() -> Any:
    with FakeStripe() as f:
        f.create_meter(EVENT)
        f.auto_customers = True
        yield f


def test_test_keys_get_25_requests_per_second_over_all_endpoints(fake: FakeStripe) -> None:
    client = fake.client("sk_test_limits")
    ok = 0
    refused: list[stripe.RateLimitError] = []
    start = time.monotonic()
    for i in range(30):
        try:
            if i % 2:
                client.v1.billing.meters.list()
            else:
                client.v1.billing.meter_events.create(_event("cus_a", f"id-{i}"))
            ok += 1
        except stripe.RateLimitError as err:
            refused.append(err)
    assert time.monotonic() - start < 1.0, "too slow to test a one-second window"
    assert ok == 25 and len(refused) == 5
    err = refused[0]
    assert err.http_status == 429
    headers = {k.lower(): v for k, v in (err.headers or {}).items()}
    assert headers["stripe-rate-limited-reason"] == "global-rate"
    assert "retry-after" not in headers and "stripe-should-retry" not in headers
    assert isinstance(err.json_body, dict) and err.json_body["error"]["code"] == "rate_limit"
    assert fake.limit_refusals == {"global-rate": 5}
    assert len(fake.events()) == 13  # events 0, 2, ..., 24: the refused ones were not recorded
    time.sleep(1.05)
    client.v1.billing.meters.list()  # the window slides: admitted again


def test_v2_stream_session_tokens_count_in_their_keys_mode(fake: FakeStripe) -> None:
    client = fake.client("rk_test_limits")
    token = client.v2.billing.meter_event_session.create().authentication_token
    sent = refused = 0
    for i in range(30):
        try:
            client.v2.billing.meter_event_stream.create(
                {"events": [_event("cus_a", f"s-{i}")]},  # type: ignore[list-item]
                options={"api_key": token},
            )
            sent += 1
        except stripe.RateLimitError:
            refused += 1
    assert (sent, refused) == (24, 6)  # the session creation was the 25th


def test_live_keys_allow_one_v1_call_per_customer_and_meter_at_a_time(fake: FakeStripe) -> None:
    fake.latency = 0.2
    client = fake.client("sk_live_limits")
    results: dict[str, str] = {}

    def send(name: str, customer: str) -> None:
        try:
            client.v1.billing.meter_events.create(_event(customer, name))
            results[name] = "ok"
        except stripe.RateLimitError as err:
            body = err.json_body if isinstance(err.json_body, dict) else {}
            results[name] = body["error"]["code"]

    threads = [
        threading.Thread(target=send, args=("hot-1", "cus_hot")),
        threading.Thread(target=send, args=("other", "cus_other")),
    ]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    send("hot-2", "cus_hot")  # while hot-1 is in flight
    for t in threads:
        t.join()
    assert results == {"hot-1": "ok", "other": "ok", "hot-2": "lock_timeout"}
    assert fake.limit_refusals == {"lock_timeout": 1}
    send("hot-3", "cus_hot")  # once hot-1 was answered, the customer is free again
    assert results["hot-3"] == "ok"
    assert sorted(e.identifier for e in fake.events()) == ["hot-1", "hot-3", "other"]


def test_live_keys_are_not_held_to_the_test_rate(fake: FakeStripe) -> None:
    client = fake.client("sk_live_limits")
    for i in range(60):
        client.v1.billing.meter_events.create(_event(f"cus_{i}", f"live-{i}"))
    assert len(fake.events()) == 60 and fake.limit_refusals == {}


def test_limits_can_be_turned_off() -> None:
    with FakeStripe(limits=False) as fake:
        fake.create_meter(EVENT)
        fake.auto_customers = True
        client = fake.client("sk_test_limits")
        for i in range(40):
            client.v1.billing.meter_events.create(_event("cus_a", f"off-{i}"))
        assert len(fake.events()) == 40 and fake.limit_refusals == {}
