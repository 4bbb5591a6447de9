"""A full disk for a meter's outbox: SQLite's own limit, so stores really fail (SQLITE_FULL)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def disk_full(meter: Any, fill: Callable[[], None]) -> Iterator[dict[str, Any]]:
    """Run `fill` (records) while the outbox file cannot grow; yields `meter.stats()` once a
    store has failed. There is room again when the block ends."""
    box = meter._outbox
    with box._lock:
        (pages,) = box._conn.execute("PRAGMA page_count").fetchone()
        box._conn.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL on growth
    try:
        fill()
        deadline = time.monotonic() + 5
        while "full" not in (meter.stats()["last_error"] or "") and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = meter.stats()
        assert "full" in (stats["last_error"] or ""), stats
        yield stats
    finally:
        with box._lock:
            box._conn.execute("PRAGMA max_page_count=1073741823")
