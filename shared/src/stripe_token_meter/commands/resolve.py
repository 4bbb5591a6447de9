"""`stripe-token-meter resolve`: settle dead letters without sending them.

Why: some dead letters must not be replayed once checked, e.g. an
`unconfirmed_past_dedup_window` event that is already in Stripe. Left dead, they would
keep `status` unhealthy forever; deleted, the record of what happened would be gone.
Resolved rows stay in the outbox with their reason and are never sent.
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
        help="mark the dead letters of one error code as settled (kept, never sent)",
        description="Mark dead-lettered events with this error code as resolved: they stay "
        "in the outbox with their reason, are never sent, and no longer count as dead "
        "letters. Use `replay` instead to send them.",
    )
    p.add_argument("--code", metavar="CODE", required=True, help="the dead letters' error code")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    outbox = open_outbox(cfg)
    resolved = outbox.resolve_dead(args.code)
    codes = [
        str(r[0])
        for r in outbox.query(
            "SELECT DISTINCT error_code FROM events WHERE status='dead' ORDER BY 1"
        )
    ]
    if args.json:
        print_json({"resolved": resolved, "code": args.code, "dead_codes_left": codes})
    else:
        line = f"Resolved {resolved:,} dead letter(s) with code {args.code}"
        line += f"; dead letters left: {', '.join(codes)}" if codes else "; no dead letters left"
        out().print(line + ".", soft_wrap=True)
    return EXIT_OK
