"""`stripe-token-meter replay`: re-send dead letters once their cause is fixed.

Why: a dead letter is billable usage Stripe refused (unknown customer, archived meter);
after the fix it must be delivered exactly once, so it goes back to pending with its
original identifier and is sent by the same worker as everything else.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..outbox import UNCONFIRMED_CODE
from ._config import load_config
from ._delivery import deliver
from ._errors import EXIT_FAILED, EXIT_OK
from ._outbox import open_outbox
from ._output import out, print_json


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        parents=parents,
        help="re-queue dead letters (optionally one error code) and deliver them",
        description="Put dead-lettered events back to pending and deliver them with their "
        "original identifiers (Stripe de-duplicates them for 24 hours, so nothing is billed "
        f"twice). {UNCONFIRMED_CODE} events, which may be at Stripe past that window, are "
        "replayed only when named with --code.",
    )
    p.add_argument("--code", metavar="CODE", help="only dead letters with this error code")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="give up after S seconds"
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    cfg.require_key("replay")
    outbox = open_outbox(cfg)
    ids = outbox.replayable_ids(args.code)
    # Without --code, events that may already be at Stripe past its duplicate check stay.
    held = 0 if args.code else len(outbox.replayable_ids(UNCONFIRMED_CODE))
    if not ids:
        codes, _ = outbox.open_codes()
        message = "no dead letters" + (
            f" with code {args.code}" if args.code else " to replay without --code"
        )
        if codes:
            message += f" (codes present: {', '.join(codes)})"
        if args.json:
            print_json({"requeued": 0, "delivered": 0, "dead": 0, "pending": 0, "message": message})
        else:
            out().print(message + ": nothing to replay.")
        return EXIT_OK
    others = outbox.pending_count()  # delivered along the way: same worker, same outbox
    requeued = outbox.requeue_dead(args.code)
    label = f"replaying {requeued:,} dead letter(s)" + (f" + {others:,} pending" if others else "")
    result = deliver(cfg, outbox, max(0.0, args.timeout), label, "replay")
    marks = ",".join("?" * len(ids))
    states = dict(
        (str(s), int(n))
        for s, n in outbox.query(
            f"SELECT status, COUNT(*) FROM events WHERE id IN ({marks}) GROUP BY status", ids
        )
    )
    again = outbox.query(
        f"SELECT error_code, COUNT(*) FROM events WHERE id IN ({marks}) AND status='dead'"
        " GROUP BY error_code",
        ids,
    )
    summary: dict[str, Any] = {
        "requeued": requeued,
        "delivered": states.get("delivered", 0),
        "dead": states.get("dead", 0),
        "pending": states.get("pending", 0),
        "dead_again_by_code": {str(c): int(n) for c, n in again},
        "held_back": held,
        "last_error": result.last_error,
    }
    if args.json:
        print_json(summary)
    else:
        line = (
            f"Replayed {requeued:,} dead letter(s): {summary['delivered']:,} delivered, "
            f"{summary['dead']:,} dead again, {summary['pending']:,} still pending"
        )
        if summary["dead_again_by_code"]:
            line += " (" + ", ".join(f"{c}: {n}" for c, n in summary["dead_again_by_code"].items())
            line += "; see `stripe-token-meter status` for the fix)"
        if result.last_error and summary["pending"]:
            line += f"; {result.last_error}"
        if held:
            line += (
                f". {held:,} {UNCONFIRMED_CODE} event(s) held back: they may be at Stripe "
                f"already; check, then `replay --code {UNCONFIRMED_CODE}` or `resolve`"
            )
        out().print(line, soft_wrap=True)
    return EXIT_OK if summary["dead"] == 0 and summary["pending"] == 0 else EXIT_FAILED
