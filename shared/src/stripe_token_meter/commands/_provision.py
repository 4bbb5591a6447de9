"""Idempotent creation of the meter, product, prices and customers (the seed's steps 1-3).

Why separate from `setup`: `demo` provisions the same objects. Every object is looked up
before it is created (meter by event_name, product by id, prices by lookup key, customers
by email), so running it twice creates nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import stripe

from ._config import Config
from ._errors import EXIT_FAILED, EXIT_USAGE, CliError, stripe_error_message
from .pricing import PriceSpec, Pricing, PricingModel, price_specs

T = TypeVar("T")

DIMENSIONS = ("model", "token_type")
PENDING_ID = "(new)"


@dataclass
class Step:
    """One object of the plan and what happened to it."""

    kind: str
    name: str
    detail: str
    state: str
    """exists | create | created | reactivate | reactivated | differs | replaced | unchecked |
    skipped | failed"""
    id: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
            "state": self.state,
            "id": self.id,
            "note": self.note,
        }


@dataclass(frozen=True)
class Options:
    """What to provision; defaults match TokenMeter's payload keys."""

    pricing: Pricing = field(default_factory=Pricing)
    models: tuple[PricingModel, ...] = ("payg",)
    product_id: str = "stm_llm_tokens"
    product_name: str = "LLM tokens"
    lookup_prefix: str | None = None
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"
    replace_prices: bool = False

    def prefix(self, event_name: str) -> str:
        return self.lookup_prefix or f"stm.{event_name}"


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def price_differences(
    existing: dict[str, Any], spec: PriceSpec, meter_id: str, product: str
) -> list[str]:
    """Which terms of an existing price differ from what we would create (empty: same)."""
    want = spec.params
    out: list[str] = []
    if not existing.get("active", True):
        out.append("inactive")
    if existing.get("product") != product:
        out.append(f"product {existing.get('product')}")
    if str(existing.get("currency", "")).lower() != want["currency"]:
        out.append(f"currency {existing.get('currency')}")
    have_rec = existing.get("recurring") or {}
    want_rec = want.get("recurring") or {}
    for key in ("interval", "usage_type"):
        if have_rec.get(key) != want_rec.get(key):
            out.append(f"recurring.{key} {have_rec.get(key)}")
    if want_rec.get("usage_type") == "metered" and have_rec.get("meter") != meter_id:
        out.append(f"meter {have_rec.get('meter')}")
    if "unit_amount" in want and existing.get("unit_amount") != want["unit_amount"]:
        out.append(f"unit_amount {existing.get('unit_amount')}")
    if "unit_amount_decimal" in want:
        have = _dec(existing.get("unit_amount_decimal") or existing.get("unit_amount"))
        if have != Decimal(want["unit_amount_decimal"]):
            out.append(f"unit_amount_decimal {have}")
    if "tiers" in want:
        have_tiers = [
            (t.get("up_to"), _dec(t.get("unit_amount_decimal") or t.get("unit_amount") or 0))
            for t in existing.get("tiers") or []
        ]
        want_tiers = [
            (
                None if t["up_to"] == "inf" else t["up_to"],
                _dec(t.get("unit_amount_decimal") or t.get("unit_amount") or 0),
            )
            for t in want["tiers"]
        ]
        if have_tiers != want_tiers or existing.get("tiers_mode") != want.get("tiers_mode"):
            out.append("tiers")
    return out


class Provisioner:
    """Looks up, then (unless `dry_run`) creates; every call's failure is one line."""

    def __init__(
        self, client: stripe.StripeClient | None, cfg: Config, opts: Options, *, dry_run: bool
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.opts = opts
        self.dry_run = dry_run
        self.steps: list[Step] = []
        self.meter_id: str | None = None
        self.price_ids: dict[str, str] = {}
        self.customer_ids: dict[str, str] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def _fail(self, exc: stripe.StripeError, doing: str) -> CliError:
        """Connection and key problems are usage errors (2); API refusals are failures (1)."""
        hard = isinstance(
            exc, (stripe.APIConnectionError, stripe.AuthenticationError, stripe.PermissionError)
        )
        return CliError(
            stripe_error_message(exc, self.cfg.url, doing), EXIT_USAGE if hard else EXIT_FAILED
        )

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.StripeError as exc:
            raise self._fail(exc, doing) from None

    def _step(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    @property
    def _c(self) -> stripe.StripeClient:
        assert self.client is not None
        return self.client

    # -- step 1: the meter ------------------------------------------------------------------

    def ensure_meter(self) -> Step:
        o, name = self.opts, self.cfg.event_name
        detail = (
            f"sum of payload '{o.value_key}', customer by_id on '{o.customer_key}', "
            f"dimensions {', '.join(DIMENSIONS)}"
        )
        if self.client is None:
            return self._step(Step("meter", name, detail, "unchecked"))
        found = self._call(
            "listing meters",
            lambda: [
                _as_dict(m)
                for m in self._c.v1.billing.meters.list({"limit": 100}).auto_paging_iter()
            ],
        )
        same = [m for m in found if m.get("event_name") == name]
        active = next((m for m in same if m.get("status") == "active"), None)
        if active is not None:
            self.meter_id = str(active["id"])
            return self._step(
                Step("meter", name, detail, "exists", self.meter_id, self._meter_note(active))
            )
        if same:
            inactive = same[0]
            step = self._step(Step("meter", name, detail, "reactivate", str(inactive["id"])))
            self.meter_id = step.id
            if not self.dry_run:
                self._call(
                    f"reactivating meter {inactive['id']}",
                    lambda: self._c.v1.billing.meters.reactivate(str(inactive["id"])),
                )
                step.state = "reactivated"
            return step
        step = self._step(Step("meter", name, detail, "create", PENDING_ID))
        if not self.dry_run:
            step.id, step.note = self._create_meter()
            step.state = "created"
            self.meter_id = step.id
        return step

    def _meter_note(self, meter: dict[str, Any]) -> str | None:
        o = self.opts
        problems = []
        if (meter.get("customer_mapping") or {}).get("event_payload_key") != o.customer_key:
            problems.append(
                f"customer key is '{(meter.get('customer_mapping') or {}).get('event_payload_key')}'"
                f" (TokenMeter(customer_payload_key=...) must match)"
            )
        if (meter.get("value_settings") or {}).get("event_payload_key", "value") != o.value_key:
            problems.append(
                f"value key is '{(meter.get('value_settings') or {}).get('event_payload_key')}'"
                f" (TokenMeter(value_payload_key=...) must match)"
            )
        if (meter.get("default_aggregation") or {}).get("formula") != "sum":
            problems.append("aggregation is not sum: token counts would not add up")
        return "; ".join(problems) or None

    def _create_meter(self) -> tuple[str, str | None]:
        o = self.opts
        params: dict[str, Any] = {
            "display_name": "LLM tokens",
            "event_name": self.cfg.event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": o.customer_key},
            "value_settings": {"event_payload_key": o.value_key},
            "dimension_payload_keys": list(DIMENSIONS),
        }
        try:
            meter = self._c.v1.billing.meters.create(params)  # type: ignore[arg-type]
            return str(meter.id), None
        except stripe.StripeError as exc:
            if "dimension_payload_keys" not in f"{getattr(exc, 'param', '')} {exc.user_message}":
                raise self._fail(exc, "creating the meter") from None
        del params["dimension_payload_keys"]
        meter = self._call("creating the meter", lambda: self._c.v1.billing.meters.create(params))  # type: ignore[arg-type]
        return str(meter.id), (
            "this account does not accept dimension_payload_keys: created without dimensions "
            "(model and token_type still travel in every event's payload)"
        )

    # -- step 2: product and prices ---------------------------------------------------------

    def ensure_product(self) -> Step:
        o = self.opts
        step = self._step(Step("product", o.product_id, o.product_name, "unchecked"))
        if self.client is None:
            return step
        try:
            self._c.v1.products.retrieve(o.product_id)
            step.state, step.id = "exists", o.product_id
            return step
        except stripe.StripeError as exc:
            if exc.http_status != 404:
                raise self._fail(exc, "looking up the product") from None
        step.state, step.id = "create", o.product_id
        if not self.dry_run:
            self._call(
                "creating the product",
                lambda: self._c.v1.products.create(
                    {"id": o.product_id, "name": o.product_name, "unit_label": "token"}
                ),
            )
            step.state = "created"
        return step

    def ensure_prices(self) -> list[Step]:
        o = self.opts
        meter_id = self.meter_id or PENDING_ID
        specs = [
            s
            for m in o.models
            for s in price_specs(m, o.pricing, meter_id, o.prefix(self.cfg.event_name))
        ]
        if self.client is None:
            return [self._step(Step("price", s.lookup_key, s.describe, "unchecked")) for s in specs]
        keys = [s.lookup_key for s in specs]
        existing = self._call(
            "looking up prices",
            lambda: {
                str(p["lookup_key"]): p
                for p in (
                    _as_dict(x)
                    for x in self._c.v1.prices.list(
                        {"lookup_keys": keys, "limit": 100, "expand": ["data.tiers"]}
                    ).auto_paging_iter()
                )
            },
        )
        return [self._price(spec, existing.get(spec.lookup_key), meter_id) for spec in specs]

    def _price(self, spec: PriceSpec, existing: dict[str, Any] | None, meter_id: str) -> Step:
        step = self._step(Step("price", spec.lookup_key, spec.describe, "create", PENDING_ID))
        if existing is not None:
            diffs = price_differences(existing, spec, meter_id, self.opts.product_id)
            step.id = str(existing["id"])
            if not diffs:
                step.state = "exists"
                self.price_ids[spec.lookup_key] = step.id
                return step
            step.state = "differs"
            step.note = f"the existing price has {', '.join(diffs)}"
            if not self.opts.replace_prices:
                step.note += ": kept; pass --replace-prices to move the lookup key to a new price"
                self.price_ids[spec.lookup_key] = step.id
                return step
        if self.dry_run:
            return step
        params: dict[str, Any] = {
            **spec.params,
            "product": self.opts.product_id,
            "lookup_key": spec.lookup_key,
        }
        if "recurring" in params and params["recurring"].get("meter") == PENDING_ID:
            params["recurring"] = {**params["recurring"], "meter": self.meter_id}
        if existing is not None:
            params["transfer_lookup_key"] = True
        price = self._call(
            f"creating price {spec.lookup_key}",
            lambda: self._c.v1.prices.create(params),  # type: ignore[arg-type]
        )
        step.state = "replaced" if existing is not None else "created"
        step.id = str(price.id)
        self.price_ids[spec.lookup_key] = step.id
        return step

    # -- step 3: customers and subscriptions ------------------------------------------------

    def ensure_customer(self, email: str, name: str | None = None) -> Step:
        step = self._step(Step("customer", email, name or "", "unchecked"))
        if self.client is None:
            return step
        found = self._call(
            f"looking up customer {email}",
            lambda: self._c.v1.customers.list({"email": email, "limit": 1}).data,
        )
        if found:
            step.state, step.id = "exists", str(found[0].id)
        else:
            step.state, step.id = "create", PENDING_ID
            if not self.dry_run:
                params: dict[str, Any] = {
                    "email": email,
                    "metadata": {"created_by": "stripe-token-meter"},
                }
                if name:
                    params["name"] = name
                created = self._call(
                    f"creating customer {email}",
                    lambda: self._c.v1.customers.create(params),  # type: ignore[arg-type]
                )
                step.state, step.id = "created", str(created.id)
        if step.id != PENDING_ID:
            self.customer_ids[email] = step.id
        return step

    def ensure_subscription(self, email: str, model: PricingModel) -> Step:
        """Subscribe a customer to one pricing model's recurring prices (sent invoices, so
        no payment method is needed in a sandbox)."""
        specs = price_specs(model, self.opts.pricing, "", self.opts.prefix(self.cfg.event_name))
        keys = [s.lookup_key for s in specs if "recurring" in s.params]
        step = self._step(Step("subscription", email, f"{model}: {', '.join(keys)}", "unchecked"))
        customer = self.customer_ids.get(email)
        price_ids = [self.price_ids[k] for k in keys if k in self.price_ids]
        if self.client is None or customer is None or len(price_ids) < len(keys):
            step.state = "create" if self.client is not None else "unchecked"
            return step
        try:
            subs = self._c.v1.subscriptions.list(
                {"customer": customer, "price": price_ids[0], "limit": 10}
            ).data
        except stripe.StripeError as exc:
            if exc.http_status != 404:
                raise self._fail(exc, "listing subscriptions") from None
            step.state = "failed"
            step.note = (
                f"{self.cfg.url} has no /v1/subscriptions (FakeStripe): subscribe the customer "
                "in Stripe itself"
            )
            return step
        live = [s for s in subs if s.status not in ("canceled", "incomplete_expired")]
        if live:
            step.state, step.id = "exists", str(live[0].id)
            return step
        step.state = "create"
        if not self.dry_run:
            params: dict[str, Any] = {
                "customer": customer,
                "items": [{"price": p} for p in price_ids],
                "collection_method": "send_invoice",
                "days_until_due": 30,
            }
            sub = self._call(
                f"subscribing {email}",
                lambda: self._c.v1.subscriptions.create(params),  # type: ignore[arg-type]
            )
            step.state, step.id = "created", str(sub.id)
            if model == "credits":
                step.note = "grant the credit pack with client.v1.billing.credit_grants.create(...) when paid"
        return step
