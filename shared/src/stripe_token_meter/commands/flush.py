"""`stripe-token-meter flush`: deliver whatever the outbox holds, e.g. after a crash.

Why: events recorded by a process that died (or was closed while Stripe was down) stay
pending in the outbox; this sends them now, with their original identifiers, and exits
non-zero if anything is still pending so scripts and deploy hooks can tell.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._config import load_config
from ._delivery import deliver
from ._errors import EXIT_FAILED, EXIT_OK
from ._outbox import open_outbox
from ._output import out


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "flush",
        parents=parents,
        help="deliver everything pending in the outbox; non-zero exit if some is left",
        description="Deliver every pending event in the outbox to Stripe (original "
        "identifiers: nothing is billed twice). Exits 1 if anything is still pending.",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds (default 30)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    outbox = open_outbox(cfg)
    console = out()
    closed = outbox.close_windows(everything=True)
    if closed:
        console.print(f"{closed:,} open aggregation window(s) closed into events.")
    if outbox.pending_count() == 0:
        console.print("Nothing pending: the outbox is fully delivered.")
        return EXIT_OK
    result = deliver(cfg, outbox, max(0.0, args.timeout), "delivering", "flush")
    sent = result.started_pending - result.pending
    if result.pending:
        console.print(
            f"[red]{result.pending:,} event(s) still pending[/] after {result.seconds:.1f} s "
            f"({sent:,} delivered or dead-lettered)"
            + (f": {result.last_error}" if result.last_error else ""),
            soft_wrap=True,
        )
        return EXIT_FAILED
    counts = outbox.counts()
    console.print(
        f"Delivered the outbox in {result.seconds:.1f} s: {sent:,} event(s) sent; "
        f"{counts['dead']:,} dead-lettered in total (see `stripe-token-meter status`)."
    )
    return EXIT_OK
