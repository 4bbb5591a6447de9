"""`stripe-token-meter resolve`: settle dead letters and rejected records without sending.

Why: some dead letters must not be replayed once checked, e.g. an
`unconfirmed_past_dedup_window` event that is already in Stripe; a rejected usage record
(`missing_customer`, ...) never became an event and cannot be sent as it is. Left open,
they would keep `status` unhealthy forever; deleted, the record of what happened would be
gone. Resolved rows stay in the outbox with their reason and are never sent.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._config import load_config
from ._errors import EXIT_OK
from ._outbox import open_outbox
from ._output import out, print_json


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resolve",
        parents=parents,
        help="mark the dead letters and rejected records of one error code as settled "
        "(kept, never sent)",
        description="Mark dead-lettered events and rejected usage records with this error "
        "code as resolved: they stay in the outbox with their reason, are never sent, and no "
        "longer count as dead letters or rejected records in `status`. Use `replay` instead "
        "to send dead letters.",
    )
    p.add_argument(
        "--code", metavar="CODE", required=True, help="the error code (as `status` shows it)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    outbox = open_outbox(cfg)
    resolved = outbox.resolve_dead(args.code)
    rejected = outbox.resolve_rejected(args.code)
    dead_left, rejected_left = outbox.open_codes()
    if args.json:
        print_json(
            {
                "resolved": resolved,
                "resolved_rejected": rejected,
                "code": args.code,
                "dead_codes_left": dead_left,
                "rejected_codes_left": rejected_left,
            }
        )
    else:
        line = (
            f"Resolved {resolved:,} dead letter(s) and {rejected:,} rejected record(s) "
            f"with code {args.code}"
        )
        line += (
            f"; dead letters left: {', '.join(dead_left)}"
            if dead_left
            else "; no dead letters left"
        )
        if rejected_left:
            line += f"; rejected records left: {', '.join(rejected_left)}"
        out().print(line + ".", soft_wrap=True)
    return EXIT_OK
