"""Opening the outbox for the command line, with one-line errors instead of tracebacks.

Why: `report`/`status` must not silently create an empty outbox at a mistyped path (it
would show "nothing pending" for an outbox that is somewhere else), and an unreadable file
must say which file and why.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import OutboxError
from ..storage import OutboxStore, open_store
from ._config import Config
from ._errors import CliError

META_LAST_ERROR = "last_error"
"""Outbox `meta` key holding the last delivery error seen by any process (JSON or text)."""


def open_outbox(cfg: Config, *, must_exist: bool = True, readonly: bool = False) -> OutboxStore:
    """The configured outbox; `CliError` naming the path if it is missing or unreadable."""
    path = cfg.outbox_path
    if not isinstance(path, Path):  # a URL: PostgreSQL, or a scheme open_store refuses by name
        try:
            outbox = open_store(path, readonly=readonly)
            outbox.counts()  # connects: unreachable or refused now, not mid-command
        except OutboxError as exc:
            raise CliError(f"cannot use the outbox: {exc}") from None
        return outbox
    if must_exist and not path.exists():
        raise CliError(
            f"no outbox at {path} ({cfg.outbox_source}): nothing was recorded there yet; "
            "pass --outbox PATH or set STRIPE_TOKEN_METER_OUTBOX to the file your app uses"
        )
    if path.is_dir():
        raise CliError(f"--outbox: {path} is a directory; give the SQLite file's path")
    try:
        outbox = open_store(path, readonly=readonly)
        outbox.counts()
    except (sqlite3.Error, OSError, OutboxError) as exc:
        raise CliError(
            f"cannot read the outbox {path}: {exc}; check the path and its permissions "
            "(it must be the SQLite file written by TokenMeter)"
        ) from None
    return outbox


def remember_error(
    outbox: OutboxStore, error: str | None, source: str, *, paused: bool = False
) -> None:
    """Keep the last delivery error in the outbox so `status` in another process shows it;
    `None` (everything delivered) clears it. `paused`: the run ended with the meter holding
    delivery back (key refused, Stripe down or pushing back), which `status` reports."""
    if error or paused:
        value = {"at": time.time(), "error": error or "delivery paused", "source": source}
        if paused:
            value["paused"] = True
        outbox.set_meta(META_LAST_ERROR, json.dumps(value))
    else:
        outbox.set_meta(META_LAST_ERROR, "")


def last_error(outbox: OutboxStore) -> dict[str, Any] | None:
    """The last delivery error: the `meta` entry if any process saved one, else the newest
    error message on an event still pending or dead."""
    raw = outbox.get_meta(META_LAST_ERROR)
    if raw:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, dict):
            return {
                "at": value.get("at"),
                "error": str(value.get("error")),
                "source": "meta",
                "paused": value.get("paused") is True,
            }
        return {"at": None, "error": str(value), "source": "meta", "paused": False}
    newest = outbox.last_event_error()
    if newest is None:
        return None
    code, message = newest
    return {"at": None, "error": f"{code}: {message}", "source": "events", "paused": False}
