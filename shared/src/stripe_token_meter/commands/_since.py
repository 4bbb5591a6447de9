"""`--since` values: a date/time (UTC) or a duration back from now (`24h`, `7d`).

Why: "usage since the start of the month" and "usage of the last hour" are the two
questions people ask; both become one Unix timestamp to filter on.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime, timezone

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds for `2025-01-31`, `2025-01-31T12:00:00Z` (naive = UTC) or `24h`/`7d`/`30m`."""
    now = time.time() if now is None else now
    m = _DURATION.fullmatch(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date (2025-01-31), a date-time (2025-01-31T12:00:00Z) or a duration "
            f"(30m, 24h, 7d, 2w), got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(ts: float) -> str:
    """UTC ISO 8601 with a `Z`, to the second."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
