"""Assertion helpers over what FakeStripe accepted."""

from __future__ import annotations

import time
from typing import Any

from stripe_token_meter.events import MeterEvent


def event_tuples(fake: Any) -> list[tuple[str, str, str, int]]:
    """(customer, model, token_type, value) of every event FakeStripe accepted, sorted."""
    return sorted(
        (e.customer, e.payload["model"], e.payload["token_type"], e.value) for e in fake.events()
    )


def stored_event(
    request_id: str,
    *,
    event_name: str = "token-billing-tokens",
    customer: str = "cus_known",
    value: int = 1,
    timestamp: int | None = None,
) -> MeterEvent:
    """An input-token event as the meter stores it, for seeding an outbox directly."""
    return MeterEvent(
        identifier=f"{request_id}:input:{event_name}",
        event_name=event_name,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        customer_id=customer,
        model="openai/gpt-4o",
        token_type="input",
        value=value,
        payload={
            "stripe_customer_id": customer,
            "value": str(value),
            "model": "openai/gpt-4o",
            "token_type": "input",
        },
    )
