"""`stripe-token-meter reconcile`: compare delivered usage with Stripe's event summaries.

Why: the outbox knows what Stripe answered 2xx to; only Stripe's summaries say what it
will bill. Differences are printed per customer and hour with their likely cause; the
exit code makes it a scheduled check (see `EXIT_CODES`).
"""

from __future__ import annotations

import argparse
from typing import Any

import stripe

from ..reconcile import PROCESSING_LAG, reconcile
from ._config import load_config
from ._errors import EXIT_FAILED, EXIT_OK, CliError, stripe_error_message
from ._outbox import open_outbox
from ._output import out, print_json
from ._since import iso, parse_since

EXIT_CODES = (
    "exit codes: 0 no difference older than Stripe's processing lag (recent ones are "
    "listed, not counted); 1 a difference older than the lag, or no meter for the event "
    "name; 2 usage or configuration error"
)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reconcile",
        parents=parents,
        help="compare what the outbox delivered per customer and hour with Stripe's "
        "event summaries",
        description="Sum the delivered events per customer and hour (by event timestamp) "
        "and compare with GET /v1/billing/meters/{id}/event_summaries "
        "(value_grouping_window=hour). Stripe aggregates asynchronously; a window that "
        f"ended less than --lag ago (default {PROCESSING_LAG / 3600:g} h, an assumption: "
        "Stripe gives no figure) is reported as recent and does not fail the check.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--since",
        type=parse_since,
        default=parse_since("48h"),
        metavar="WHEN",
        help="from this time (24h, 7d, 2025-01-31; default 48h), rounded down to the hour",
    )
    p.add_argument("--customer", metavar="CUS_ID", help="only this customer")
    p.add_argument(
        "--lag",
        type=float,
        default=PROCESSING_LAG,
        metavar="SECONDS",
        help=f"Stripe's assumed processing lag (default {PROCESSING_LAG:g})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    outbox = open_outbox(cfg, readonly=True)
    client = cfg.client("reconcile")
    try:
        meter, diffs, customers = reconcile(
            outbox, client, cfg.event_name, args.since, args.customer, lag=args.lag
        )
    except stripe.StripeError as exc:
        raise CliError(stripe_error_message(exc, cfg.url, "reading event summaries"), 1) from None
    failing = [d for d in diffs if not d.recent]
    if args.json:
        print_json(
            {
                "meter": meter,
                "event_name": cfg.event_name,
                "since": iso(args.since),
                "customers": customers,
                "differences": [
                    {
                        "customer": d.customer,
                        "hour": iso(d.hour),
                        "delivered": d.ours,
                        "stripe": d.stripe,
                        "recent": d.recent,
                        "cause": d.cause,
                    }
                    for d in diffs
                ],
            }
        )
    else:
        console = out()
        if meter is None:
            console.print(f"No meter in Stripe for event name {cfg.event_name}.", soft_wrap=True)
        else:
            console.print(
                f"Meter {meter} ({cfg.event_name}), {customers} customer(s) since "
                f"{iso(args.since)}: {len(diffs)} difference(s), {len(failing)} older than "
                f"the {args.lag:g} s processing lag.",
                soft_wrap=True,
            )
        for d in diffs:
            console.print(
                f"  {d.customer} {iso(d.hour)}: delivered {d.ours:,}, Stripe {d.stripe:,.0f} "
                f"-- {d.cause}",
                soft_wrap=True,
                markup=False,
            )
    return EXIT_FAILED if failing or meter is None else EXIT_OK
