"""`stripe-token-meter replay`: re-send dead letters once their cause is fixed.

Why: a dead letter is billable usage Stripe refused (unknown customer, archived meter);
after the fix it must be delivered exactly once, so it goes back to pending with its
original identifier and is sent by the same worker as everything else.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from ..outbox import UNCONFIRMED_CODE
from ._config import load_config
from ._delivery import deliver
from ._errors import EXIT_FAILED, EXIT_OK
from ._outbox import open_outbox
from ._output import out, print_json

SYNCHRONOUS_V1_CODES: Final = frozenset(
    {
        "archived_meter",
        "meter_event_customer_not_found",
        "meter_event_invalid_value",
        "meter_event_no_customer_defined",
        "resource_missing",
        "timestamp_too_far_in_future",
        "timestamp_too_far_in_past",
    }
)
"""Rejections v1 gives on the spot, which the v2 stream gives only later, by webhook, after
answering 200: such a dead letter from a file older than `events.api` came from v1, and a
v2 "delivered" would not mean billed. They are replayed only with `--api v1`."""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        parents=parents,
        help="re-queue dead letters (optionally one error code) and deliver them",
        description="Put dead-lettered events back to pending and deliver them with their "
        "original identifiers (Stripe de-duplicates them for 24 hours, so nothing is billed "
        f"twice). {UNCONFIRMED_CODE} events, which may be at Stripe past that window, are "
        "replayed only when named with --code. Each event is resent through the API it was "
        "first sent with (v1 or v2); --api applies only to events from outbox files older "
        "than that record, and those Stripe rejected synchronously (v1) are replayed only "
        "with --api v1: the v2 stream accepts before it validates.",
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
    rows = outbox.replayable_rows(args.code)
    # An event of unknown API rejected on the spot came from v1: not through the v2 stream.
    unsure = {
        i
        for i, api, code in rows
        if api is None and cfg.api == "v2" and code in SYNCHRONOUS_V1_CODES
    }
    ids = [i for i, _, _ in rows if i not in unsure]
    # Without --code, events that may already be at Stripe past its duplicate check stay.
    held = 0 if args.code else len(outbox.replayable_ids(UNCONFIRMED_CODE))
    unsure_note = (
        f"{len(unsure):,} dead letter(s) of unknown API (an outbox older than the api record) "
        "were rejected synchronously, which only v1 does: replay them with `--api v1` (the v2 "
        "stream answers 200 before it checks them, and would drop them)"
        if unsure
        else ""
    )
    if not ids:
        codes, _ = outbox.open_codes()
        message = "no dead letters" + (
            f" with code {args.code}" if args.code else " to replay without --code"
        )
        if codes:
            message += f" (codes present: {', '.join(codes)})"
        if args.json:
            print_json(
                {
                    "requeued": 0,
                    "delivered": 0,
                    "dead": 0,
                    "pending": 0,
                    "held_back_unknown_api": len(unsure),
                    "message": message,
                }
            )
        else:
            out().print(
                message + ": nothing to replay." + (f" {unsure_note}." if unsure else ""),
                soft_wrap=True,
            )
        return EXIT_FAILED if unsure else EXIT_OK
    others = outbox.pending_count()  # delivered along the way: same worker, same outbox
    requeued = outbox.requeue_dead_ids(ids)
    label = f"replaying {requeued:,} dead letter(s)" + (f" + {others:,} pending" if others else "")
    result = deliver(cfg, outbox, max(0.0, args.timeout), label, "replay")
    states: dict[str, int] = {}
    by_api: dict[str, dict[str, int]] = {}
    again: dict[str, int] = {}
    for api, status, code, n in outbox.outcomes(ids, cfg.api):
        states[status] = states.get(status, 0) + n
        per = by_api.setdefault(api, {"delivered": 0, "dead": 0, "pending": 0})
        per[status] = per.get(status, 0) + n
        if code is not None:
            again[code] = again.get(code, 0) + n
    summary: dict[str, Any] = {
        "requeued": requeued,
        "delivered": states.get("delivered", 0),
        "dead": states.get("dead", 0),
        "pending": states.get("pending", 0),
        "by_api": by_api,
        "dead_again_by_code": dict(sorted(again.items())),
        "held_back": held,
        "held_back_unknown_api": len(unsure),
        "last_error": result.last_error,
    }
    if args.json:
        print_json(summary)
    else:
        apis = ", ".join(f"{sum(v.values()):,} via {a}" for a, v in sorted(by_api.items()))
        line = (
            f"Replayed {requeued:,} dead letter(s) ({apis}): {summary['delivered']:,} delivered, "
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
        if unsure:
            line += f". {unsure_note}"
        out().print(line, soft_wrap=True)
    ok = summary["dead"] == 0 and summary["pending"] == 0 and not unsure
    return EXIT_OK if ok else EXIT_FAILED
