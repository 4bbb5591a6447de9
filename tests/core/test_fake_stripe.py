"""FakeStripe driven by the real ``stripe`` SDK over real HTTP (no mocks).

Why: every other test of the metering core trusts FakeStripe to behave like Stripe, so the
fake itself is pinned to the SDK's request encoding and error mapping here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import stripe
from stripe_token_meter.testing import AcceptedEvent, FakeStripe

EVENT = "token-billing-tokens"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as server:
        server.create_customer("cus_1")
        server.create_meter(EVENT)
        yield server


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return fake.client()


def payload(customer: str = "cus_1", value: str = "10", **extra: str) -> dict[str, str]:
    return {"stripe_customer_id": customer, "value": value, **extra}


def v2_events(n: int, prefix: str = "e", **extra: str) -> list[Any]:
    return [
        {
            "event_name": EVENT,
            "identifier": f"{prefix}{i}",
            "payload": payload(value="1", model="gpt", token_type="input", **extra),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        for i in range(n)
    ]


def stream(client: stripe.StripeClient, token: str, events: list[dict[str, Any]]) -> None:
    params: Any = {"events": events}
    client.v2.billing.meter_event_stream.create(params, options={"api_key": token})


# ---------------------------------------------------------------------------- v1 events


def test_v1_event_accepted_and_listed(fake: FakeStripe, client: stripe.StripeClient) -> None:
    ts = int(time.time()) - 60
    event = client.v1.billing.meter_events.create(
        {
            "event_name": EVENT,
            "identifier": "id-1",
            "timestamp": ts,
            "payload": payload(value="42", model="gpt-4o", token_type="output"),
        }
    )
    assert event.object == "billing.meter_event"
    assert (event.identifier, event.timestamp, event.payload["value"]) == ("id-1", ts, "42")
    generated = client.v1.billing.meter_events.create(
        {"event_name": EVENT, "payload": payload(value="3")}
    )
    assert generated.identifier

    assert fake.events() == [
        AcceptedEvent(
            EVENT,
            "id-1",
            {
                "stripe_customer_id": "cus_1",
                "value": "42",
                "model": "gpt-4o",
                "token_type": "output",
            },
            ts,
            "v1",
            "cus_1",
            42,
        ),
        AcceptedEvent(
            EVENT,
            generated.identifier,
            payload(value="3"),
            fake.events()[1].timestamp,
            "v1",
            "cus_1",
            3,
        ),
    ]
    assert fake.identifiers() == ["id-1", generated.identifier]
    assert fake.totals() == {("cus_1", "gpt-4o", "output"): 42, ("cus_1", "", ""): 3}
    assert fake.requests[("POST", "/v1/billing/meter_events")] == 2
    assert fake.events(customer="cus_other") == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"payload": {"value": "1"}}, "meter_event_no_customer_defined"),
        ({"payload": payload(customer="cus_nope")}, "meter_event_customer_not_found"),
        ({"payload": payload(value="1.5")}, "meter_event_invalid_value"),
        ({"payload": payload(value="-1")}, "meter_event_invalid_value"),
        ({"payload": payload(value="abc")}, "meter_event_invalid_value"),
        ({"payload": payload(value="")}, "meter_event_invalid_value"),
        ({"payload": {"stripe_customer_id": "cus_1"}}, "meter_event_invalid_value"),
        ({"timestamp": int(time.time()) - 36 * 86_400}, "timestamp_too_far_in_past"),
        ({"timestamp": int(time.time()) + 600}, "timestamp_too_far_in_future"),
        ({"bogus": "1"}, "parameter_unknown"),
    ],
)
def test_v1_rules(
    fake: FakeStripe, client: stripe.StripeClient, params: dict[str, Any], code: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(
            {"event_name": EVENT, "payload": payload(), **params}  # type: ignore[typeddict-item]
        )
    assert info.value.code == code
    assert info.value.http_status == 400
    assert fake.events() == []


def test_v1_inactive_meter_is_archived_meter(fake: FakeStripe, client: stripe.StripeClient) -> None:
    meter_id = fake.meters()[0]["id"]
    client.v1.billing.meters.deactivate(meter_id)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
    assert info.value.code == "archived_meter"


def test_v1_event_without_meter_is_accepted_but_reported(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    client.v1.billing.meter_events.create(
        {"event_name": "nobody-meters-this", "identifier": "x1", "payload": payload()}
    )
    assert fake.events() == []
    assert fake.error_reports == [
        {
            "identifier": "x1",
            "code": "no_meter",
            "message": "No active meter was found for event_name 'nobody-meters-this'.",
            "event_name": "nobody-meters-this",
        }
    ]


def test_duplicate_identifier(fake: FakeStripe, client: stripe.StripeClient) -> None:
    params: Any = {"event_name": EVENT, "identifier": "dup-1", "payload": payload()}
    client.v1.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(params)
    err = info.value
    assert err.user_message == "An event already exists with identifier dup-1."
    assert err.code is None
    assert err.headers is not None and err.headers["Stripe-Should-Retry"] == "false"
    assert len(fake.events()) == 1


def test_auto_customers_and_custom_meter_keys(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.create_meter("custom", customer_key="user", value_key="tokens")
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(
            {"event_name": "custom", "payload": {"user": "cus_new", "tokens": "5"}}
        )
    assert info.value.code == "meter_event_customer_not_found"
    fake.auto_customers = True
    for value in ("5", "7"):
        client.v1.billing.meter_events.create(
            {"event_name": "custom", "payload": {"user": "cus_new", "tokens": value, "model": "m"}}
        )
    with pytest.raises(stripe.InvalidRequestError):  # auto_customers only covers cus_ ids
        client.v1.billing.meter_events.create(
            {"event_name": "custom", "payload": {"user": "acct_1", "tokens": "1"}}
        )
    assert fake.totals() == {("cus_new", "m", ""): 12}
    assert client.v1.customers.retrieve("cus_new").id == "cus_new"


def test_idempotency_key_replays_success(fake: FakeStripe, client: stripe.StripeClient) -> None:
    params: Any = {"event_name": EVENT, "identifier": "idem-1", "payload": payload()}
    first = client.v1.billing.meter_events.create(params, options={"idempotency_key": "k1"})
    again = client.v1.billing.meter_events.create(params, options={"idempotency_key": "k1"})
    assert again.identifier == first.identifier == "idem-1"
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(fake.events()) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.billing.meter_events.create(
            {"event_name": EVENT, "identifier": "other", "payload": payload()},
            options={"idempotency_key": "k1"},
        )


def test_adjustment_cancel(fake: FakeStripe, client: stripe.StripeClient) -> None:
    for ident, value in (("a", "5"), ("b", "7")):
        client.v1.billing.meter_events.create(
            {"event_name": EVENT, "identifier": ident, "payload": payload(value=value)}
        )
    adj = client.v1.billing.meter_event_adjustments.create(
        {"event_name": EVENT, "type": "cancel", "cancel": {"identifier": "a"}}
    )
    assert (adj.object, adj.status, adj.type) == (
        "billing.meter_event_adjustment",
        "pending",
        "cancel",
    )
    assert adj.cancel is not None and adj.cancel.identifier == "a"
    assert fake.identifiers() == ["b"]
    assert fake.identifiers(include_cancelled=True) == ["a", "b"]
    assert fake.totals() == {("cus_1", "", ""): 7}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": EVENT, "type": "cancel", "cancel": {"identifier": "zzz"}}
        )
    assert info.value.code == "resource_missing"


# ---------------------------------------------------------------------------- v2


def test_v2_session_and_stream_of_100(fake: FakeStripe, client: stripe.StripeClient) -> None:
    session = client.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session"
    assert session.authentication_token.startswith("mest_")
    assert session.created.endswith("Z") and session.expires_at > session.created

    stream(client, session.authentication_token, v2_events(100))

    events = fake.events()
    assert len(events) == 100 and {e.api for e in events} == {"v2"}
    assert fake.identifiers() == [f"e{i}" for i in range(100)]
    assert fake.totals() == {("cus_1", "gpt", "input"): 100}
    assert fake.error_reports == []


def test_v2_stream_rejects_oversized_and_malformed(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    with pytest.raises(stripe.InvalidRequestError) as info:
        stream(client, token, v2_events(101))
    assert info.value.http_status == 400 and info.value.code == "invalid_request"
    bad = v2_events(2)
    bad[1]["payload"] = {"stripe_customer_id": "cus_1", "value": 5}  # not a string
    with pytest.raises(stripe.InvalidRequestError):
        stream(client, token, bad)
    bad = v2_events(1)
    bad[0]["timestamp"] = "yesterday"
    with pytest.raises(stripe.InvalidRequestError):
        stream(client, token, bad)
    assert fake.events() == []  # a malformed batch is rejected whole


def test_v2_stream_reports_invalid_events_asynchronously(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    events = v2_events(4)
    events[1]["payload"]["value"] = "1.5"
    events[2]["payload"]["stripe_customer_id"] = "cus_unknown"
    events[3]["identifier"] = "e0"  # duplicate within the batch
    stream(client, token, events)
    stream(client, token, v2_events(1))  # duplicate across batches
    assert fake.identifiers() == ["e0"]
    assert [(r["identifier"], r["code"]) for r in fake.error_reports] == [
        ("e1", "meter_event_invalid_value"),
        ("e2", "meter_event_customer_not_found"),
        ("e0", "duplicate_meter_event"),
        ("e0", "duplicate_meter_event"),
    ]


def test_v2_session_expiry_and_bad_tokens(fake: FakeStripe, client: stripe.StripeClient) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    fake.expire_sessions()
    with pytest.raises(stripe.TemporarySessionExpiredError) as info:
        stream(client, token, v2_events(1))
    assert info.value.http_status == 401
    assert info.value.code == "billing_meter_event_session_expired"
    fresh = client.v2.billing.meter_event_session.create().authentication_token
    stream(client, fresh, v2_events(1))
    with pytest.raises(stripe.AuthenticationError):
        stream(client, "mest_unknown", v2_events(1, prefix="u"))
    with pytest.raises(stripe.AuthenticationError):  # the API key is not a session token
        stream(client, "sk_test_fake", v2_events(1, prefix="k"))
    fake.session_ttl = 0.0
    short = client.v2.billing.meter_event_session.create().authentication_token
    with pytest.raises(stripe.TemporarySessionExpiredError):
        stream(client, short, v2_events(1, prefix="s"))
    assert fake.identifiers() == ["e0"]


def test_v2_meter_events_endpoint(fake: FakeStripe, client: stripe.StripeClient) -> None:
    event = client.v2.billing.meter_events.create(
        {"event_name": EVENT, "identifier": "v2-1", "payload": payload(value="9")}
    )
    assert (event.object, event.identifier) == ("v2.billing.meter_event", "v2-1")
    assert event.timestamp.endswith("Z")
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v2.billing.meter_events.create(
            {"event_name": EVENT, "identifier": "v2-1", "payload": payload(value="9")}
        )
    assert info.value.code == "duplicate_meter_event"
    assert info.value.headers is not None
    assert info.value.headers["Stripe-Should-Retry"] == "false"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v2.billing.meter_events.create({"event_name": EVENT, "payload": payload(value="x")})
    assert info.value.code == "meter_event_invalid_value"
    assert fake.totals() == {("cus_1", "", ""): 9}


# ---------------------------------------------------------------------------- faults


def test_rate_limit_fault(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.fail_next(1, status=429, retry_after=2.0, path_prefix="/v1/billing/meter_events")
    client.v1.customers.list()  # not matching the prefix
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
    assert info.value.http_status == 429
    assert info.value.headers is not None and info.value.headers["Retry-After"] == "2"

    token = client.v2.billing.meter_event_session.create().authentication_token
    fake.fail_next(1, path_prefix="/v2/billing/meter_event_stream")
    with pytest.raises(stripe.RateLimitError) as info:
        stream(client, token, v2_events(1))
    assert info.value.headers is not None and info.value.headers["Retry-After"] == "1"
    stream(client, token, v2_events(1))
    assert fake.identifiers() == ["e0"]


def test_server_error_fault(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.fail_next(2, status=500)
    for _ in range(2):
        with pytest.raises(stripe.APIError) as info:
            client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
        assert info.value.http_status == 500
    client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
    assert len(fake.events()) == 1


def test_drop_next(fake: FakeStripe, client: stripe.StripeClient) -> None:
    params: Any = {"event_name": EVENT, "identifier": "d1", "payload": payload()}
    fake.drop_next(1)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(params)
    assert fake.events() == []  # dropped before processing

    fake.drop_next(1, after_processing=True)  # processed, answer lost
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        client.v1.billing.meter_events.create(params)
    assert fake.identifiers() == ["d1"]


def test_rate_limit_per_second_and_latency(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.rate_limit_per_second = 2
    with pytest.raises(stripe.RateLimitError) as info:
        for _ in range(5):  # <= 2 per wall-clock second, so one of these must be refused
            client.v1.customers.list()
    assert info.value.headers is not None and info.value.headers["Retry-After"] == "1"
    fake.rate_limit_per_second = None

    fake.latency = 0.05
    started = time.perf_counter()
    client.v1.customers.list()
    assert time.perf_counter() - started >= 0.05


def test_fail_every_and_drop_every(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.fail_every(2, (429, 500), retry_after=3.0, path_prefix="/v1/billing/meter_events")
    outcomes: list[str] = []
    for i in range(6):
        client.v1.customers.list()  # other paths are neither counted nor failed
        try:
            client.v1.billing.meter_events.create(
                {"event_name": EVENT, "identifier": f"f{i}", "payload": payload()}
            )
            outcomes.append("ok")
        except stripe.RateLimitError as exc:
            assert exc.headers is not None and exc.headers["Retry-After"] == "3"
            outcomes.append("429")
        except stripe.APIError as exc:
            assert exc.http_status == 500
            assert exc.headers is None or "Retry-After" not in exc.headers
            outcomes.append("500")
    assert outcomes == ["ok", "429", "ok", "500", "ok", "429"]
    assert fake.identifiers() == ["f0", "f2", "f4"]

    fake.fail_next(1, status=503)  # one-shot faults win, but the request still counts
    with pytest.raises(stripe.APIError) as info:
        client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
    assert info.value.http_status == 503
    with pytest.raises(stripe.APIError) as info:  # 8th matching request: 500 (turn of 500)
        client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload()})
    assert info.value.http_status == 500

    fake.clear_faults()
    fake.drop_every(2, after_processing=True)
    params: Any = {"event_name": EVENT, "identifier": "g", "payload": payload()}
    client.v1.customers.list()
    with pytest.raises(stripe.APIConnectionError):  # processed, answer lost
        client.v1.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        client.v1.billing.meter_events.create(params)
    assert fake.identifiers()[-1] == "g"
    fake.reset()  # forgets standing faults too
    for _ in range(4):
        client.v1.customers.list()
    with pytest.raises(ValueError):
        fake.fail_every(0)
    with pytest.raises(ValueError):
        fake.fail_every(1, status=200)


def test_identifier_counts(fake: FakeStripe, client: stripe.StripeClient) -> None:
    for ident in ("a", "b", "a", "a"):
        with contextlib.suppress(stripe.InvalidRequestError):
            client.v1.billing.meter_events.create(
                {"event_name": EVENT, "identifier": ident, "payload": payload()}
            )
    token = client.v2.billing.meter_event_session.create().authentication_token
    stream(client, token, [*v2_events(2, prefix="a"), *v2_events(1, prefix="v")])  # a0 a1 v0
    stream(client, token, v2_events(1, prefix="v"))  # v0 again: reported, not a 400
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": EVENT, "type": "cancel", "cancel": {"identifier": "b"}}
    )
    with contextlib.suppress(stripe.InvalidRequestError):  # no meter: not recorded, then dup
        for _ in range(2):
            client.v1.billing.meter_events.create(
                {"event_name": "other", "identifier": "x", "payload": payload()}
            )
    assert fake.identifier_counts() == {
        "accepted": 5,
        "duplicates": 4,
        "cancelled": 1,
        "identifiers": {
            "a": {"accepted": 1, "duplicates": 2, "cancelled": False},
            "b": {"accepted": 1, "duplicates": 0, "cancelled": True},
            "a0": {"accepted": 1, "duplicates": 0, "cancelled": False},
            "a1": {"accepted": 1, "duplicates": 0, "cancelled": False},
            "v0": {"accepted": 1, "duplicates": 1, "cancelled": False},
            "x": {"accepted": 0, "duplicates": 1, "cancelled": False},
        },
    }


def test_reset_keeps_customers_and_meters(fake: FakeStripe, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(
        {"event_name": EVENT, "identifier": "r", "payload": payload()}
    )
    fake.fail_next(5)
    fake.reset()
    assert fake.events() == [] and fake.requests == {} and fake.error_reports == []
    client.v1.billing.meter_events.create(
        {"event_name": EVENT, "identifier": "r", "payload": payload()}
    )
    assert fake.identifiers() == ["r"]


def test_stop_cuts_open_connections(fake: FakeStripe, client: stripe.StripeClient) -> None:
    client.v1.customers.list()  # open a keep-alive connection
    fake.stop()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()


# ---------------------------------------------------------------------------- auth & routing


def test_auth(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError, match=r"Invalid API Key provided: sk_test_\*+"):
        fake.valid_keys = {"sk_test_good"}
        fake.client("sk_test_wrong_key_12345").v1.customers.list()
    fake.client("sk_test_good").v1.customers.list()
    fake.valid_keys = None
    fake.client("rk_test_anything").v1.customers.list()
    with pytest.raises(stripe.AuthenticationError, match="publishable"):
        fake.client("pk_test_123").v1.customers.list()
    with pytest.raises(stripe.AuthenticationError):
        fake.client("pk_test_123").v2.billing.meter_event_session.create()


def test_unknown_route_is_404(fake: FakeStripe) -> None:
    request = urllib.request.Request(
        fake.url + "/v1/nope", headers={"Authorization": "Bearer sk_test_x"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 404
    body = json.loads(info.value.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert "Unrecognized request URL" in body["error"]["message"]


# ---------------------------------------------------------------------------- setup resources


def test_meters_create_list_deactivate(fake: FakeStripe, client: stripe.StripeClient) -> None:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "Tokens",
            "event_name": "api-tokens",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    assert meter.id.startswith("mtr_") and meter.status == "active"
    assert meter.default_aggregation.formula == "sum"
    with pytest.raises(stripe.InvalidRequestError):  # second active meter, same event_name
        client.v1.billing.meters.create(
            {
                "display_name": "x",
                "event_name": "api-tokens",
                "default_aggregation": {"formula": "sum"},
            }
        )
    listed = client.v1.billing.meters.list()
    assert [m.event_name for m in listed.data] == ["api-tokens", EVENT]
    assert client.v1.billing.meters.retrieve(meter.id).display_name == "Tokens"

    inactive = client.v1.billing.meters.deactivate(meter.id)
    assert inactive.status == "inactive" and inactive.status_transitions.deactivated_at
    active_ids = [m.id for m in client.v1.billing.meters.list({"status": "active"}).data]
    assert meter.id not in active_ids
    assert client.v1.billing.meters.reactivate(meter.id).status == "active"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meters.retrieve("mtr_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    paged = list(client.v1.billing.meters.list({"limit": 1}).auto_paging_iter())
    assert len(paged) == 2


def test_event_summaries(fake: FakeStripe, client: stripe.StripeClient) -> None:
    now = int(time.time())
    for i, value in enumerate(("5", "7")):
        client.v1.billing.meter_events.create(
            {
                "event_name": EVENT,
                "identifier": f"s{i}",
                "timestamp": now - 10,
                "payload": payload(value=value),
            }
        )
    meter_id = fake.meters()[0]["id"]
    minute = now // 60 * 60  # Stripe: times aligned to minute boundaries
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id, {"customer": "cus_1", "start_time": minute - 3600, "end_time": minute + 60}
    )
    assert [s.aggregated_value for s in summaries.data] == [12.0]
    assert summaries.data[0].meter == meter_id


def test_customers_api(fake: FakeStripe, client: stripe.StripeClient) -> None:
    created = client.v1.customers.create({"email": "a@example.com", "metadata": {"team": "x"}})
    assert created.id.startswith("cus_")
    assert created.metadata is not None and created.metadata["team"] == "x"
    assert created.id in fake.customers()
    found = client.v1.customers.list({"email": "a@example.com"})
    assert [c.id for c in found.data] == [created.id]
    assert client.v1.customers.retrieve(created.id).email == "a@example.com"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.retrieve("cus_missing")
    assert info.value.code == "resource_missing" and info.value.http_status == 404
    client.v1.billing.meter_events.create(
        {"event_name": EVENT, "payload": payload(customer=created.id)}
    )


def test_products_and_metered_tiered_prices(fake: FakeStripe, client: stripe.StripeClient) -> None:
    meter_id = fake.meters()[0]["id"]
    product = client.v1.products.create({"name": "LLM tokens"})
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 1_000_000, "unit_amount_decimal": Decimal("0.0003")},
                {"up_to": "inf", "unit_amount_decimal": Decimal("0.0002")},
            ],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "lookup_key": "tokens-input",
        }
    )
    assert price.recurring is not None and price.recurring.meter == meter_id
    assert price.billing_scheme == "tiered" and price.lookup_key == "tokens-input"
    flat = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "unit_amount_decimal": Decimal("0.0001"),
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "lookup_key": "tokens-output",
        }
    )
    found = client.v1.prices.list({"lookup_keys": ["tokens-input"]})
    assert [p.id for p in found.data] == [price.id]
    assert {p.id for p in client.v1.prices.list().data} == {price.id, flat.id}
    assert [p.id for p in client.v1.products.list().data] == [product.id]
    with pytest.raises(stripe.InvalidRequestError):  # lookup key taken
        client.v1.prices.create(
            {
                "currency": "usd",
                "product": product.id,
                "unit_amount": 1,
                "lookup_key": "tokens-input",
            }
        )


# ---------------------------------------------------------------------------- async + CLI


def test_async_client(fake: FakeStripe) -> None:
    client = fake.client(async_http=True)

    async def run() -> None:
        await client.v1.billing.meter_events.create_async(
            {"event_name": EVENT, "identifier": "a-v1", "payload": payload(value="2")}
        )
        session = await client.v2.billing.meter_event_session.create_async()
        await client.v2.billing.meter_event_stream.create_async(
            {"events": v2_events(100)}, options={"api_key": session.authentication_token}
        )
        fake.expire_sessions()
        with pytest.raises(stripe.TemporarySessionExpiredError):
            await client.v2.billing.meter_event_stream.create_async(
                {"events": v2_events(1, prefix="late")},
                options={"api_key": session.authentication_token},
            )
        fake.fail_next(1)
        with pytest.raises(stripe.RateLimitError):
            await client.v1.customers.list_async()

    asyncio.run(run())
    client.v1.customers.list()  # allow_sync_methods=True: sync calls work too
    assert len(fake.events()) == 101
    assert fake.totals() == {("cus_1", "", ""): 2, ("cus_1", "gpt", "input"): 100}


def test_standalone_main() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_token_meter.testing",
            "--meter",
            EVENT,
            "--customer",
            "cus_cli",
            "--auto-customers",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base: Any = {}
        for line in proc.stdout:
            if line.startswith("base_addresses="):
                base = json.loads(line.partition("=")[2])
                break
        client = stripe.StripeClient(
            "sk_test_cli", base_addresses=base, http_client=stripe.RequestsClient()
        )
        for customer in ("cus_cli", "cus_auto"):
            client.v1.billing.meter_events.create(
                {"event_name": EVENT, "payload": payload(customer)}
            )
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.billing.meter_events.create({"event_name": EVENT, "payload": payload("x")})
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "2 events accepted" in err


# ---------------------------------------------------------------------------- standalone flags


@dataclass
class Standalone:
    url: str
    proc: subprocess.Popen[str]
    banner: list[str]
    """Lines printed at start-up, up to and including ``identifiers_url=``."""


@contextlib.contextmanager
def standalone(*flags: str) -> Iterator[Standalone]:
    """`python -m stripe_token_meter.testing` on a free 127.0.0.1 port.

    Stopped with SIGTERM on exit; the test may already have stopped it.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_token_meter.testing",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--meter",
            EVENT,
            "--customer",
            "cus_1",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        banner: list[str] = []
        for line in proc.stdout:  # identifiers_url= is the last line printed at start-up
            banner.append(line.rstrip("\n"))
            if line.startswith("url="):
                url = line.strip().removeprefix("url=")
            if line.startswith("identifiers_url="):
                assert line.strip() == f"identifiers_url={url}/_fake/identifiers"
                break
        assert url.startswith("http://127.0.0.1:"), proc.communicate(timeout=10)
        yield Standalone(url, proc, banner)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def sdk(url: str) -> stripe.StripeClient:
    """The real SDK, no retries, so every injected fault surfaces."""
    return stripe.StripeClient(
        "sk_test_standalone",
        base_addresses={"api": url, "meter_events": url},
        http_client=stripe.RequestsClient(),
        max_network_retries=0,
    )


def fetch_identifiers(url: str) -> Any:
    with urllib.request.urlopen(url + "/_fake/identifiers", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


def send_v1(client: stripe.StripeClient, identifier: str) -> str:
    """Post one v1 meter event; returns "ok" or the failure as "429 Retry-After=1"/"500"/..."""
    try:
        client.v1.billing.meter_events.create(
            {"event_name": EVENT, "identifier": identifier, "payload": payload()}
        )
    except stripe.APIConnectionError:
        return "dropped"
    except stripe.StripeError as exc:
        retry_after = (exc.headers or {}).get("Retry-After")
        status = str(exc.http_status)
        return status if retry_after is None else f"{status} Retry-After={retry_after}"
    return "ok"


def test_standalone_fail_every_2_with_429_and_retry_after() -> None:
    with standalone("--fail-every", "2", "--fail-status", "429", "--retry-after", "3") as server:
        url, proc = server.url, server.proc
        client = sdk(url)
        outcomes = [send_v1(client, f"e{i}") for i in range(6)]
        assert outcomes == ["ok", "429 Retry-After=3"] * 3
        assert fetch_identifiers(url)["identifiers"] == {
            f"e{i}": {"accepted": 1, "duplicates": 0, "cancelled": False} for i in (0, 2, 4)
        }
        # GET /_fake/identifiers is not counted: the 7th request passes, the 8th fails
        with pytest.raises(stripe.RateLimitError) as info:
            client.v1.customers.list()
            client.v1.customers.list()
        assert info.value.http_status == 429
        assert info.value.headers is not None and info.value.headers["Retry-After"] == "3"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "fault fail every 2 requests with 429 (Retry-After on 429/503: 3)" in server.banner
    assert "3 events accepted" in err


def test_standalone_fail_statuses_in_turn_on_one_path() -> None:
    flags = ["--fail-every", "2", "--fail-status", "429,500,503", "--retry-after", "none"]
    with standalone(*flags, "--fault-path", "/v1/billing/meter_events") as server:
        url = server.url
        client = sdk(url)
        outcomes = []
        for i in range(6):
            client.v1.customers.list()  # not under --fault-path: never failed, not counted
            outcomes.append(send_v1(client, f"e{i}"))
        assert outcomes == ["ok", "429", "ok", "500", "ok", "503"]
        assert list(fetch_identifiers(url)["identifiers"]) == ["e0", "e2", "e4"]


def test_standalone_drop_every_after_processing_and_duplicate_counts() -> None:
    flags = ["--drop-every", "2", "--drop-after-processing"]
    with standalone(*flags, "--fault-path", "/v1/billing/meter_events") as server:
        url = server.url
        client = sdk(url)
        outcomes = [send_v1(client, i) for i in ("d0", "d1", "d1", "d2", "d0", "d3")]
        # requests 2, 4, 6 lose their answer after being accepted: resending d1 is a duplicate
        assert outcomes == ["ok", "dropped", "400", "dropped", "400", "dropped"]
        assert fetch_identifiers(url) == {
            "accepted": 4,
            "duplicates": 2,
            "cancelled": 0,
            "identifiers": {
                "d0": {"accepted": 1, "duplicates": 1, "cancelled": False},
                "d1": {"accepted": 1, "duplicates": 1, "cancelled": False},
                "d2": {"accepted": 1, "duplicates": 0, "cancelled": False},
                "d3": {"accepted": 1, "duplicates": 0, "cancelled": False},
            },
        }


def test_standalone_drop_every_before_processing() -> None:
    with standalone("--drop-every", "3") as server:
        url = server.url
        client = sdk(url)
        outcomes = [send_v1(client, i) for i in ("a", "b", "c", "c", "d", "e")]
        assert outcomes == ["ok", "ok", "dropped", "ok", "ok", "dropped"]
        assert list(fetch_identifiers(url)["identifiers"]) == ["a", "b", "c", "d"]


def test_standalone_latency_delays_every_answer() -> None:
    with standalone("--latency", "0.4") as server:
        url = server.url
        client = sdk(url)
        for _ in range(3):
            started = time.perf_counter()
            client.v1.customers.list()
            assert time.perf_counter() - started >= 0.4
        started = time.perf_counter()
        assert send_v1(client, "slow") == "ok"
        assert time.perf_counter() - started >= 0.4


def test_standalone_rate_limit_and_session_ttl() -> None:
    with standalone("--rate-limit", "2", "--session-ttl", "1") as server:
        url = server.url
        client = sdk(url)
        with pytest.raises(stripe.RateLimitError) as info:
            for _ in range(5):  # <= 2 per wall-clock second per path
                client.v1.customers.list()
        assert info.value.headers is not None and info.value.headers["Retry-After"] == "1"
        session = client.v2.billing.meter_event_session.create()
        assert session.expires_at is not None
        expires = time.mktime(time.strptime(session.expires_at[:19], "%Y-%m-%dT%H:%M:%S"))
        created = time.mktime(time.strptime(session.created[:19], "%Y-%m-%dT%H:%M:%S"))
        assert expires - created == 1
        stream(client, session.authentication_token, v2_events(1))
        time.sleep(1.2)
        with pytest.raises(stripe.TemporarySessionExpiredError):
            stream(client, session.authentication_token, v2_events(1, prefix="late"))


def test_standalone_identifiers_endpoint_lists_exactly_what_was_sent() -> None:
    with standalone("--auto-customers") as server:
        url = server.url
        assert fetch_identifiers(url) == {
            "accepted": 0,
            "duplicates": 0,
            "cancelled": 0,
            "identifiers": {},
        }
        client = sdk(url)
        sent = [f"id-{i}" for i in range(20)]
        for ident in sent:
            assert send_v1(client, ident) == "ok"
        token = client.v2.billing.meter_event_session.create().authentication_token
        stream(client, token, v2_events(3, prefix="v"))
        stream(client, token, v2_events(2, prefix="v"))  # both duplicates (reported, 200)
        assert send_v1(client, "id-0") == "400"
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": EVENT, "type": "cancel", "cancel": {"identifier": "id-5"}}
        )
        got = fetch_identifiers(url)
        assert list(got["identifiers"]) == [*sent, "v0", "v1", "v2"]
        assert (got["accepted"], got["duplicates"], got["cancelled"]) == (23, 3, 1)
        assert got["identifiers"]["id-0"] == {"accepted": 1, "duplicates": 1, "cancelled": False}
        assert got["identifiers"]["id-5"]["cancelled"] is True
        assert got["identifiers"]["v1"] == {"accepted": 1, "duplicates": 1, "cancelled": False}

        # test-only routes need no key; other methods and paths under /_fake/ are refused
        post = urllib.request.Request(url + "/_fake/identifiers", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(post, timeout=10)
        assert http_info.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(url + "/_fake/nope", timeout=10)
        assert http_info.value.code == 404
        assert "identifiers" in json.loads(http_info.value.read())["error"]["message"]


def test_standalone_dump_identifiers_on_exit(tmp_path: Any) -> None:
    dump = tmp_path / "ids.json"
    with standalone("--dump-identifiers", str(dump)) as server:
        url, proc = server.url, server.proc
        client = sdk(url)
        for ident in ("x", "y", "x"):
            send_v1(client, ident)
        live = fetch_identifiers(url)
        assert not dump.exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"identifiers written to {dump}" in err
    assert json.loads(dump.read_text()) == live
    assert live["identifiers"] == {
        "x": {"accepted": 1, "duplicates": 1, "cancelled": False},
        "y": {"accepted": 1, "duplicates": 0, "cancelled": False},
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fail-every", "0"], "expected a whole number >= 1"),
        (["--fail-every", "2", "--fail-status", "200"], "statuses must be 400-599"),
        (["--latency", "-1"], "expected seconds >= 0"),
        (["--drop-after-processing"], "--drop-after-processing needs --drop-every N"),
        (["--fault-path", "/v1/"], "--fault-path needs --fail-every N or --drop-every N"),
    ],
)
def test_standalone_rejects_bad_fault_flags(flags: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stripe_token_meter.testing", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
