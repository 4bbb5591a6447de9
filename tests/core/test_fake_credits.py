"""FakeStripe's billing credits through the real SDK: grants, void, the balance summary."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe
from stripe_token_meter.testing import FakeStripe

METERED: Any = {"type": "applicability_scope", "applicability_scope": {"price_type": "metered"}}


def _grant(client: stripe.StripeClient, customer: str, cents: int, **extra: Any) -> Any:
    return client.v1.billing.credit_grants.create(
        {
            "customer": customer,
            "amount": {"type": "monetary", "monetary": {"value": cents, "currency": "usd"}},
            "applicability_config": {"scope": {"price_type": "metered"}},
            "category": "paid",
            "name": "Prepaid tokens",
            **extra,
        }
    )


@pytest.fixture
def fake() -> Any:
    with FakeStripe() as f:
        f.create_customer("cus_x")
        f.create_customer("cus_y")
        yield f


def _available(client: stripe.StripeClient, customer: str) -> list[tuple[str, int]]:
    summary = client.v1.billing.credit_balance_summary.retrieve(
        {"customer": customer, "filter": METERED}
    )
    assert summary.object == "billing.credit_balance_summary" and summary.customer == customer
    return [
        (b.available_balance.monetary.currency, b.available_balance.monetary.value)
        for b in summary.balances
        if b.available_balance.monetary is not None
    ]


def test_grants_add_up_and_a_voided_or_expired_grant_does_not_count(fake: FakeStripe) -> None:
    client = fake.client()
    assert _available(client, "cus_x") == []  # no grant: no balance entry
    a = _grant(client, "cus_x", 100)
    assert (a.object, a.customer, a.category, a.voided_at) == (
        "billing.credit_grant",
        "cus_x",
        "paid",
        None,
    )
    assert a.amount.monetary.value == 100 and a.amount.type == "monetary"
    assert a.applicability_config.scope.price_type == "metered"
    b = _grant(client, "cus_x", 250, category="promotional")
    _grant(client, "cus_y", 7)
    _grant(client, "cus_x", 1_000, expires_at=int(time.time()) - 1)  # already expired
    assert _available(client, "cus_x") == [("usd", 350)]
    voided = client.v1.billing.credit_grants.void_grant(b.id)
    assert voided.voided_at is not None
    assert _available(client, "cus_x") == [("usd", 100)]
    assert _available(client, "cus_y") == [("usd", 7)]
    listed = client.v1.billing.credit_grants.list({"customer": "cus_x"})
    assert len(listed.data) == 3 and {g.customer for g in listed.data} == {"cus_x"}
    assert client.v1.billing.credit_grants.retrieve(a.id).id == a.id
    assert [e["type"] for e in fake.credit_events()] == ["billing.credit_grant.created"] * 4
    assert fake.credit_events()[0]["data"]["object"]["customer"] == "cus_x"


def test_errors_are_shaped_like_stripes(fake: FakeStripe) -> None:
    client = fake.client()
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.billing.credit_balance_summary.retrieve(
            {"customer": "cus_nope", "filter": METERED}
        )
    assert e.value.code == "resource_missing" and e.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.billing.credit_balance_summary.retrieve({"filter": METERED})  # type: ignore[typeddict-item]
    assert e.value.code == "parameter_missing" and e.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.billing.credit_balance_summary.retrieve({"customer": "cus_x"})  # type: ignore[typeddict-item]
    assert e.value.code == "parameter_missing" and e.value.param == "filter"
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.billing.credit_grants.retrieve("credgr_nope")
    assert e.value.http_status == 404 and e.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as e:
        _grant(client, "cus_nope", 100)
    assert e.value.code == "resource_missing" and e.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as e:
        _grant(client, "cus_x", 0)
    assert e.value.param == "amount[monetary][value]"


def test_credit_endpoints_count_toward_the_test_key_rate_limit(fake: FakeStripe) -> None:
    client = fake.client("sk_test_credits")
    fake.grant_credit("cus_x", 100)
    ok = refused = 0
    for _ in range(30):
        try:
            _available(client, "cus_x")
            ok += 1
        except stripe.RateLimitError:
            refused += 1
    assert (ok, refused) == (25, 5)
    assert fake.requests[("GET", "/v1/billing/credit_balance_summary")] == 25
    assert fake.limit_refusals["global-rate"] == 5
