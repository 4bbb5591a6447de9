"""Opening the outbox for the command line, with one-line errors instead of tracebacks.

Why: `report`/`status` must not silently create an empty outbox at a mistyped path (it
would show "nothing pending" for an outbox that is somewhere else), and an unreadable file
must say which file and why.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import OutboxError
from ..outbox import Outbox
from ._config import Config
from ._errors import CliError

META_LAST_ERROR = "last_error"
"""Outbox `meta` key holding the last delivery error seen by any process (JSON or text)."""


def open_outbox(cfg: Config, *, must_exist: bool = True, readonly: bool = False) -> Outbox:
    """The configured outbox; `CliError` naming the path if it is missing or unreadable."""
    path = cfg.outbox_path
    if must_exist and not path.exists():
        raise CliError(
            f"no outbox at {path} ({cfg.outbox_source}): nothing was recorded there yet; "
            "pass --outbox PATH or set STRIPE_TOKEN_METER_OUTBOX to the file your app uses"
        )
    if path.is_dir():
        raise CliError(f"--outbox: {path} is a directory; give the SQLite file's path")
    try:
        outbox = Outbox(path, readonly=readonly)
        outbox.query("SELECT COUNT(*) FROM events LIMIT 1")
    except (sqlite3.Error, OSError, OutboxError) as exc:
        raise CliError(
            f"cannot read the outbox {path}: {exc}; check the path and its permissions "
            "(it must be the SQLite file written by TokenMeter)"
        ) from None
    return outbox


def remember_error(outbox: Outbox, error: str | None, source: str, *, paused: bool = False) -> None:
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


def last_error(outbox: Outbox) -> dict[str, Any] | None:
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
    rows = outbox.query(
        "SELECT error_code, error_message FROM events WHERE error_message IS NOT NULL"
        " AND status IN ('pending', 'dead') ORDER BY id DESC LIMIT 1"
    )
    if not rows:
        return None
    code, message = rows[0]
    return {"at": None, "error": f"{code}: {message}", "source": "events", "paused": False}
