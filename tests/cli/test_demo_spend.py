"""`demo`'s spend-control part: a prepaid customer with $0.50 of credit (a real credit grant
made through the SDK) is refused by `CreditGuard(source="stripe")` once it is spent.

Each allowed call costs (1,234 x 2.50 + 567 x 10.00) micro-dollars + 20 % = 10,506, so
47 calls (493,782) leave credit, the 48th is allowed and overdraws, the 49th is refused.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from cli_testkit import Cli

BALANCE = ("GET", "/v1/billing/credit_balance_summary")
COST = 10_506
ALLOWED = 48
COST_EVENT = "token-billing-cost"


def _prepaid(fake_stripe: Any) -> str:
    """The id of the demo's prepaid customer, as FakeStripe knows it."""
    found = [c for c in fake_stripe.customers() if fake_stripe.credit_grants(c)]
    assert len(found) == 1, found
    return str(found[0])


def test_prepaid_customer_is_refused_after_exactly_48_calls(cli: Cli, fake_stripe: Any) -> None:
    r = cli(
        "demo", "--json", "--burst", "0", "--frameworks", "langchain", "--api-base", fake_stripe.url
    )
    assert r.code == 0, r.out + r.err
    d = json.loads(r.out)
    assert d["ok"] is True and d["problems"] == []
    s = d["spend"]
    cid = _prepaid(fake_stripe)
    assert s["customer"] == cid and s["name"] == "Prepaid Co"
    assert cid not in d["totals"]  # the frameworks' tables and invoices stay theirs
    assert s["allowed"] == s["expected_allowed"] == ALLOWED
    assert s["refused"] is True and s["model_calls"] == ALLOWED  # the 49th never reached it
    assert s["remaining"] == "-0.004288"  # 500,000 - 48 x 10,506 micro-dollars
    assert s["cost_per_call_micros"] == COST and s["credit_micros"] == 500_000
    assert s["cost_events"] == ALLOWED and s["cost_sum_micros"] == ALLOWED * COST

    # what FakeStripe holds: one $0.50 paid grant for metered prices, 48 cost events
    (grant,) = fake_stripe.credit_grants(cid)
    assert grant["id"] == s["credit_grant"] and grant["category"] == "paid"
    assert grant["amount"]["monetary"] == {"currency": "usd", "value": 50}
    assert grant["applicability_config"]["scope"]["price_type"] == "metered"
    costs = [e.value for e in fake_stripe.events(customer=cid, event_name=COST_EVENT)]
    assert costs == [COST] * ALLOWED
    tokens = fake_stripe.events(customer=cid, event_name="token-billing-tokens-prepaid")
    assert sorted((e.payload["token_type"], e.value) for e in tokens) == sorted(
        [("input", 1234)] * ALLOWED + [("output", 567)] * ALLOWED
    )
    assert fake_stripe.requests[BALANCE] == s["balance_requests"]
    assert s["balance_requests"] in (1, 2)

    # a second run finds the customer again and voids its old grant: $0.50 again, 48 again
    again = cli(
        "demo", "--json", "--burst", "0", "--frameworks", "langchain", "--api-base", fake_stripe.url
    )
    assert again.code == 0, again.out + again.err
    s2 = json.loads(again.out)["spend"]
    assert s2["customer"] == cid and s2["voided_grants"] == 1
    assert s2["allowed"] == ALLOWED and s2["model_calls"] == ALLOWED
    assert s2["cost_sum_micros"] == ALLOWED * COST
    live = [g for g in fake_stripe.credit_grants(cid) if g["voided_at"] is None]
    assert [g["id"] for g in live] == [s2["credit_grant"]]
    assert len(fake_stripe.events(customer=cid, event_name=COST_EVENT)) == 2 * ALLOWED
    assert fake_stripe.requests[BALANCE] == s["balance_requests"] + s2["balance_requests"]


def test_the_printed_demo_says_the_same_with_its_own_fake_stripe(cli: Cli) -> None:
    r = cli("demo", "--burst", "0", "--frameworks", "langchain")
    assert r.code == 0, r.out + r.err
    text = " ".join(r.out.split())  # rich wraps long lines
    for line in (
        "Spend control: Prepaid Co (cus_",
        "has a $0.50 credit grant (credgr_",
        "each LangChain call costs 10,506 micro-USD",
        "48 calls allowed; call 49 was refused with CreditExhausted before the model was "
        "called (model invoked 48 times), remaining -0.004288 USD.",
        "Cost events at FakeStripe: 48, summing 504,288 micro-USD (48 x 10,506);",
    ):
        assert line in text, line
    assert "balance requests: 1." in text or "balance requests: 2." in text
    assert "problem" not in r.out
    assert "CreditExhausted(" not in r.err  # LangChain's own warning about it is dropped


def test_no_spend_skips_it(cli: Cli, fake_stripe: Any) -> None:
    r = cli(
        "demo",
        "--json",
        "--burst",
        "0",
        "--frameworks",
        "langchain",
        "--no-spend",
        "--api-base",
        fake_stripe.url,
    )
    assert r.code == 0, r.out + r.err
    d = json.loads(r.out)
    assert d["spend"] is None and d["ok"] is True
    assert fake_stripe.requests[BALANCE] == 0
    assert all(not fake_stripe.credit_grants(c) for c in fake_stripe.customers())
    assert fake_stripe.events(event_name=COST_EVENT) == []


def test_skipped_with_a_reason_without_langchain_stripe(
    cli: Cli, fake_stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "langchain_stripe", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "stripe_token_meter.commands.demo_langchain", raising=False)
    r = cli(
        "demo", "--json", "--burst", "0", "--frameworks", "langchain", "--api-base", fake_stripe.url
    )
    assert r.code == 0, r.out + r.err
    d = json.loads(r.out)
    reason = "langchain_stripe: pip install langchain-stripe"
    assert d["spend"] == {"skipped": reason} and d["ok"] is True
    assert d["skipped"] == {"langchain": reason}
    assert fake_stripe.requests[BALANCE] == 0 and fake_stripe.customers() == []
