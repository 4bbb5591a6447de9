"""Pure helpers the commands rely on: invoice arithmetic, `--since`, key redaction."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest
from stripe_token_meter.commands._config import key_kind
from stripe_token_meter.commands._errors import redact
from stripe_token_meter.commands._since import parse_since
from stripe_token_meter.commands.pricing import Pricing, invoice, price_specs


def test_invoice_under_the_three_pricing_models() -> None:
    p = Pricing()  # the seed's numbers: $200 incl. 100,000 tokens, then $0.001
    at_limit = invoice(100_000, p)
    assert (at_limit.payg, at_limit.fixed_total, at_limit.overage_tokens) == (15_000, 20_000, 0)
    over = invoice(150_001, p)
    assert (over.overage_tokens, over.overage, over.fixed_total) == (50_001, 5_000, 25_000)
    assert (over.credits_usage, over.credits_applied, over.credits_due, over.credits_left) == (
        22_500,
        10_000,
        12_500,
        0,
    )
    small = invoice(1_000, p)
    assert (small.credits_due, small.credits_left) == (0, 9_850)
    assert invoice(0, Pricing(fee=Decimal("0"))).fixed_total == 0


def test_price_specs_use_cents_and_graduated_tiers() -> None:
    p = Pricing(payg_rate=Decimal("0.000002"), overage_rate=Decimal("0.001"), included=5)
    [payg] = price_specs("payg", p, "mtr_1", "stm.x")
    assert payg.params["unit_amount_decimal"] == "0.0002"
    fee, overage = price_specs("fixed-overage", p, "mtr_1", "stm.x")
    assert fee.params["recurring"]["usage_type"] == "licensed"
    assert overage.params["tiers"] == [
        {"up_to": 5, "unit_amount": 0},
        {"up_to": "inf", "unit_amount_decimal": "0.1"},
    ]
    assert [s.lookup_key for s in price_specs("credits", p, "mtr_1", "stm.x")] == [
        "stm.x.credits",
        "stm.x.credit_pack",
    ]


def test_since_accepts_dates_and_durations() -> None:
    now = 1_700_000_000.0
    assert parse_since("90m", now) == now - 5400
    assert parse_since("7d", now) == now - 7 * 86_400
    assert parse_since("2023-11-14T22:13:20Z", now) == now
    assert parse_since("2023-11-14", now) == 1_699_920_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday", now)


def test_redact_hides_keys_even_masked_ones() -> None:
    text = "Invalid API Key provided: sk_test_****************1234; also rk_live_abcDEF123456789"
    assert redact(text) == "Invalid API Key provided: sk_test_***; also rk_live_***"
    assert redact("key sk_abcdefghijklmnop") == "key sk_***"
    assert redact("cus_123 and price_abc stay") == "cus_123 and price_abc stay"
    assert [key_kind(k) for k in ("sk_test_1", "rk_live_2", "sk_3abc", None)] == [
        "sk_test",
        "rk_live",
        "sk",
        None,
    ]
