"""Deliver what an outbox holds with a progress bar: a TokenMeter on it, flushed in a loop.

Why: `flush` (after a crash) and `replay` (after fixing a dead letter's cause) are the same
act: the core's worker sends the pending rows with their original identifiers, so nothing
is billed twice; we only watch the pending count go down.

Each row goes through the API it was recorded for (`events.api`; the configured `--api`
for rows older than that column): one meter per API, while the other APIs' rows are held
back. A v1 event Stripe rejected synchronously must never be "fixed" by the v2 stream,
which answers 200 before it validates (and then drops the event).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..meter import TokenMeter
from ..storage import OutboxStore
from ._config import Config
from ._errors import one_line, redact
from ._outbox import remember_error
from ._output import err

HOLD_MARGIN = 60.0
"""Other APIs' rows are held this long past the delivery deadline: released at the end,
or, should this process die, the hold runs out by itself."""
POLL = 0.25


@dataclass(frozen=True)
class Delivery:
    """How a delivery run ended."""

    started_pending: int
    pending: int
    seconds: float
    last_error: str | None
    paused: bool = False
    by_api: dict[str, int] | None = None
    """Pending rows per API when the run started."""


_UNREACHABLE = (
    "clientconnectorerror",  # aiohttp (the SDK names the class: "A ClientConnectorError ...")
    "connecterror",  # httpx
    "connecttimeout",
    "connectiontimeouterror",
    "cannot connect",
    "connection refused",
    "connect call failed",
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "getaddrinfo",
    "no route to host",
    "network is unreachable",
)
"""Words of the errors (aiohttp, httpx, the OS; `retry._connect_errors`) that mean no
connection was ever made."""


def explain_error(error: str | None, cfg: Config) -> str | None:
    """The worker's last error as one line. "Cannot reach Stripe" only for a connection
    that was never made; a connection that failed mid-request, a 429 or a 5xx is an
    answer (or half of one) from a reachable Stripe and is quoted as it is."""
    if error is None:
        return None
    text = redact(one_line(error))
    if error.startswith("connection_error"):
        if any(word in error.lower() for word in _UNREACHABLE):
            return f"cannot reach Stripe at {cfg.url} (connection refused or no network): {text}"
        return f"the connection to Stripe at {cfg.url} failed during a request: {text}"
    return text


def _deliver_api(
    cfg: Config,
    key: str,
    outbox: OutboxStore,
    api: str,
    deadline: float,
    tick: Callable[[], None],
) -> tuple[str | None, bool]:
    """Send the pending rows of `api` through a meter on `api`: (last error, paused)."""
    hold = max(0.0, deadline - time.monotonic()) + HOLD_MARGIN
    held = outbox.hold_other_apis(api, cfg.api, hold)
    meter = TokenMeter(
        api_key=key,
        api_base=cfg.api_base,
        event_name=cfg.event_name,
        outbox_path=cfg.outbox_path,
        api="v1" if api == "v1" else "v2",
        exit_timeout=0.5,
    )
    try:
        while True:
            left = deadline - time.monotonic()
            meter.flush(timeout=max(0.0, min(POLL, left)))
            # A row whose (dead) owner's lease ran out meanwhile is held too.
            held += outbox.hold_other_apis(api, cfg.api, hold)
            remaining = outbox.pending_by_api(cfg.api).get(api, 0)
            tick()
            if remaining == 0 or time.monotonic() >= deadline:
                break
        stats = meter.stats()
        return (stats["last_error"] if remaining else None), bool(stats["paused"])
    finally:
        meter.close(timeout=0.0)
        outbox.release_held(held)


def deliver(cfg: Config, outbox: OutboxStore, timeout: float, label: str, source: str) -> Delivery:
    """Send every pending row, each through its own API, until none is left or `timeout`."""
    key = cfg.require_key(source)
    start = time.monotonic()
    deadline = start + timeout
    total = outbox.pending_count()
    by_api = outbox.pending_by_api(cfg.api)
    last: str | None = None
    paused = False
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err(), transient=False) as progress:
        task = progress.add_task(label, total=max(total, 1))

        def tick() -> None:
            progress.update(task, completed=max(0, total - outbox.pending_count()) if total else 1)

        for api in sorted(by_api):  # v1 first: its answers are synchronous
            error, was_paused = _deliver_api(cfg, key, outbox, api, deadline, tick)
            last = last or error
            paused = paused or was_paused
    pending = outbox.pending_count()
    if not pending:
        last = None
    remember_error(outbox, last, f"stripe-token-meter {source}", paused=paused and bool(pending))
    return Delivery(
        total,
        pending,
        time.monotonic() - start,
        explain_error(last, cfg),
        paused=paused and bool(pending),
        by_api=by_api,
    )
