"""`setup` against FakeStripe: the seed's objects, created once, looked up ever after."""

from __future__ import annotations

from typing import Any

from cli_testkit import KEY, Cli


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
