"""The three LLM pricing models (pay as you go, fixed fee + overage, credit burndown).

Why in one place: `setup` turns them into Stripe prices and `demo` computes what each
customer's invoice would be under them; both must use the same numbers and rounding.
Amounts are USD-style major units on the command line and integer cents inside.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

PricingModel = Literal["payg", "fixed-overage", "credits"]
PRICING_MODELS: tuple[PricingModel, ...] = ("payg", "fixed-overage", "credits")
_CENT = Decimal(1)


def _money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected an amount like 0.001, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative amount, got {text!r}")
    return value


def _tokens(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of tokens, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative token count, got {text!r}")
    return value


def add_pricing_flags(parser: argparse.ArgumentParser) -> None:
    """Amounts for the three models (defaults follow the seed: $200 incl. 100,000 tokens)."""
    g = parser.add_argument_group("pricing (amounts in the currency's major unit)")
    g.add_argument("--currency", default="usd", help="ISO currency (default usd)")
    g.add_argument(
        "--payg-rate",
        type=_money,
        default=Decimal("0.0015"),
        metavar="AMOUNT",
        help="pay as you go: price per token (default 0.0015)",
    )
    g.add_argument(
        "--fee",
        type=_money,
        default=Decimal("200"),
        metavar="AMOUNT",
        help="fixed fee + overage: monthly fee (default 200)",
    )
    g.add_argument(
        "--included",
        type=_tokens,
        default=100_000,
        metavar="TOKENS",
        help="fixed fee + overage: tokens included in the fee (default 100000)",
    )
    g.add_argument(
        "--overage-rate",
        type=_money,
        default=Decimal("0.001"),
        metavar="AMOUNT",
        help="fixed fee + overage: price per token beyond the included ones (default 0.001)",
    )
    g.add_argument(
        "--credit-rate",
        type=_money,
        default=Decimal("0.0015"),
        metavar="AMOUNT",
        help="credit burndown: credits burnt per token (default 0.0015)",
    )
    g.add_argument(
        "--credits",
        type=_money,
        default=Decimal("100"),
        metavar="AMOUNT",
        help="credit burndown: prepaid credit pack (default 100)",
    )


@dataclass(frozen=True)
class Pricing:
    """Prices for all three models; rates per token, fee and credits per month/pack."""

    currency: str = "usd"
    payg_rate: Decimal = Decimal("0.0015")
    fee: Decimal = Decimal("200")
    included: int = 100_000
    overage_rate: Decimal = Decimal("0.001")
    credit_rate: Decimal = Decimal("0.0015")
    credits: Decimal = Decimal("100")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pricing:
        return cls(
            currency=str(args.currency).lower(),
            payg_rate=args.payg_rate,
            fee=args.fee,
            included=args.included,
            overage_rate=args.overage_rate,
            credit_rate=args.credit_rate,
            credits=args.credits,
        )


def cents(amount: Decimal) -> Decimal:
    """Major units -> cents (exact; Stripe's `unit_amount_decimal` is in cents)."""
    return amount * 100


def round_cents(value: Decimal) -> int:
    """Whole cents, half up, as an invoice line is rounded."""
    return int(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def decimal_str(value: Decimal) -> str:
    """A plain decimal string without exponent or trailing zeros (`0.15`, `20000`)."""
    text = format(value.normalize(), "f")
    return text


def fmt_money(amount_cents: int, currency: str = "usd") -> str:
    """`$1,234.56` for usd, `1,234.56 EUR` otherwise."""
    major = Decimal(amount_cents) / 100
    text = f"{major:,.2f}"
    return f"${text}" if currency == "usd" else f"{text} {currency.upper()}"


def fmt_rate(rate: Decimal, currency: str = "usd") -> str:
    text = decimal_str(rate)
    return f"${text}" if currency == "usd" else f"{text} {currency.upper()}"


@dataclass(frozen=True)
class Invoice:
    """What one customer's invoice would be under the three models, in cents."""

    tokens: int
    payg: int
    fixed_fee: int
    overage_tokens: int
    overage: int
    credits_usage: int
    credits_applied: int
    credits_due: int
    credits_left: int

    @property
    def fixed_total(self) -> int:
        return self.fixed_fee + self.overage

    def to_json(self) -> dict[str, Any]:
        """Cents, with the breakdown a script needs."""
        return {
            "tokens": self.tokens,
            "payg": {"total": self.payg},
            "fixed_overage": {
                "fee": self.fixed_fee,
                "overage_tokens": self.overage_tokens,
                "overage": self.overage,
                "total": self.fixed_total,
            },
            "credits": {
                "usage": self.credits_usage,
                "applied": self.credits_applied,
                "due": self.credits_due,
                "balance_left": self.credits_left,
            },
        }


def invoice(tokens: int, p: Pricing) -> Invoice:
    """Stripe's arithmetic for a month with `tokens` metered tokens, per pricing model."""
    overage_tokens = max(0, tokens - p.included)
    usage = round_cents(tokens * cents(p.credit_rate))
    credit = round_cents(cents(p.credits))
    applied = min(usage, credit)
    return Invoice(
        tokens=tokens,
        payg=round_cents(tokens * cents(p.payg_rate)),
        fixed_fee=round_cents(cents(p.fee)),
        overage_tokens=overage_tokens,
        overage=round_cents(overage_tokens * cents(p.overage_rate)),
        credits_usage=usage,
        credits_applied=applied,
        credits_due=usage - applied,
        credits_left=credit - applied,
    )


@dataclass(frozen=True)
class PriceSpec:
    """One Stripe price `setup` creates, found again by its lookup key."""

    lookup_key: str
    describe: str
    params: dict[str, Any]
    """`prices.create` params without `product` and `lookup_key` (filled in by setup)."""


def _metered(meter_id: str, currency: str) -> dict[str, Any]:
    return {
        "currency": currency,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
    }


def price_specs(model: PricingModel, p: Pricing, meter_id: str, prefix: str) -> list[PriceSpec]:
    """The prices one pricing model needs (seed, step 2)."""
    cur = p.currency
    if model == "payg":
        return [
            PriceSpec(
                f"{prefix}.payg",
                f"pay as you go: {fmt_rate(p.payg_rate, cur)} per token",
                {
                    **_metered(meter_id, cur),
                    "nickname": "LLM tokens, pay as you go",
                    "billing_scheme": "per_unit",
                    "unit_amount_decimal": decimal_str(cents(p.payg_rate)),
                },
            )
        ]
    if model == "fixed-overage":
        return [
            PriceSpec(
                f"{prefix}.fee",
                f"fixed fee: {fmt_money(round_cents(cents(p.fee)), cur)} per month",
                {
                    "currency": cur,
                    "recurring": {"interval": "month", "usage_type": "licensed"},
                    "nickname": "LLM plan, monthly fee",
                    "unit_amount": round_cents(cents(p.fee)),
                },
            ),
            PriceSpec(
                f"{prefix}.overage",
                f"overage: first {p.included:,} tokens included, then "
                f"{fmt_rate(p.overage_rate, cur)} per token",
                {
                    **_metered(meter_id, cur),
                    "nickname": "LLM tokens, overage",
                    "billing_scheme": "tiered",
                    "tiers_mode": "graduated",
                    "tiers": [
                        {"up_to": p.included, "unit_amount": 0},
                        {"up_to": "inf", "unit_amount_decimal": decimal_str(cents(p.overage_rate))},
                    ],
                },
            ),
        ]
    return [
        PriceSpec(
            f"{prefix}.credits",
            f"credit burndown: {fmt_rate(p.credit_rate, cur)} of credit per token",
            {
                **_metered(meter_id, cur),
                "nickname": "LLM tokens, paid from credits",
                "billing_scheme": "per_unit",
                "unit_amount_decimal": decimal_str(cents(p.credit_rate)),
            },
        ),
        PriceSpec(
            f"{prefix}.credit_pack",
            f"credit pack: {fmt_money(round_cents(cents(p.credits)), cur)} one-time "
            "(grant it as billing credits when a customer buys it)",
            {
                "currency": cur,
                "nickname": "LLM credit pack",
                "unit_amount": round_cents(cents(p.credits)),
            },
        ),
    ]
