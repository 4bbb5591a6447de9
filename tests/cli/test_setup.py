"""`setup` against FakeStripe: the seed's objects, created once, looked up ever after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli_testkit import KEY, Cli
from stripe_token_meter import Pricing, TokenMeter, Usage


def _flags(fake: Any) -> list[str]:
    return ["--api-key", KEY, "--api-base", fake.url]


def _prices(fake: Any) -> dict[str, dict[str, Any]]:
    listed = fake.client().v1.prices.list({"limit": 100, "expand": ["data.tiers"]})
    return {str(p.lookup_key): p.to_dict() for p in listed.data}


def test_setup_twice_creates_nothing_the_second_time(cli: Cli, fake_stripe: Any) -> None:
    first = cli(
        "setup", "--pricing", "all", "--json", "--event-name", "llm-tokens", *_flags(fake_stripe)
    )
    assert first.code == 0, first.err
    states = {(s["kind"], s["name"]): s["state"] for s in first.json()["steps"]}
    assert states == {
        ("meter", "llm-tokens"): "created",
        ("product", "stm_llm_tokens"): "created",
        ("price", "stm.llm-tokens.payg"): "created",
        ("price", "stm.llm-tokens.fee"): "created",
        ("price", "stm.llm-tokens.overage"): "created",
        ("price", "stm.llm-tokens.credits"): "created",
        ("price", "stm.llm-tokens.credit_pack"): "created",
    }
    [meter] = [m for m in fake_stripe.meters() if m["event_name"] == "llm-tokens"]
    assert meter["customer_mapping"] == {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    assert meter["value_settings"] == {"event_payload_key": "value"}
    assert meter["default_aggregation"] == {"formula": "sum"}
    assert meter["dimension_payload_keys"] == ["model", "token_type"]
    prices = _prices(fake_stripe)
    assert prices["stm.llm-tokens.payg"]["recurring"]["meter"] == meter["id"]
    assert str(prices["stm.llm-tokens.payg"]["unit_amount_decimal"]) == "0.15"  # cents
    assert prices["stm.llm-tokens.fee"]["unit_amount"] == 20000
    tiers = prices["stm.llm-tokens.overage"]["tiers"]
    assert [(t["up_to"], str(t["unit_amount_decimal"])) for t in tiers] == [
        (100000, "0"),
        (None, "0.1"),
    ]

    meters, requests = len(fake_stripe.meters()), fake_stripe.requests
    second = cli(
        "setup", "--pricing", "all", "--json", "--event-name", "llm-tokens", *_flags(fake_stripe)
    )
    assert second.code == 0
    assert {s["state"] for s in second.json()["steps"]} == {"exists"}
    assert len(fake_stripe.meters()) == meters and _prices(fake_stripe).keys() == prices.keys()
    posts = {k: v for k, v in (fake_stripe.requests - requests).items() if k[0] == "POST"}
    assert posts == {}


def test_setup_dry_run_creates_nothing(cli: Cli, fake_stripe: Any) -> None:
    r = cli("setup", "--dry-run", "--pricing", "fixed-overage", *_flags(fake_stripe))
    assert r.code == 0
    assert "dry run: nothing created" in r.out and "create" in r.out
    assert _prices(fake_stripe) == {}
    offline = cli("setup", "--dry-run", "--json")  # no key: the plan only
    assert offline.code == 0
    assert {s["state"] for s in offline.json()["steps"]} == {"unchecked"}


def test_setup_changed_terms_are_kept_unless_replaced(cli: Cli, fake_stripe: Any) -> None:
    assert cli("setup", *_flags(fake_stripe)).code == 0
    old = _prices(fake_stripe)["stm.token-billing-tokens.payg"]["id"]
    kept = cli("setup", "--payg-rate", "0.002", "--json", *_flags(fake_stripe)).json()["steps"][-1]
    assert (kept["state"], kept["id"]) == ("differs", old)
    assert "unit_amount_decimal" in kept["note"]
    new = cli("setup", "--payg-rate", "0.002", "--replace-prices", "--json", *_flags(fake_stripe))
    step = new.json()["steps"][-1]
    assert step["state"] == "replaced" and step["id"] != old
    assert _prices(fake_stripe)["stm.token-billing-tokens.payg"]["id"] == step["id"]


def test_setup_reactivates_an_archived_meter(cli: Cli, fake_stripe: Any) -> None:
    [meter] = fake_stripe.meters()
    fake_stripe.client().v1.billing.meters.deactivate(meter["id"])
    r = cli("setup", "--json", *_flags(fake_stripe))
    assert r.json()["steps"][0]["state"] == "reactivated"
    assert [m["status"] for m in fake_stripe.meters()] == ["active"]


def test_setup_customers_and_unsupported_subscriptions(cli: Cli, fake_stripe: Any) -> None:
    args = [
        "setup",
        "--json",
        "--customer-email",
        "ada@example.com",
        "--subscribe",
        *_flags(fake_stripe),
    ]
    r = cli(*args)
    assert r.code == 1  # FakeStripe has no subscriptions: said, not hidden
    steps = r.json()["steps"]
    customer = next(s for s in steps if s["kind"] == "customer")
    assert customer["state"] == "created" and customer["id"] in fake_stripe.customers()
    sub = next(s for s in steps if s["kind"] == "subscription")
    assert sub["state"] == "failed" and "/v1/subscriptions" in sub["note"]
    again = next(s for s in cli(*args).json()["steps"] if s["kind"] == "customer")
    assert (again["state"], again["id"]) == ("exists", customer["id"])


def test_setup_cost_creates_the_cost_meter_and_its_price(
    cli: Cli, fake_stripe: Any, tmp_path: Path
) -> None:
    args = ["setup", "--cost", "--json", *_flags(fake_stripe)]
    first = cli(*args)
    assert first.code == 0, first.err
    states = {(s["kind"], s["name"]): s["state"] for s in first.json()["steps"]}
    assert states == {
        ("meter", "token-billing-tokens"): "exists",  # the fixture's
        ("product", "stm_llm_tokens"): "created",
        ("price", "stm.token-billing-tokens.payg"): "created",
        ("meter", "token-billing-cost"): "created",
        ("price", "stm.token-billing-cost.cost"): "created",
    }
    [meter] = [m for m in fake_stripe.meters() if m["event_name"] == "token-billing-cost"]
    assert meter["customer_mapping"] == {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    assert meter["value_settings"] == {"event_payload_key": "value"}
    assert meter["default_aggregation"] == {"formula": "sum"}
    assert meter["dimension_payload_keys"] == ["model"]
    price = _prices(fake_stripe)["stm.token-billing-cost.cost"]
    assert str(price["unit_amount_decimal"]) == "0.0001"  # cents per micro-dollar
    assert price["currency"] == "usd" and price["product"] == "stm_llm_tokens"
    assert price["recurring"]["meter"] == meter["id"]
    assert price["recurring"]["usage_type"] == "metered"

    requests = fake_stripe.requests
    again = cli(*args)
    assert {s["state"] for s in again.json()["steps"]} == {"exists"}
    assert {k: v for k, v in (fake_stripe.requests - requests).items() if k[0] == "POST"} == {}

    # what TokenMeter(pricing=...) sends is what that meter takes
    pricing = Pricing({"openai/gpt-4o": {"input": "2.50", "output": "10"}}, markup_percent=20)
    with TokenMeter(
        api_key=KEY, api_base=fake_stripe.url, outbox_path=tmp_path / "o.db", pricing=pricing
    ) as meter:
        meter.record(Usage(model="openai/gpt-4o", customer_id="cus_a", request_id="c1",
                           input_tokens=1234, output_tokens=567))  # fmt: skip
        assert meter.flush(10)
    [cost] = fake_stripe.events(event_name="token-billing-cost")
    assert (cost.customer, cost.value, cost.payload["model"]) == ("cus_a", 10_506, "openai/gpt-4o")


def test_setup_cost_event_name_and_checks(cli: Cli, fake_stripe: Any) -> None:
    r = cli("setup", "--cost", "--cost-event-name", "llm-cost", "--json", *_flags(fake_stripe))
    assert r.code == 0, r.err
    named = {s["name"]: s for s in r.json()["steps"]}
    assert (
        named["llm-cost"]["state"] == "created" and named["stm.llm-cost.cost"]["state"] == "created"
    )
    assert [m["event_name"] for m in fake_stripe.meters()] == ["token-billing-tokens", "llm-cost"]
    same = cli("setup", "--cost", "--cost-event-name", "token-billing-tokens", *_flags(fake_stripe))
    assert same.code == 2 and "must differ" in same.err
    plan = cli("setup", "--cost", "--dry-run", "--json")  # no key: the plan only
    assert plan.code == 0
    assert [(s["kind"], s["name"], s["state"]) for s in plan.json()["steps"][-2:]] == [
        ("meter", "token-billing-cost", "unchecked"),
        ("price", "stm.token-billing-cost.cost", "unchecked"),
    ]


def test_status_lists_models_without_cost_events(
    cli: Cli, fake_stripe: Any, tmp_path: Path
) -> None:
    """After `setup --cost`, `status` names the models a priced meter could not price."""
    assert cli("setup", "--cost", *_flags(fake_stripe)).code == 0
    path = tmp_path / "o.db"
    plain = TokenMeter(api_key=KEY, api_base=fake_stripe.url, outbox_path=path)
    plain.record(Usage(model="openai/gpt-4o", customer_id="cus_a", request_id="p0",
                       input_tokens=5))  # fmt: skip
    assert plain.flush(10)
    plain.close()
    before = cli("status", "--json", "--outbox", str(path))
    assert before.json()["unpriced_models"] is None  # no meter on this outbox had prices
    pricing = Pricing({"openai/gpt-4o": {"input": "2.50", "output": "10"}})
    with TokenMeter(
        api_key=KEY, api_base=fake_stripe.url, outbox_path=path, pricing=pricing
    ) as meter:
        for rid, model in (("p1", "openai/gpt-4o"), ("u1", "mistral/large"), ("u2", "openai/o9")):
            meter.record(Usage(model=model, customer_id="cus_a", request_id=rid, input_tokens=5))
        assert meter.flush(10)
        assert meter.stats()["unpriced_models"] == ["mistral/large", "openai/o9"]
    data = cli("status", "--json", "--outbox", str(path))
    assert data.code == 0  # a missing price is said, not a delivery problem
    assert data.json()["unpriced_models"] == ["mistral/large", "openai/o9"]
    text = cli("status", "--outbox", str(path)).out
    assert "Unpriced models mistral/large, openai/o9 (token events but no cost event" in text
