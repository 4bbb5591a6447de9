"""The pre-call hook's contract: what `TokenMeter(guard=...)` accepts.

Adapters ask `TokenMeter.before_call(customer_id, model=...)` before the provider is
called. The meter asks its guard, which either refuses (raises `CreditExhausted`) or
returns a `Hold`: the call's reservation, released by the adapter when the call ends
(answered, failed or cancelled). `CreditGuard` is the package's guard; any object with
this shape works, e.g. a guard backed by the user's own ledger.

A guard may also have these methods, which the meter calls when present:

- `bind(binding: GuardBinding) -> None`: once, when the meter is built: where the meter
  keeps usage, how cost is metered, how to reach Stripe.
- `record_cost(customer_id: str, micros: int) -> None`: on the worker thread, each time a
  priced call's cost event is built (marked-up cost in micro-units of the currency).
- `close() -> None`: when the meter closes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import stripe


class Hold(Protocol):
    """A call in flight, counted against the customer's credit until released."""

    def release(self) -> None:
        """End the reservation; called once, whatever the call's outcome. Never raises."""


class Guard(Protocol):
    """Decides, before a call, whether its customer may still spend."""

    def reserve(self, customer_id: str, model: str | None) -> Hold | None:
        """Raise `CreditExhausted` to refuse; return a `Hold` (or None) to allow.

        Runs on the caller's thread just before the provider call, so it must answer from
        memory (a cache refreshed in the background), never wait on the network.
        """
        ...


@dataclass(frozen=True, slots=True)
class GuardBinding:
    """What a meter tells its guard: where its usage is kept, how cost is metered."""

    outbox: str | os.PathLike[str] | None
    """The meter's `outbox_path` (None: the default per-user file)."""
    cost_event_name: str | None
    """The cost events' name; None when the meter has no `pricing` (no cost is known)."""
    currency: str
    """The pricing's currency (lowercase ISO code), "usd" without pricing."""
    api_key: str | None = field(repr=False)
    """Never shown by `repr()`: a guard that logs its binding must not log the key."""
    api_base: str | None
    stripe_client: stripe.StripeClient | None
