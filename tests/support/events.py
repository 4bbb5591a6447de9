"""Assertion helpers over what FakeStripe accepted."""

from __future__ import annotations

from typing import Any


def event_tuples(fake: Any) -> list[tuple[str, str, str, int]]:
    """(customer, model, token_type, value) of every event FakeStripe accepted, sorted."""
    return sorted(
        (e.customer, e.payload["model"], e.payload["token_type"], e.value) for e in fake.events()
    )
