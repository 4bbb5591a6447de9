"""`setup --cost`: the cost meter and its price, for `TokenMeter(pricing=...)`'s cost events.

Why: a priced meter sends each call's marked-up cost in micro-units of the currency
(1 USD = 1,000,000) to its own meter; one metered price of 0.0001 cents per unit (a
micro-dollar is a ten-thousandth of a cent) turns that sum into the invoice amount. The
meter has the tokens meter's customer and value keys and one dimension, `model` (cost
events carry no `token_type`). Looked up before created, like the rest of `setup`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import stripe

from ..pricing import minor_unit_micros
from ._provision import PENDING_ID, Provisioner, Step, _as_dict
from .pricing import PriceSpec

COST_DIMENSIONS = ("model",)


def cost_price_spec(meter_id: str, currency: str, prefix: str) -> PriceSpec:
    """The metered price of the cost meter: 0.0001 minor units per micro-unit."""
    # One micro-unit in minor units: 0.0001 of a cent, 0.000001 of a yen.
    amount = format(Decimal(1) / minor_unit_micros(currency), "f")
    return PriceSpec(
        f"{prefix}.cost",
        f"cost pass-through: {amount} {currency.upper()} minor units per micro-unit of cost "
        "(1,000,000 micro-units = 1 major unit)",
        {
            "currency": currency,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "nickname": "LLM cost (micro-units)",
            "billing_scheme": "per_unit",
            "unit_amount_decimal": amount,
        },
    )


def ensure_cost_meter(prov: Provisioner, event_name: str) -> Step:
    """The cost meter: sum of the value key, customer by id, dimension `model`."""
    o = prov.opts
    detail = (
        f"cost in micro-units: sum of payload '{o.value_key}', customer by_id on "
        f"'{o.customer_key}', dimension {', '.join(COST_DIMENSIONS)}"
    )
    step = prov._step(Step("meter", event_name, detail, "unchecked"))
    if prov.client is None:
        return step
    client = prov.client
    found = prov._call(
        "listing meters",
        lambda: [
            _as_dict(m) for m in client.v1.billing.meters.list({"limit": 100}).auto_paging_iter()
        ],
    )
    same = [m for m in found if m.get("event_name") == event_name]
    active = next((m for m in same if m.get("status") == "active"), None)
    if active is not None:
        step.state, step.id = "exists", str(active["id"])
        step.note = prov._meter_note(active)
        return step
    if same:
        step.state, step.id = "reactivate", str(same[0]["id"])
        if not prov.dry_run:
            meter_id = step.id
            prov._call(
                f"reactivating meter {meter_id}",
                lambda: client.v1.billing.meters.reactivate(meter_id),
            )
            step.state = "reactivated"
        return step
    step.state, step.id = "create", PENDING_ID
    if prov.dry_run:
        return step
    params: dict[str, Any] = {
        "display_name": "LLM cost (micro-units)",
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": o.customer_key},
        "value_settings": {"event_payload_key": o.value_key},
        "dimension_payload_keys": list(COST_DIMENSIONS),
    }
    try:
        meter = client.v1.billing.meters.create(params)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        if "dimension_payload_keys" not in f"{getattr(exc, 'param', '')} {exc.user_message}":
            raise prov._fail(exc, "creating the cost meter") from None
        del params["dimension_payload_keys"]
        meter = prov._call(
            "creating the cost meter",
            lambda: client.v1.billing.meters.create(params),  # type: ignore[arg-type]
        )
        step.note = "created without dimensions (this account does not accept them)"
    step.state, step.id = "created", str(meter.id)
    return step


def ensure_cost_price(prov: Provisioner, meter: Step, currency: str, prefix: str) -> Step:
    """The cost meter's price, found by lookup key, created (or replaced) as needed."""
    meter_id = meter.id or PENDING_ID
    spec = cost_price_spec(meter_id, currency, prefix)
    if prov.client is None:
        return prov._step(Step("price", spec.lookup_key, spec.describe, "unchecked"))
    client = prov.client
    existing = prov._call(
        "looking up the cost price",
        lambda: [
            _as_dict(p)
            for p in client.v1.prices.list(
                {"lookup_keys": [spec.lookup_key], "limit": 1}
            ).auto_paging_iter()
        ],
    )
    return prov._price(spec, existing[0] if existing else None, meter_id)
