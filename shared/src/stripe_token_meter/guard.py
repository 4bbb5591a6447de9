"""The pre-call hook's contract: what `TokenMeter(guard=...)` accepts.

Adapters ask `TokenMeter.before_call(customer_id, model=...)` before the provider is
called. The meter asks its guard, which either refuses (raises `CreditExhausted`) or
returns a `Hold`: the call's reservation, released by the adapter when the call ends
(answered, failed or cancelled). `CreditGuard` is the package's guard; any object with
this shape works, e.g. a guard backed by the user's own ledger.
"""

from __future__ import annotations

from typing import Protocol


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
