"""The demo's spend-control part: a prepaid customer refused once its credit is spent.

Why: metering alone bills after the fact; this shows the guard stopping a customer before
the provider call that would overspend. A $0.50 credit grant is made through the SDK (so
it works against FakeStripe and a Stripe sandbox alike), a priced `TokenMeter` with
`CreditGuard(source="stripe")` meters LangChain calls of the demo's fake chat model, and
the loop runs until `CreditExhausted`. The numbers are then checked against what Stripe
received: calls allowed, the refused call never reaching the model, the cost events' sum
and how few balance requests the guard needed.

Its tokens go to their own meter (`<event name>-prepaid`), like the burst's, so the
frameworks' received-events table and invoices stay theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..credit_guard import CreditGuard
from ..errors import CreditExhausted
from ..meter import DEFAULT_COST_EVENT_NAME, TokenMeter
from ..pricing import Pricing as TokenPricing
from ..pricing import minor_unit_micros
from ..testing import FakeStripe
from ._config import Config
from ._cost_meter import ensure_cost_meter, ensure_cost_price
from ._demo_calls import CallUsage, FrameworkUnavailable
from ._provision import Provisioner, _as_dict

PREPAID_NAME = "Prepaid Co"
PREPAID_EMAIL = "prepaid@demo.stripe-token-meter.dev"
GRANT_CENTS = 50
"""The credit grant: $0.50, in cents (Stripe's minor unit)."""
CURRENCY = "usd"
PRICED_MODEL = "openai/gpt-4o"
PRICES = {PRICED_MODEL: {"input": "2.50", "output": "10.00"}}
MARKUP_PERCENT = 20
USAGE = CallUsage(1234, 567)
"""What each of the prepaid customer's calls reports: 10,506 micro-dollars with the markup."""
MAX_CALLS = 200
"""The loop's cap: $0.50 buys 48 calls, so a guard that never refuses stops here."""
BALANCE_PATH = ("GET", "/v1/billing/credit_balance_summary")
GRANT_METADATA = {"created_by": "stripe-token-meter demo"}
"""Marks the demo's grants, so a re-run voids them and starts again from $0.50."""


@dataclass
class SpendRun:
    """What the spend-control part did and saw (micro-units: 1 USD = 1,000,000)."""

    customer_id: str
    customer_name: str
    grant_id: str
    grant_minor: int
    """The grant in minor units (cents)."""
    credit_micros: int
    cost_micros: int
    event_name: str
    cost_event_name: str
    currency: str = CURRENCY
    voided_grants: int = 0
    allowed: int = 0
    refused: bool = False
    model_calls: int = 0
    remaining: Decimal | None = None
    cost_events: int = 0
    cost_sum: int = 0
    balance_requests: int = 0
    balance_source: str = "guard"
    """Who counted the balance requests: "FakeStripe" (in-process) or the guard's stats."""
    seconds: float = 0.0
    delivered: bool = True

    @property
    def expected_allowed(self) -> int:
        """Calls whose estimate starts above zero: the first n with n x cost >= credit."""
        return -(-self.credit_micros // self.cost_micros)

    def problems(self) -> list[str]:
        """Every number that does not hold, in words (empty: the demo showed what it says)."""
        out: list[str] = []
        name = self.customer_name
        if not self.refused:
            out.append(f"spend control: {name} was never refused ({self.allowed} calls allowed)")
        elif self.allowed != self.expected_allowed:
            out.append(
                f"spend control: {name} was allowed {self.allowed} calls, expected "
                f"{self.expected_allowed}"
            )
        if self.model_calls != self.allowed:
            out.append(
                f"spend control: the model was called {self.model_calls} times for "
                f"{self.allowed} allowed calls"
            )
        if self.refused and (self.remaining is None or self.remaining > 0):
            out.append(f"spend control: refused with {self.remaining} remaining (expected <= 0)")
        if not self.delivered:
            out.append("spend control: cost events not all delivered within 30 s")
        want = self.allowed * self.cost_micros
        if self.cost_events != self.allowed or self.cost_sum != want:
            out.append(
                f"spend control: Stripe received {self.cost_events} cost events summing "
                f"{self.cost_sum:,} micro-units, expected {self.allowed} summing {want:,}"
            )
        if not 1 <= self.balance_requests <= 2:
            out.append(f"spend control: {self.balance_requests} balance requests, expected 1 or 2")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer_id,
            "name": self.customer_name,
            "credit_grant": self.grant_id,
            "voided_grants": self.voided_grants,
            "currency": self.currency,
            "credit_minor": self.grant_minor,
            "credit_micros": self.credit_micros,
            "cost_per_call_micros": self.cost_micros,
            "event_name": self.event_name,
            "cost_event_name": self.cost_event_name,
            "allowed": self.allowed,
            "expected_allowed": self.expected_allowed,
            "refused": self.refused,
            "model_calls": self.model_calls,
            "remaining": None if self.remaining is None else str(self.remaining),
            "cost_events": self.cost_events,
            "cost_sum_micros": self.cost_sum,
            "balance_requests": self.balance_requests,
            "balance_requests_counted_by": self.balance_source,
            "seconds": round(self.seconds, 3),
            "ok": not self.problems(),
        }


def run_spend(
    prov: Provisioner, target: Config, key: str, fake: FakeStripe | None
) -> SpendRun | str:
    """Run the spend-control part; a string says why it was skipped (no langchain-stripe)."""
    try:
        model_class, handler_class = _langchain()
    except FrameworkUnavailable as exc:
        return str(exc)
    except ImportError as exc:  # langchain-core there, langchain-stripe not
        return f"{exc.name or exc}: pip install langchain-stripe"
    started = time.perf_counter()
    spend_cfg = dataclasses.replace(target, event_name=f"{target.event_name}-prepaid")
    sp = Provisioner(prov.client, spend_cfg, prov.opts, dry_run=False)
    sp.ensure_meter()
    cost_meter = ensure_cost_meter(sp, DEFAULT_COST_EVENT_NAME)  # before any cost event
    prefix = sp.opts.lookup_prefix or f"stm.{DEFAULT_COST_EVENT_NAME}"
    ensure_cost_price(sp, cost_meter, CURRENCY, prefix)
    step = sp.ensure_customer(PREPAID_EMAIL, PREPAID_NAME)
    assert step.id is not None
    customer_id = step.id
    voided = _void_demo_grants(sp, customer_id)
    grant = sp._call(
        f"granting credit to {customer_id}",
        lambda: sp._c.v1.billing.credit_grants.create(
            {
                "customer": customer_id,
                "name": "stripe-token-meter demo: prepaid credit",
                "category": "paid",
                "amount": {
                    "type": "monetary",
                    "monetary": {"currency": CURRENCY, "value": GRANT_CENTS},
                },
                "applicability_config": {"scope": {"price_type": "metered"}},
                "metadata": GRANT_METADATA,
            }
        ),
    )
    pricing = TokenPricing(PRICES, markup_percent=MARKUP_PERCENT, currency=CURRENCY)
    cost = pricing.cost_micros(
        PRICED_MODEL, input_tokens=USAGE.prompt_tokens, output_tokens=USAGE.completion_tokens
    )
    assert cost is not None
    run = SpendRun(
        customer_id=customer_id,
        customer_name=PREPAID_NAME,
        grant_id=str(grant.id),
        grant_minor=GRANT_CENTS,
        credit_micros=GRANT_CENTS * minor_unit_micros(CURRENCY),
        cost_micros=cost,
        event_name=spend_cfg.event_name,
        cost_event_name=DEFAULT_COST_EVENT_NAME,
        voided_grants=voided,
    )
    guard = CreditGuard(source="stripe")
    model = model_class(usage=USAGE)
    with tempfile.TemporaryDirectory(prefix="stripe-token-meter-spend-") as tmp:
        meter = TokenMeter(
            api_key=key,
            api_base=target.api_base,
            event_name=spend_cfg.event_name,
            outbox_path=Path(tmp) / "outbox.sqlite3",
            api=target.api,
            pricing=pricing,
            cost_event_name=DEFAULT_COST_EVENT_NAME,
            guard=guard,
        )
        try:
            config: Any = {"callbacks": [handler_class(meter, customer_id=customer_id)]}
            with _quiet_refusals():
                run.allowed, run.refused, run.remaining = _until_refused(model, config)
            run.model_calls = model.invocations
            run.delivered = meter.flush(timeout=30.0)
            run.cost_events, run.cost_sum = _cost_received(meter, run, fake)
        finally:
            meter.close(timeout=5.0)
    run.balance_requests = guard.stats().get("requests", 0)
    if fake is not None:
        run.balance_requests, run.balance_source = fake.requests[BALANCE_PATH], "FakeStripe"
    run.seconds = time.perf_counter() - started
    return run


def _until_refused(model: Any, config: Any) -> tuple[int, bool, Decimal | None]:
    """(calls allowed, refused?, the guard's remaining when it refused): call the model
    until the guard says the credit is spent, at most `MAX_CALLS` times."""
    allowed = 0
    for _ in range(MAX_CALLS):
        try:
            model.invoke("Summarise this support ticket.", config=config)
        except CreditExhausted as exc:
            return allowed, True, exc.remaining
        allowed += 1
    return allowed, False, None


class _DropRefusals(logging.Filter):
    """LangChain logs every callback error as a warning, even one it re-raises on purpose:
    the refusal is the demo's expected outcome, reported in its own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, str) and a.startswith("CreditExhausted(") for a in args)


@contextlib.contextmanager
def _quiet_refusals() -> Iterator[None]:
    """Drop LangChain's warning about the refusal while the loop runs (nothing else)."""
    logger = logging.getLogger("langchain_core.callbacks.manager")
    flt = _DropRefusals()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def _langchain() -> tuple[Any, Any]:
    """(a counting `DemoChatModel` class, `StripeCallbackHandler`); imported here, not at
    module level, so the demo runs without LangChain and says why this part was skipped."""
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import ChatResult
    from langchain_stripe import StripeCallbackHandler

    from .demo_langchain import PLAIN_MODEL, DemoChatModel

    class CountingChatModel(DemoChatModel):
        """The demo's chat model, counting its invocations: a refused call never gets here."""

        model_name: str = PLAIN_MODEL
        invocations: int = 0

        def _generate(
            self,
            messages: list[BaseMessage],
            stop: list[str] | None = None,
            run_manager: CallbackManagerForLLMRun | None = None,
            **kwargs: Any,
        ) -> ChatResult:
            self.invocations += 1
            return super()._generate(messages, stop, run_manager, **kwargs)

    return CountingChatModel, StripeCallbackHandler


def _void_demo_grants(sp: Provisioner, customer_id: str) -> int:
    """Void the grants an earlier demo run made, so this run starts from $0.50 again."""
    client = sp._c
    grants = sp._call(
        f"listing credit grants of {customer_id}",
        lambda: list(
            client.v1.billing.credit_grants.list(
                {"customer": customer_id, "limit": 100}
            ).auto_paging_iter()
        ),
    )
    voided = 0
    for grant in grants:
        g = _as_dict(grant)
        created_by = (g.get("metadata") or {}).get("created_by")
        if g.get("voided_at") is None and created_by == GRANT_METADATA["created_by"]:
            grant_id = str(g["id"])
            sp._call(
                f"voiding credit grant {grant_id}",
                functools.partial(client.v1.billing.credit_grants.void_grant, grant_id),
            )
            voided += 1
    return voided


def _cost_received(meter: TokenMeter, run: SpendRun, fake: FakeStripe | None) -> tuple[int, int]:
    """(events, summed value) of the customer's cost events: FakeStripe's own record when
    it runs in this process, else what Stripe acknowledged (the outbox's deliveries)."""
    if fake is not None:
        values = [
            e.value for e in fake.events(customer=run.customer_id, event_name=run.cost_event_name)
        ]
        return len(values), sum(values)
    # this run's own outbox: every delivered cost event in it is this run's
    rows = meter._outbox.delivered_per_customer_hour(run.cost_event_name, 0.0, run.customer_id)
    return sum(n for _, _, _, n in rows), sum(v for _, _, v, _ in rows)


__all__ = ["PREPAID_EMAIL", "PREPAID_NAME", "SpendRun", "run_spend"]
