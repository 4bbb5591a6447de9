"""`stripe-token-meter status`: is billing healthy, and if not, what to do.

Why: dead letters and rejected records are money not billed; each comes with Stripe's
(or our) error code, and the operator needs the fix for that code, the backlog's age and
whether a key is configured at all (never the key itself).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from ..outbox import Outbox
from ._config import Config, load_config
from ._errors import EXIT_OK, one_line, redact
from ._outbox import last_error, open_outbox
from ._output import ago, out, print_json
from .fixes import fix_for


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        parents=parents,
        help="outbox depth, dead letters with their fixes, last error, key configured",
        description="Delivery health of the outbox: pending depth and age, dead letters by "
        "error code with the fix for each, rejected usage records, the last delivery error, "
        "and whether an API key is configured (never shown).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def collect(cfg: Config, outbox: Outbox, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data. `counts["delivered"]` covers the delivered
    rows still kept (`TokenMeter(retain_delivered=...)`, 35 days by default)."""
    now = time.time() if now is None else now
    counts = outbox.counts()
    oldest = outbox.query("SELECT MIN(created) FROM events WHERE status='pending'")[0][0]
    dead = outbox.query(
        "SELECT COALESCE(error_code, 'unknown'), COUNT(*), SUM(value), MAX(error_message)"
        " FROM events WHERE status='dead' GROUP BY 1 ORDER BY 2 DESC, 1"
    )
    rejected = outbox.query(
        "SELECT code, COUNT(*), MAX(field), MAX(message) FROM rejected WHERE resolved IS NULL"
        " GROUP BY code"
        " ORDER BY 2 DESC, 1"
    )
    adjustments = dict(outbox.query("SELECT status, COUNT(*) FROM adjustments GROUP BY status"))
    warnings = []
    if counts["pending"] and cfg.api_key is None:
        warnings.append(
            f"{counts['pending']} event(s) are pending but no API key is configured here: set "
            "STRIPE_API_KEY and run `stripe-token-meter flush`"
        )
    if counts["local"]:
        warnings.append(
            f"{counts['local']} event(s) are in the local ledger (recorded without a key): "
            "they are never sent to Stripe"
        )
    err = last_error(outbox)
    if err is not None:
        err["error"] = redact(one_line(err["error"]))
    return {
        "outbox": str(cfg.outbox_path),
        "outbox_source": cfg.outbox_source,
        "event_name": cfg.event_name,
        "api": cfg.api,
        "api_base": cfg.api_base,
        "key": {
            "configured": cfg.api_key is not None,
            "kind": cfg.key_kind,
            "source": cfg.key_source,
        },
        "counts": {
            k: counts[k]
            for k in (
                "pending",
                "retrying",
                "delivered",
                "dead",
                "resolved",
                "local",
                "cancelled",
                "rejected",
                "rejected_resolved",
            )
        },
        "oldest_pending_age_seconds": None if oldest is None else round(now - float(oldest), 3),
        "dead_letters": [
            {
                "code": code,
                "events": int(n),
                "tokens": int(tokens or 0),
                "message": redact(one_line(str(message or ""))),
                "fix": fix_for(code).fix,
                "replayable": fix_for(code).replayable,
            }
            for code, n, tokens, message in dead
        ],
        "rejected": [
            {
                "code": code,
                "records": int(n),
                "field": field,
                "message": redact(one_line(str(message))),
                "fix": fix_for(code).fix,
            }
            for code, n, field, message in rejected
        ],
        "adjustments": {str(k): int(v) for k, v in adjustments.items()},
        "last_error": err,
        "warnings": warnings,
        "healthy": not (counts["dead"] or counts["rejected"] or warnings),
    }


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    data = collect(cfg, open_outbox(cfg, readonly=True))
    if args.json:
        print_json(data)
    else:
        _print(data)
    return EXIT_OK


def _print(d: dict[str, Any]) -> None:
    console = out()
    c = d["counts"]
    key = d["key"]
    key_text = (
        f"configured ({key['kind']}, from {key['source']})"
        if key["configured"]
        else "not configured (events go to the local ledger)"
    )
    console.print(f"[bold]Outbox[/] {d['outbox']} ({d['outbox_source']})")
    console.print(
        f"[bold]API key[/] {key_text}; api {d['api']}"
        + (f", base {d['api_base']}" if d["api_base"] else "")
    )
    console.print(
        f"[bold]Events[/] {c['pending']:,} pending ({c['retrying']:,} retrying, oldest "
        f"{ago(d['oldest_pending_age_seconds'])}), {c['delivered']:,} delivered, "
        f"{c['dead']:,} dead-lettered"
        + (f" ({c['resolved']:,} more resolved)" if c["resolved"] else "")
        + f", {c['local']:,} local, {c['cancelled']:,} cancelled; "
        f"{c['rejected']:,} usage record(s) rejected"
        + (f" ({c['rejected_resolved']:,} more resolved)" if c["rejected_resolved"] else "")
    )
    if d["last_error"]:
        console.print(f"[bold]Last delivery error[/] {d['last_error']['error']}", soft_wrap=True)
    if d["dead_letters"]:
        table = Table(title="Dead letters (Stripe refused these events)", title_justify="left")
        for col in ("code", "events", "tokens", "fix"):
            table.add_column(col, justify="right" if col in ("events", "tokens") else "left")
        for row in d["dead_letters"]:
            table.add_row(row["code"], f"{row['events']:,}", f"{row['tokens']:,}", row["fix"])
        console.print(table)
    if d["rejected"]:
        table = Table(title="Rejected usage records (never became events)", title_justify="left")
        for col in ("code", "records", "example", "fix"):
            table.add_column(col, justify="right" if col == "records" else "left")
        for row in d["rejected"]:
            table.add_row(row["code"], f"{row['records']:,}", row["message"], row["fix"])
        console.print(table)
    for w in d["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    console.print("[green]healthy[/]" if d["healthy"] else "[yellow]needs attention[/]")
