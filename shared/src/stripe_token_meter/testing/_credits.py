"""Billing credits: credit grants and the customer's credit balance summary.

Why: `CreditGuard(source="stripe")` reads `GET /v1/billing/credit_balance_summary`; tests
need grants to read and a count of balance requests. Shapes follow Stripe's API reference
(`billing.credit_grant`, `billing.credit_balance_summary`).

Simplification: FakeStripe never invoices, so usage never consumes credit: the available
(and ledger) balance is the sum of the customer's grants that are not voided, already
effective and not expired, per currency. Only monetary, `price_type=metered` grants exist
(Stripe's only kind today).
"""

from __future__ import annotations

import time
from typing import Any

from stripe_token_meter.testing._model import _Request
from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import (
    invalid,
    missing,
    new_id,
    not_found,
    opt_int,
    opt_str,
    paginate,
    req_str,
    str_dict,
)

_CATEGORIES = ("paid", "promotional")


def _grant_live(grant: dict[str, Any], now: float) -> bool:
    """Counts toward the balance now: not voided, effective, not expired."""
    if grant["voided_at"] is not None:
        return False
    if grant["effective_at"] is not None and grant["effective_at"] > now:
        return False
    return grant["expires_at"] is None or grant["expires_at"] > now


class CreditRoutes(State):
    """`/v1/billing/credit_grants` and `/v1/billing/credit_balance_summary`."""

    _credit_grants: dict[str, dict[str, Any]]
    _credit_events: list[dict[str, Any]]

    def _known_customer(self, cid: str, param: str = "customer") -> None:
        if cid in self._customers or (self.auto_customers and cid.startswith("cus_")):
            return
        raise invalid(f"No such customer: '{cid}'", "resource_missing", param)

    def _make_grant(
        self,
        customer: str,
        value: int,
        currency: str,
        now: float,
        *,
        category: str = "paid",
        name: str | None = None,
        expires_at: int | None = None,
        effective_at: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": new_id("credgr"),
            "object": "billing.credit_grant",
            "amount": {
                "monetary": {"currency": currency, "value": value},
                "type": "monetary",
            },
            "applicability_config": {"scope": {"price_type": "metered", "prices": None}},
            "category": category,
            "created": int(now),
            "customer": customer,
            "customer_account": None,
            "effective_at": int(now) if effective_at is None else effective_at,
            "expires_at": expires_at,
            "livemode": False,
            "metadata": metadata or {},
            "name": name,
            "priority": 50,
            "test_clock": None,
            "updated": int(now),
            "voided_at": None,
        }
        self._credit_grants[obj["id"]] = obj
        return obj

    def _h_credit_grant_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        customer = req_str(p, "customer")
        self._known_customer(customer)
        amount = p.get("amount")
        if not isinstance(amount, dict):
            raise missing("amount")
        if amount.get("type") != "monetary":
            raise invalid(
                "Invalid amount[type]: must be one of monetary",
                "parameter_invalid_string",
                "amount[type]",
            )
        monetary = amount.get("monetary")
        if not isinstance(monetary, dict):
            raise missing("amount[monetary]")
        currency = req_str(monetary, "currency").lower()
        value = opt_int(monetary, "value")
        if value is None:
            raise missing("amount[monetary][value]")
        if value <= 0:
            raise invalid(
                "amount[monetary][value] must be a positive integer.",
                "parameter_invalid_integer",
                "amount[monetary][value]",
            )
        config = p.get("applicability_config")
        scope = config.get("scope") if isinstance(config, dict) else None
        if not isinstance(scope, dict):
            raise missing("applicability_config")
        if scope.get("price_type") != "metered":
            raise invalid(
                "Invalid applicability_config[scope][price_type]: must be one of metered",
                "parameter_invalid_string",
                "applicability_config[scope][price_type]",
            )
        category = opt_str(p, "category") or "paid"
        if category not in _CATEGORIES:
            raise invalid(
                "Invalid category: must be one of paid or promotional",
                "parameter_invalid_string",
                "category",
            )
        obj = self._make_grant(
            customer,
            value,
            currency,
            req.now,
            category=category,
            name=opt_str(p, "name"),
            expires_at=opt_int(p, "expires_at"),
            effective_at=opt_int(p, "effective_at"),
            metadata=str_dict(p.get("metadata"), "metadata"),
        )
        self._credit_grant_event(obj, req.now)
        return 200, obj

    def _credit_grant_event(self, grant: dict[str, Any], now: float) -> None:
        """Keep a `billing.credit_grant.created` event (as Stripe's webhook would carry)."""
        self._credit_events.append(
            {
                "id": new_id("evt"),
                "object": "event",
                "type": "billing.credit_grant.created",
                "created": int(now),
                "livemode": False,
                "data": {"object": dict(grant)},
            }
        )

    def _h_credit_grant_list(self, req: _Request) -> tuple[int, Any]:
        customer = opt_str(req.params, "customer")
        items = [
            g
            for g in reversed(self._credit_grants.values())
            if customer is None or g["customer"] == customer
        ]
        return 200, paginate(items, req.params, "/v1/billing/credit_grants")

    def _h_credit_grant_retrieve(self, req: _Request) -> tuple[int, Any]:
        obj = self._credit_grants.get(req.args[0])
        if obj is None:
            raise not_found("credit grant", req.args[0])
        return 200, obj

    def _h_credit_grant_void(self, req: _Request) -> tuple[int, Any]:
        obj = self._credit_grants.get(req.args[0])
        if obj is None:
            raise not_found("credit grant", req.args[0])
        if obj["voided_at"] is not None:
            raise invalid("This credit grant has already been voided.", None, None)
        obj["voided_at"] = obj["updated"] = int(req.now)
        return 200, obj

    def _h_credit_balance_summary(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        customer = opt_str(p, "customer")
        if not customer:
            raise missing("customer")
        flt = p.get("filter")
        if not isinstance(flt, dict):
            raise missing("filter")
        kind = flt.get("type")
        if kind not in ("applicability_scope", "credit_grant"):
            raise invalid(
                "Invalid filter[type]: must be one of applicability_scope or credit_grant",
                "parameter_invalid_string",
                "filter[type]",
            )
        self._known_customer(customer)
        grants = [g for g in self._credit_grants.values() if g["customer"] == customer]
        if kind == "credit_grant":
            grant_id = flt.get("credit_grant")
            if not isinstance(grant_id, str) or not grant_id:
                raise missing("filter[credit_grant]")
            grants = [g for g in grants if g["id"] == grant_id]
        else:
            scope = flt.get("applicability_scope")
            if not isinstance(scope, dict) or scope.get("price_type") != "metered":
                raise missing("filter[applicability_scope][price_type]")
        totals: dict[str, int] = {}
        for g in grants:
            if _grant_live(g, req.now):
                money = g["amount"]["monetary"]
                totals[money["currency"]] = totals.get(money["currency"], 0) + money["value"]
        balances = [
            {
                "available_balance": {
                    "monetary": {"currency": cur, "value": value},
                    "type": "monetary",
                },
                "ledger_balance": {
                    "monetary": {"currency": cur, "value": value},
                    "type": "monetary",
                },
            }
            for cur, value in totals.items()
        ]
        return 200, {
            "object": "billing.credit_balance_summary",
            "balances": balances,
            "customer": customer,
            "customer_account": None,
            "livemode": False,
        }

    # ------------------------------------------------------------------ test helpers

    def grant_credit(
        self,
        customer: str,
        value: int,
        currency: str = "usd",
        *,
        category: str = "paid",
        name: str | None = None,
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        """Grant `value` minor units of credit to an existing customer; returns the grant."""
        with self._lock:
            now = time.time()
            self._known_customer(customer)
            obj = self._make_grant(
                customer,
                value,
                currency.lower(),
                now,
                category=category,
                name=name,
                expires_at=expires_at,
            )
            self._credit_grant_event(obj, now)
            return dict(obj)

    def credit_grants(self, customer: str | None = None) -> list[dict[str, Any]]:
        """Every grant (of `customer`), oldest first."""
        with self._lock:
            return [
                dict(g)
                for g in self._credit_grants.values()
                if customer is None or g["customer"] == customer
            ]

    def credit_events(self) -> list[dict[str, Any]]:
        """`billing.credit_grant.created` events, as a webhook endpoint would receive them."""
        with self._lock:
            return list(self._credit_events)
