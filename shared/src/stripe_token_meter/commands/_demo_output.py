"""The demo's result: what Stripe received, delivery rate, invoices; as tables or JSON.

Why separate: `demo.py` runs things; this decides what counts as "received" (FakeStripe's
own record when it runs in-process, else what Stripe acknowledged) and checks it against
the outbox, so the printed totals are the ones Stripe bills.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from ..storage import OutboxStore
from ..testing import FakeStripe
from ._demo_calls import FrameworkRun
from ._output import out
from .demo_spend import SpendRun
from .pricing import Invoice, Pricing, decimal_str, fmt_money, fmt_rate, invoice

Line = tuple[str, str, str]
"""(customer, model, token_type)"""


@dataclass
class DemoResult:
    """Everything the demo did and saw."""

    mode: str  # "fake" (in-process FakeStripe) | "external" (--api-base) | "stripe" (sandbox)
    url: str
    api: str
    event_name: str
    pricing: Pricing
    outbox: str | None = None
    meter_id: str | None = None
    prices: dict[str, str] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)
    frameworks: dict[str, str] = field(default_factory=dict)
    runs: list[FrameworkRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    received: dict[Line, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    first_call: float | None = None
    last_call: float | None = None
    delivered_at: float | None = None
    throughput: dict[str, Any] | None = None
    spend: SpendRun | None = None
    spend_skipped: str | None = None
    """Why the spend-control part did not run (langchain-stripe missing); None if it ran
    or `--no-spend` was given."""
    seconds: float = 0.0

    def describe_target(self) -> str:
        if self.mode == "fake":
            return f"FakeStripe in this process at {self.url}"
        if self.mode == "external":
            return f"{self.url} (--api-base)"
        return "your Stripe sandbox (test mode)"

    # -- gathering --------------------------------------------------------------------------

    def collect(self, outbox: OutboxStore, fake: FakeStripe | None) -> None:
        """Read what was delivered; with an in-process FakeStripe, what it accepted."""
        delivered: dict[Line, tuple[int, int]] = outbox.delivered_totals()
        if fake is None:
            self.received = delivered
        else:
            got: dict[Line, tuple[int, int]] = {}
            for e in fake.events(event_name=self.event_name):
                key = (e.customer, e.payload.get("model", ""), e.payload.get("token_type", ""))
                n, v = got.get(key, (0, 0))
                got[key] = (n + 1, v + e.value)
            self.received = got
            if got != delivered:
                self.problems.append(
                    "FakeStripe's accepted events differ from the outbox's deliveries"
                )
            for report in fake.error_reports:
                if report.get("event_name") == self.event_name:
                    self.problems.append(
                        f"FakeStripe reported {report.get('code')}: {report.get('message')}"
                    )
        counts = outbox.counts()
        for status, what in (
            ("pending", "still pending"),
            ("dead", "dead-lettered"),
            ("rejected", "rejected"),
        ):
            if counts[status]:
                self.problems.append(
                    f"{counts[status]} event(s) {what}: see `stripe-token-meter status`"
                )

    # -- derived ----------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.runs)

    @property
    def events(self) -> int:
        return sum(n for n, _ in self.received.values())

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(self.customers, 0)
        for (customer, _, _), (_, value) in self.received.items():
            out[customer] = out.get(customer, 0) + value
        return out

    def invoices(self) -> dict[str, Invoice]:
        return {c: invoice(t, self.pricing) for c, t in self.totals().items()}

    def delivery_seconds(self) -> float | None:
        """From the first LLM call to the last event accepted (framework time included)."""
        if self.first_call is None or self.delivered_at is None:
            return None
        return self.delivered_at - self.first_call

    def lag_seconds(self) -> float | None:
        """From the last LLM call returning to everything accepted by Stripe."""
        if self.last_call is None or self.delivered_at is None:
            return None
        return max(0.0, self.delivered_at - self.last_call)

    def to_json(self) -> dict[str, Any]:
        secs = self.delivery_seconds()
        lag = self.lag_seconds()
        totals = self.totals()
        p = self.pricing
        return {
            "mode": self.mode,
            "stripe": self.url,
            "api": self.api,
            "event_name": self.event_name,
            "meter_id": self.meter_id,
            "prices": self.prices,
            "outbox": self.outbox,
            "customers": [
                {
                    "id": cid,
                    "name": name,
                    "framework": self.frameworks.get(cid),
                    "tokens": totals.get(cid, 0),
                    "events": sum(n for (c, _, _), (n, _) in self.received.items() if c == cid),
                    "calls": sum(r.calls for r in self.runs if r.customer_id == cid),
                    "streamed": sum(r.streamed for r in self.runs if r.customer_id == cid),
                }
                for cid, name in self.customers.items()
            ],
            "received": [
                {"customer": c, "model": m, "token_type": t, "events": n, "value": v}
                for (c, m, t), (n, v) in sorted(self.received.items())
            ],
            "totals": totals,
            "llm_calls": self.calls,
            "events": self.events,
            "delivery": {
                "events": self.events,
                "seconds": None if secs is None else round(secs, 3),
                "events_per_second": None if not secs else round(self.events / secs, 1),
                "after_last_call_seconds": None if lag is None else round(lag, 3),
            },
            "throughput": self.throughput,
            "pricing": {
                "currency": p.currency,
                "payg_rate": decimal_str(p.payg_rate),
                "fee": decimal_str(p.fee),
                "included": p.included,
                "overage_rate": decimal_str(p.overage_rate),
                "credit_rate": decimal_str(p.credit_rate),
                "credits": decimal_str(p.credits),
            },
            "invoices_cents": {c: inv.to_json() for c, inv in self.invoices().items()},
            "runs": [
                {
                    "framework": r.framework,
                    "customer": r.customer_id,
                    "calls": r.calls,
                    "streamed": r.streamed,
                    "seconds": round(r.seconds, 3),
                    "models": r.models,
                }
                for r in self.runs
            ],
            "skipped": self.skipped,
            "spend": self.spend.to_json()
            if self.spend is not None
            else ({"skipped": self.spend_skipped} if self.spend_skipped else None),
            "problems": self.problems,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
        }


def print_result(r: DemoResult) -> None:
    """Framework runs, the received-events table, delivery rate, invoices, problems."""
    console = out()
    console.print(
        f"[bold]stripe-token-meter demo[/]: {r.describe_target()}, api {r.api}, meter {r.event_name} ({r.meter_id})"
    )
    for run in r.runs:
        console.print(
            f"  {r.frameworks[run.customer_id]:<10} -> {r.customers[run.customer_id]} ({run.customer_id}): "
            f"{run.calls} calls ({run.streamed} streamed) in {run.seconds:.2f} s"
        )
    for name, why in r.skipped.items():
        console.print(f"  [yellow]{name} skipped[/]: {why}")
    _received_table(r)
    secs, lag = r.delivery_seconds(), r.lag_seconds()
    if secs and lag is not None:
        console.print(
            f"Delivery: {r.events:,} meter events from {r.calls} LLM calls, all accepted "
            f"{lag:.2f} s after the last call returned ({secs:.2f} s from the first call: "
            f"{r.events / secs:,.0f} events/s end to end, framework time included)."
        )
    if r.throughput:
        t = r.throughput
        console.print(
            f"Throughput: {t['events']:,} events recorded in {t['record_seconds'] * 1000:.0f} ms and "
            f"delivered in {t['seconds']:.2f} s: [bold]{t['events_per_second']:,} events/s[/] "
            f"({r.api}{' meter event stream, 100 per request' if r.api == 'v2' else ' meter events'})."
        )
    _invoice_table(r)
    if r.mode == "stripe":
        console.print(
            "Stripe aggregates meter events asynchronously: the Dashboard's meter page shows them "
            "within minutes."
        )
    _spend_lines(r)
    for problem in r.problems:
        console.print(f"[red]problem:[/] {problem}", soft_wrap=True)
    console.print(f"[dim]Done in {r.seconds:.1f} s.[/]")


def _received_table(r: DemoResult) -> None:
    title = (
        "What FakeStripe received (its accepted events)"
        if r.mode == "fake"
        else "What Stripe accepted (acknowledged deliveries)"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("customer")
    table.add_column("model")
    table.add_column("token type")
    table.add_column("events", justify="right")
    table.add_column("tokens", justify="right")
    totals = r.totals()
    for cid, name in r.customers.items():
        lines = sorted((k, v) for k, v in r.received.items() if k[0] == cid)
        first = True
        for (_, model, token_type), (n, value) in lines:
            table.add_row(
                f"{name}\n{cid}" if first else "", model, token_type, f"{n:,}", f"{value:,}"
            )
            first = False
        table.add_row(
            "", "", "[bold]total[/]", "", f"[bold]{totals.get(cid, 0):,}[/]", end_section=True
        )
    out().print(table)


def _invoice_table(r: DemoResult) -> None:
    p, cur = r.pricing, r.pricing.currency
    table = Table(title="What each invoice would be this month", title_justify="left")
    table.add_column("customer")
    table.add_column("tokens", justify="right")
    table.add_column(f"pay as you go\n{fmt_rate(p.payg_rate, cur)}/token", justify="right")
    table.add_column(
        f"fixed fee + overage\n{fmt_money(round(p.fee * 100), cur)} incl. {p.included:,},"
        f" then {fmt_rate(p.overage_rate, cur)}",
        justify="right",
    )
    table.add_column(
        f"credit burndown\n{fmt_money(round(p.credits * 100), cur)} prepaid,"
        f" {fmt_rate(p.credit_rate, cur)}/token",
        justify="right",
    )
    for cid, inv in r.invoices().items():
        fixed = fmt_money(inv.fixed_total, cur)
        if inv.overage_tokens:
            fixed += f"\n({inv.overage_tokens:,} over: +{fmt_money(inv.overage, cur)})"
        credits = f"{fmt_money(inv.credits_due, cur)} due"
        credits += f"\n({fmt_money(inv.credits_applied, cur)} from credits, {fmt_money(inv.credits_left, cur)} left)"
        table.add_row(r.customers[cid], f"{inv.tokens:,}", fmt_money(inv.payg, cur), fixed, credits)
    out().print(table)


def _spend_lines(r: DemoResult) -> None:
    """The spend-control part: calls allowed, the refusal, cost at Stripe, balance requests."""
    console = out()
    if r.spend_skipped:
        console.print(f"[yellow]Spend control skipped[/]: {r.spend_skipped}")
    s = r.spend
    if s is None:
        return
    cur = s.currency.upper()
    console.print(
        f"Spend control: {s.customer_name} ({s.customer_id}) has a "
        f"{fmt_money(s.grant_minor, s.currency)} credit grant ({s.grant_id}); each "
        f"LangChain call costs {s.cost_micros:,} micro-{cur} with the markup, counted by "
        f'CreditGuard(source="stripe").'
    )
    refused = (
        f"call {s.allowed + 1} was refused with CreditExhausted before the model was called "
        f"(model invoked {s.model_calls} times), remaining {s.remaining} {cur}"
        if s.refused
        else "no call was refused"
    )
    console.print(f"  {s.allowed} calls allowed; {refused}.")
    console.print(
        f"  Cost events at {'FakeStripe' if r.mode == 'fake' else 'Stripe'}: {s.cost_events}, "
        f"summing {s.cost_sum:,} micro-{cur} ({s.allowed} x {s.cost_micros:,}); "
        f"balance requests: {s.balance_requests}."
    )
