"""A guard for the adapters' refusal tests: a dict of remaining budget, counting what it
was asked and how many holds were released. A collaborator of the code under test (any
object with `reserve` is a guard), not a stand-in for it; CreditGuard has its own tests."""

from __future__ import annotations

from decimal import Decimal

from stripe_token_meter import CreditExhausted


class Budget:
    """Refuses a customer whose remaining budget is at or below zero (or not listed)."""

    def __init__(self, remaining: dict[str, Decimal]) -> None:
        self.remaining = remaining
        self.asked: list[tuple[str, str | None]] = []
        self.released = 0

    def reserve(self, customer_id: str, model: str | None) -> Budget.Slot:
        self.asked.append((customer_id, model))
        left = self.remaining.get(customer_id, Decimal(0))
        if left <= 0:
            raise CreditExhausted(customer_id, left, "usd")
        return Budget.Slot(self)

    class Slot:
        def __init__(self, owner: Budget) -> None:
            self.owner = owner

        def release(self) -> None:
            self.owner.released += 1
