"""`stripe-token-meter errors ingest FILE`: apply a saved Stripe meter error report.

Why: when no webhook endpoint is running (or one was down), an operator can save the
event (Dashboard, `stripe events retrieve`, a queue) and apply it here: sampled failed
events become dead letters with their code, counts show in `status`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._config import load_config
from ._errors import EXIT_OK, CliError
from ._outbox import open_outbox
from ._output import out, print_json


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "errors",
        parents=parents,
        help="Stripe's meter error reports (errors ingest FILE)",
        description="Stripe's asynchronous meter error reports "
        "(v1.billing.meter.error_report_triggered, v1.billing.meter.no_meter_found).",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    ingest = actions.add_parser(
        "ingest",
        parents=parents,
        help="apply a saved error report event (JSON) to the outbox",
        description="Apply a saved error report: the fetched event (with data), or the thin "
        "notification (then fetched with the API key). Each sampled identifier still in the "
        "outbox is dead-lettered with its code; unknown identifiers are counted, not "
        "invented. '-' reads standard input.",
    )
    ingest.add_argument("file", metavar="FILE", help="the event JSON, or - for stdin")
    ingest.add_argument("--json", action="store_true", help="machine-readable summary")
    ingest.set_defaults(func=run_ingest)
    p.set_defaults(func=lambda args: p.error("name an action: errors ingest FILE"))


def run_ingest(args: argparse.Namespace) -> int:
    from ..error_reports import ErrorReportHandler

    cfg = load_config(args)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    open_outbox(cfg).close()  # a missing or unreadable outbox: one line, exit 2
    handler = ErrorReportHandler(
        outbox_path=cfg.outbox_path,
        api_key=cfg.api_key,
        api_base=cfg.api_base,
        stripe_client=cfg.client("fetching the event") if cfg.api_key else None,
    )
    try:
        outcome = handler.ingest_saved(text)
    except ValueError as exc:
        raise CliError(f"{args.file}: not a Stripe error report event ({exc})") from None
    finally:
        handler.close()
    if args.json:
        print_json(
            {
                "event": outcome.event_id,
                "type": outcome.type,
                "ignored": outcome.ignored,
                "seen_before": outcome.seen_before,
                "counts": outcome.counts,
                "dead_lettered": outcome.dead_lettered,
                "unknown": outcome.unknown,
            }
        )
    elif outcome.ignored:
        out().print(f"{outcome.event_id}: {outcome.type} is not a meter error report; ignored.")
    else:
        codes = ", ".join(f"{n:,} {c}" for c, n in sorted(outcome.counts.items())) or "none"
        again = " (seen before)" if outcome.seen_before else ""
        out().print(
            f"{outcome.event_id}{again}: errors {codes}; {outcome.dead_lettered:,} event(s) "
            f"dead-lettered, {outcome.unknown:,} sampled identifier(s) not in this outbox.",
            soft_wrap=True,
            markup=False,
        )
    return EXIT_OK
