"""Pre-aggregation: one event per (customer, model, token type, dimensions, window).

Stripe's guide advises summing token counts before sending, and it is the way around v1's
one concurrent call per customer per meter and the 25 requests/s of test keys. Each call
still counts exactly once: the outbox keeps every call's identifier and refuses a repeat,
and sums calls into a window row in the same transaction that stores the journal's
progress (`outbox_windows.py`), so a crash at any moment leaves exact sums.

A window closes `grace` seconds after its end and becomes one ordinary event whose
identifier is derived from (event name, customer, model, token type, dimensions, window
start, generation): a resend is deduplicated by Stripe. A call arriving after its window
was closed goes into the next generation of that window, a separate event with its own
identifier, timestamped at the same window start: never lost, never doubled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Final

from .errors import ConfigurationError

MAX_WINDOW: Final = 86_400
"""A day: a window's events carry its start as their timestamp, and Stripe accepts
timestamps up to 35 days old; longer windows would also hold usage back for too long."""
DEFAULT_GRACE: Final = 2.0
"""Seconds a window stays open after its end, for records still on their way (a journal
read a moment later, a clock a little behind). A later record is not lost: it goes into
the window's next generation, one more event."""


@dataclass(frozen=True, slots=True)
class Aggregation:
    """How calls are summed: window length and grace in seconds, and the payload key
    that carries the value (it is left out of the window's key)."""

    seconds: int
    grace: float
    value_key: str

    def start(self, timestamp: int) -> int:
        return timestamp - timestamp % self.seconds


def check_aggregate_seconds(value: object, source: str = "aggregate_seconds") -> int | None:
    """None (per-call events) or a whole number of seconds from 1 to a day."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ConfigurationError(
                f"{source}: expected a whole number of seconds, got {value!r:.40}"
            ) from None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or value != int(value)
        or not 1 <= value <= MAX_WINDOW
    ):
        raise ConfigurationError(
            f"{source}: must be a whole number of seconds from 1 to {MAX_WINDOW} (a day), "
            f"got {value!r:.40}; leave it unset for one event per call"
        )
    return int(value)


def aggregate_from_env() -> int | None:
    return check_aggregate_seconds(
        os.environ.get("STRIPE_AGGREGATE_SECONDS"), "STRIPE_AGGREGATE_SECONDS"
    )


def window_identifier(
    event_name: str, customer_id: str, model: str, token_type: str, key: str, start: int, gen: int
) -> str:
    """`stmw_<start>_<gen>_<sha256 of the window's key>` (at most 100 bytes, as Stripe
    requires): the same window always gets the same identifier, so a resend is a duplicate."""
    material = json.dumps([event_name, customer_id, model, token_type, key, start, gen])
    digest = hashlib.sha256(material.encode("utf-8")).hexdigest()[:56]
    return f"stmw_{start}_{gen}_{digest}"


def summed_call_message(window_status: str, window_identifier: str | None) -> str:
    """Why `cancel` refuses one call that was summed into a window (both backends)."""
    where = (
        "that is still open" if window_status == "open" else f"sent as event {window_identifier}"
    )
    return (
        f"this call was summed into an aggregation window {where}; one call inside a window "
        "cannot be taken out. Cancel the whole window's event once it is sent "
        "(`stripe-token-meter cancel <its identifier>`, within Stripe's 24 h) and record the "
        "other calls again, or credit the customer in Stripe"
    )
