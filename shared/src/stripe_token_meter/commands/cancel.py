"""`stripe-token-meter cancel`: cancel meter events, at Stripe or before they get there.

Why: a call billed by mistake (a test customer, a retry storm in someone else's code) is
undone with a meter event adjustment (Stripe allows 24 hours), and the outbox remembers it
so `report` stops counting the event as billed. An event not sent yet (pending, dead,
local) is withdrawn in the outbox instead, unless a send of it may already be at Stripe.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import stripe

from ..storage import OutboxStore
from ._config import Config, load_config
from ._errors import EXIT_FAILED, EXIT_OK, CliError, redact, stripe_error_message
from ._outbox import open_outbox
from ._output import out, print_json

DAY = 86_400


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cancel",
        parents=parents,
        help="cancel meter events by identifier: at Stripe (within 24 h) or before sending",
        description="Cancel meter events at Stripe with meter event adjustments (type "
        "cancel; Stripe accepts them within 24 hours of the event) and record it in the "
        "outbox; events not delivered yet are withdrawn in the outbox and never sent. A "
        "request id (the part before ':') cancels all its token types.",
    )
    p.add_argument("identifiers", nargs="+", metavar="IDENTIFIER", help="event identifier(s)")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.set_defaults(func=run)


def expand(
    outbox: OutboxStore, ident: str
) -> list[tuple[str, str | None, str | None, float | None]]:
    """`(identifier, event_name, status, delivered_at)` for an identifier or a request id."""
    return outbox.find_events(ident) or [(ident, None, None, None)]


def _cancel_one(
    client: Callable[[], stripe.StripeClient],
    cfg: Config,
    outbox: OutboxStore,
    target: tuple[str, str | None, str | None, float | None],
) -> dict[str, Any]:
    ident, event_name, status, delivered = target
    name = event_name or cfg.event_name
    result: dict[str, Any] = {
        "identifier": ident,
        "event_name": name,
        "status": "failed",
        "error": None,
    }
    if status in ("pending", "dead", "local"):
        # Not at Stripe (as far as the outbox knows): withdrawn here, never sent.
        why = outbox.withdraw(ident)
        if why is None:
            result["status"] = "cancelled"
            result["where"] = "outbox"
        else:
            result["error"] = f"the event is {status} in the outbox and was not withdrawn: {why}"
        return result
    if status == "cancelled":
        result["status"] = "cancelled"
        result["error"] = "already cancelled"
        return result
    try:
        client().v1.billing.meter_event_adjustments.create(
            {"event_name": name, "type": "cancel", "cancel": {"identifier": ident}}
        )
    except (stripe.APIConnectionError, stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise CliError(stripe_error_message(exc, cfg.url, f"cancelling {ident}")) from None
    except stripe.StripeError as exc:
        message = redact(str(exc.user_message or exc))
        if delivered is not None and time.time() - delivered > DAY:
            message += " (Stripe only cancels events within 24 hours; issue a credit note instead)"
        outbox.record_adjustment(ident, name, "failed", message)
        result["error"] = message
        return result
    outbox.record_adjustment(ident, name, "cancelled", None)
    result["status"] = "cancelled"
    result["where"] = "stripe"
    return result


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    client = functools.cache(lambda: cfg.client("cancel"))  # a key only for Stripe's part
    outbox = open_outbox(cfg, must_exist=False)
    targets = [t for ident in args.identifiers for t in expand(outbox, ident)]
    results = [_cancel_one(client, cfg, outbox, t) for t in targets]
    ok = all(r["status"] == "cancelled" for r in results)
    if args.json:
        print_json(
            {"results": results, "cancelled": sum(r["status"] == "cancelled" for r in results)}
        )
    else:
        console = out()
        for r in results:
            if r["status"] == "cancelled" and r.get("where") == "outbox":
                console.print(f"[green]withdrawn before delivery[/] {r['identifier']}")
            elif r["status"] == "cancelled" and not r["error"]:
                console.print(f"[green]cancelled[/] {r['identifier']} ({r['event_name']})")
            elif r["status"] == "cancelled":
                console.print(f"[dim]{r['error']}[/] {r['identifier']}")
            else:
                console.print(
                    f"[red]not cancelled[/] {r['identifier']}: {r['error']}", soft_wrap=True
                )
    return EXIT_OK if ok else EXIT_FAILED
