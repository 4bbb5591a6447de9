"""`stripe-token-meter status`: is billing healthy, and if not, what to do.

Why: dead letters and rejected records are money not billed; each comes with Stripe's
(or our) error code, and the operator needs the fix for that code, the backlog's age and
whether a key is configured at all (never the key itself). What the outbox itself
recorded (APIs, event names, last delivery) is shown apart from this shell's own
configuration, which may not be the one the app ran with. The exit code makes it a
container health check: 0 healthy, 1 needs attention, 2 cannot tell (usage, no outbox).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from ..prepare import COST_TOKEN_TYPE
from ..storage import OutboxStore
from ._config import Config, load_config
from ._errors import EXIT_FAILED, EXIT_OK, one_line, redact
from ._outbox import last_error, open_outbox
from ._output import ago, out, print_json
from ._since import iso
from .fixes import fix_for

DEFAULT_MAX_PENDING_AGE = 15 * 60.0
"""Pending longer than this is unhealthy: the worker retries within a minute, so such a
backlog means delivery is stuck (Stripe down, key refused, no process running)."""
EXIT_CODES = (
    "exit codes: 0 healthy; 1 needs attention (dead letters or rejected usage records "
    "waiting, an event pending longer than --max-pending-age, delivery paused, events in "
    "the local ledger); 2 usage or configuration error (bad flag, no outbox at the path)"
)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        parents=parents,
        help="outbox depth, dead letters with their fixes, last error, key configured",
        description="Delivery health of the outbox: pending depth and age, dead letters by "
        "error code with the fix for each, rejected usage records, the last delivery error, "
        "and whether an API key is configured (never shown). What the outbox recorded "
        "(APIs, event names, last delivery) is shown apart from this shell's configuration. "
        "Usable as a container health check (exit codes below).",
        epilog=EXIT_CODES,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--max-pending-age",
        type=_duration,
        default=DEFAULT_MAX_PENDING_AGE,
        metavar="DURATION",
        help="unhealthy if an event has been pending longer than this: seconds or 30s, 15m, "
        "2h (default 15m)",
    )
    p.set_defaults(func=run)


def _duration(text: str) -> float:
    """`900`, `30s`, `15m`, `2h`: seconds."""
    units = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86_400.0}
    raw = text.strip().lower()
    unit = next((u for u in ("min", "s", "m", "h", "d") if raw.endswith(u)), "")
    try:
        value = float(raw.removesuffix(unit)) * units.get(unit, 1.0)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds or 30s, 15m, 2h, got {text!r}")
    return value


def unpriced_models(rows: list[tuple[str, str, str, str, int, int]]) -> list[str] | None:
    """Models with token events but no cost event, from `report_rows`; None when the
    outbox holds no cost event at all (no meter writing to it has `pricing`).

    Derived from what is stored, so it also lists a model priced at zero, one whose
    calls all cost under half a micro-unit, and one used only before pricing was on.
    """
    priced: set[str] = set()
    used: set[str] = set()
    for _customer, model, token_type, _status, _n, _v in rows:
        (priced if token_type == COST_TOKEN_TYPE else used).add(model)
    if not priced:
        return None
    return sorted(used - priced)


def collect(
    cfg: Config,
    outbox: OutboxStore,
    now: float | None = None,
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE,
) -> dict[str, Any]:
    """Everything `status` shows, as plain data. `counts["delivered"]` covers the delivered
    rows still kept (`TokenMeter(retain_delivered=...)`, 35 days by default)."""
    now = time.time() if now is None else now
    counts = outbox.counts()
    oldest = outbox.oldest_pending()
    dead = outbox.dead_by_code()
    rejected = outbox.rejected_by_code()
    adjustments = outbox.adjustment_counts()
    warnings = []
    if counts["pending"] and cfg.api_key is None:
        warnings.append(
            f"{counts['pending']} event(s) are pending but no API key is configured in this "
            "shell: to deliver them from here, set STRIPE_API_KEY and run "
            "`stripe-token-meter flush`"
        )
    names = outbox.event_names()
    if names and cfg.event_name not in names:
        warnings.append(
            f"this shell's event name {cfg.event_name} is not the outbox's "
            f"({', '.join(names)}): pass --event-name or set STRIPE_METER_EVENT_NAME as the "
            "app does"
        )
    if counts["local"]:
        warnings.append(
            f"{counts['local']} event(s) are in the local ledger (recorded without a key): "
            "they are never sent to Stripe"
        )
    err = last_error(outbox)
    if err is not None:
        err["error"] = redact(one_line(err["error"]))
    age = None if oldest is None else round(now - float(oldest), 3)
    problems = []
    if counts["dead"]:
        problems.append(f"{counts['dead']:,} dead-lettered event(s)")
    if counts["rejected"]:
        problems.append(f"{counts['rejected']:,} rejected usage record(s)")
    if age is not None and age > max_pending_age:
        problems.append(
            f"events pending for {ago(age)} (more than --max-pending-age {ago(max_pending_age)})"
        )
    if counts["local"]:  # a keyless process: never billed (withdraw with `cancel`)
        problems.append(f"{counts['local']:,} event(s) in the local ledger, never sent")
    if err is not None and err["paused"] and counts["pending"]:
        problems.append(f"delivery paused ({err['error']})")
    delivered_at = outbox.last_delivered()
    return {
        "outbox": cfg.outbox_label,
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
        "recorded": {
            "apis": outbox.apis(),
            "event_names": names,
            "last_delivered_at": None if delivered_at is None else iso(delivered_at),
            "last_delivered_age_seconds": (
                None if delivered_at is None else round(now - delivered_at, 3)
            ),
        },
        "oldest_pending_age_seconds": age,
        "max_pending_age_seconds": max_pending_age,
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
        "unpriced_models": unpriced_models(outbox.report_rows()),
        "stripe_error_reports": outbox.error_report_counts(),
        "last_error": err,
        "warnings": warnings,
        "problems": problems,
        "healthy": not problems,
    }


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    data = collect(cfg, open_outbox(cfg, readonly=True), max_pending_age=args.max_pending_age)
    if args.json:
        print_json(data)
    else:
        _print(data)
    return EXIT_OK if data["healthy"] else EXIT_FAILED


def _counted(values: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v:,})" for k, v in values.items()) or "-"


def _print(d: dict[str, Any]) -> None:
    console = out()
    c = d["counts"]
    key = d["key"]
    key_text = (
        f"configured ({key['kind']}, from {key['source']})" if key["configured"] else "not set"
    )
    rec = d["recorded"]
    console.print(f"[bold]Outbox[/] {d['outbox']} ({d['outbox_source']})")
    console.print(
        f"[bold]Recorded in the outbox:[/] sent with api {_counted(rec['apis'])}; event name "
        f"{_counted(rec['event_names'])}; last delivery "
        + (
            f"{rec['last_delivered_at']} ({ago(rec['last_delivered_age_seconds'])} ago)"
            if rec["last_delivered_at"]
            else "none kept"
        ),
        soft_wrap=True,
    )
    console.print(
        f"[bold]This shell's configuration:[/] API key {key_text}; api {d['api']}; event name "
        f"{d['event_name']}" + (f"; base {d['api_base']}" if d["api_base"] else ""),
        soft_wrap=True,
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
    if d["stripe_error_reports"]:
        console.print(
            "[bold]Stripe error reports[/] "
            + _counted(d["stripe_error_reports"])
            + " (sampled events are dead letters below)",
            soft_wrap=True,
        )
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
    if d["unpriced_models"]:
        console.print(
            f"[bold]Unpriced models[/] {', '.join(d['unpriced_models'])} (token events but no "
            "cost event: add their prices to the meter's Pricing)",
            soft_wrap=True,
        )
    for w in d["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    if d["healthy"]:
        console.print("[green]healthy[/]")
    else:
        console.print("[yellow]needs attention:[/] " + "; ".join(d["problems"]), soft_wrap=True)
