"""`stripe-token-meter report`: usage from the local outbox per customer, model, token type.

Why: before an invoice goes out you want to see what was billed and what was not yet:
delivered to Stripe, still pending, dead-lettered, or only in the local ledger (no key).
Delivered rows are kept for `TokenMeter(retain_delivered=...)` (35 days by default), so
the delivered column covers that window; the other statuses are never deleted.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..errors import InvalidUsage
from ..prepare import COST_TOKEN_TYPE
from ..usage import check_customer
from ._config import load_config
from ._errors import EXIT_OK, CliError
from ._outbox import open_outbox
from ._output import out, print_json
from ._since import iso, parse_since

STATUSES = ("delivered", "pending", "dead", "resolved", "local", "cancelled")
"""Outbox row statuses, in the order shown; `total` sums all but `cancelled`
(`resolved`: dead letters an operator settled with `stripe-token-meter resolve`)."""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        parents=parents,
        help="tokens per customer, model and token type from the local outbox",
        description="Token usage recorded in the local outbox, per customer, model and token "
        "type: delivered to Stripe vs pending vs dead-lettered vs local ledger (no key). "
        "Delivered events are kept for the meter's retain_delivered window (35 days by "
        "default): older ones are no longer counted.",
    )
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="DATE|DURATION",
        help="only calls at or after this time: 2025-01-31, 2025-01-31T12:00:00Z (UTC) or 24h, 7d",
    )
    p.add_argument("--customer", metavar="CUS_ID", help="only this customer")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _blank() -> dict[str, int]:
    return {s: 0 for s in (*STATUSES, "total")}


def _add(into: dict[str, int], status: str, value: int) -> None:
    into[status] = into.get(status, 0) + value
    if status != "cancelled":
        into["total"] += value


def build_report(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Group `(customer, model, token_type, status, events, tokens)` rows into the report.

    Cost events (`TokenMeter(pricing=...)`) carry micro-units of the currency, not tokens:
    they are summed apart, under "costs", and never added to a token total.
    """
    lines: dict[tuple[str, str, str], dict[str, int]] = {}
    customers: dict[str, dict[str, int]] = {}
    costs: dict[tuple[str, str], dict[str, int]] = {}
    totals = _blank()
    events = _blank()
    for customer, model, token_type, status, n, tokens in rows:
        _add(events, str(status), int(n))
        if token_type == COST_TOKEN_TYPE:
            _add(costs.setdefault((str(customer), str(model)), _blank()), str(status), int(tokens))
            continue
        key = (str(customer), str(model), str(token_type))
        _add(lines.setdefault(key, _blank()), str(status), int(tokens))
        _add(customers.setdefault(str(customer), _blank()), str(status), int(tokens))
        _add(totals, str(status), int(tokens))
    return {
        "rows": [
            {"customer": c, "model": m, "token_type": t, **v}
            for (c, m, t), v in sorted(lines.items())
        ],
        "customers": dict(sorted(customers.items())),
        "costs": [{"customer": c, "model": m, **v} for (c, m), v in sorted(costs.items())],
        "totals": totals,
        "events": events,
    }


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.customer:
        try:
            check_customer("--customer", args.customer)
        except InvalidUsage as exc:
            raise CliError(f"--customer: {exc.message}") from None
    outbox = open_outbox(cfg, readonly=True)
    rows = outbox.report_rows(since=args.since, customer=args.customer or None)
    rejected = outbox.rejected_count(since=args.since, customer=args.customer or None)
    report = build_report(rows)
    report.update(
        outbox=cfg.outbox_label,
        since=iso(args.since) if args.since is not None else None,
        customer=args.customer,
        rejected_records=rejected,
        apis=outbox.apis(since=args.since, customer=args.customer or None),
    )
    if args.json:
        print_json(report)
    else:
        _print(report)
    return EXIT_OK


def _n(v: int) -> str:
    return f"{v:,}" if v else "[dim]0[/]"


def _print(report: dict[str, Any]) -> None:
    console = out()
    scope = []
    if report["since"]:
        scope.append(f"since {report['since']}")
    if report["customer"]:
        scope.append(f"customer {report['customer']}")
    title = f"Tokens in {report['outbox']}" + (f" ({', '.join(scope)})" if scope else "")
    if not report["rows"]:
        console.print(f"{title}: nothing recorded.")
        return
    table = Table(title=title, title_justify="left", show_footer=True)
    # Ids and model names are shown whole, folded onto more lines if the terminal is narrow.
    table.add_column("customer", footer="total", overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("token type")
    totals = report["totals"]
    # Statuses with no tokens in scope are left out: room for the names on narrow terminals.
    shown = [s for s in STATUSES if totals[s]] + ["total"]
    for status in shown:
        table.add_column(status, justify="right", footer=f"{totals[status]:,}", no_wrap=True)
    last = None
    for r in report["rows"]:
        if last is not None and r["customer"] != last:
            table.add_section()
        table.add_row(
            r["customer"] if r["customer"] != last else "",
            r["model"],
            r["token_type"],
            *(_n(r[s]) for s in shown),
        )
        last = r["customer"]
    console.print(table)
    if report["costs"]:
        cost = Table(
            title="Cost (micro-units of the pricing's currency: 1,000,000 = 1 USD)",
            title_justify="left",
        )
        cost.add_column("customer", overflow="fold")
        cost.add_column("model", overflow="fold")
        for status in shown:
            cost.add_column(status, justify="right", no_wrap=True)
        for r in report["costs"]:
            cost.add_row(r["customer"], r["model"], *(_n(r[s]) for s in shown))
        console.print(cost)
    ev = report["events"]
    console.print(
        "events: "
        + ", ".join(f"{ev[s]:,} {s}" for s in STATUSES if ev[s])
        + "."
        + (
            f" {report['rejected_records']:,} usage record(s) rejected before becoming events:"
            " see `stripe-token-meter status`."
            if report["rejected_records"]
            else ""
        )
    )
    if report["apis"]:
        console.print(
            "sent with api "
            + ", ".join(f"{a} ({n:,} events)" for a, n in sorted(report["apis"].items()))
            + " (unknown: recorded before the outbox kept it).",
            soft_wrap=True,
        )
    if totals["local"]:
        console.print(
            "[yellow]local[/] rows were recorded without an API key (local ledger) and are never "
            "sent to Stripe."
        )
