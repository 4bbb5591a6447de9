"""Deliver what an outbox holds with a progress bar: a TokenMeter on it, flushed in a loop.

Why: `flush` (after a crash) and `replay` (after fixing a dead letter's cause) are the same
act: the core's worker sends the pending rows with their original identifiers, so nothing
is billed twice; we only watch the pending count go down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..meter import TokenMeter
from ..outbox import Outbox
from ._config import Config
from ._errors import one_line, redact
from ._outbox import remember_error
from ._output import err


@dataclass(frozen=True)
class Delivery:
    """How a delivery run ended."""

    started_pending: int
    pending: int
    seconds: float
    last_error: str | None


def explain_error(error: str | None, cfg: Config) -> str | None:
    """The worker's last error, with the URL when Stripe could not be reached."""
    if error is None:
        return None
    if error.startswith("connection_error"):
        return f"cannot reach Stripe at {cfg.url} (connection refused or no network)"
    return redact(one_line(error))


def deliver(cfg: Config, outbox: Outbox, timeout: float, label: str, source: str) -> Delivery:
    """Send every pending row until none is left or `timeout` passes."""
    key = cfg.require_key(source)
    start = time.monotonic()
    total = outbox.pending_count()
    meter = TokenMeter(
        api_key=key,
        api_base=cfg.api_base,
        event_name=cfg.event_name,
        outbox_path=cfg.outbox_path,
        api=cfg.api,
        exit_timeout=0.5,
    )
    pending = total
    try:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err(), transient=False) as progress:
            task = progress.add_task(label, total=max(total, 1))
            deadline = start + timeout
            while True:
                left = deadline - time.monotonic()
                done = meter.flush(timeout=max(0.0, min(0.25, left)))
                pending = outbox.pending_count()
                progress.update(task, completed=max(0, total - pending) if total else 1)
                if done or pending == 0 or time.monotonic() >= deadline:
                    break
        last = meter.stats()["last_error"] if pending else None
    finally:
        meter.close(timeout=0.0)
    remember_error(outbox, last, f"stripe-token-meter {source}")
    return Delivery(total, pending, time.monotonic() - start, explain_error(last, cfg))
