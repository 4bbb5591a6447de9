"""`Health`: one process's counters, last error and rate-limited log lines.

The intake and the worker report here; `TokenMeter.stats()` reads it. Nothing in it
does I/O beyond logging, so any layer may use it without reaching into another's state.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

log = logging.getLogger("stripe_token_meter")

LOG_EVERY: Final = 60.0
"""A repeating condition (disk full, a failing turn) is logged at most once a minute."""

COUNTERS: Final = (
    "recorded",
    "events",
    "duplicates",
    "empty",
    "invalid",
    "no_usage",
    "adapter_errors",
    "dropped",
    "not_journaled",
    "worker_restarts",
    "journals_recovered",
)


class Health:
    """Counters (thread-safe), the last error, and log lines limited per condition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_error: str | None = None
        """The latest error, until delivery succeeds after it if it was a delivery error
        (a stale "rate_limit" must not outlive the recovery)."""
        self.last_error_at: float | None = None
        self.last_delivery_error: tuple[str, float] | None = None
        """The latest delivery error and when (Unix seconds), kept after recovery."""
        self.last_delivered_at: float | None = None
        """When Stripe last accepted events from this process (Unix seconds)."""
        self._delivery_error = False
        self.delivered = 0
        """Events this process saw Stripe accept (the worker's own count)."""
        self._warned: set[str] = set()
        self._logged: dict[str, float] = {}
        self._unpriced: set[str] = set()
        """Models a priced meter saw without a price (their tokens billed, no cost sent)."""

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def note_unpriced(self, model: str) -> None:
        """A priced meter met `model` without a price: its cost is unknown (said once)."""
        if model in self._unpriced:
            return
        with self._lock:
            self._unpriced.add(model)
        self.warn_once(
            f"unpriced:{model}",
            f"stripe-token-meter: no price for model {model}: its tokens are billed but no "
            "cost event is sent (listed in stats()['unpriced_models']); add it to the Pricing",
        )

    def unpriced(self) -> list[str]:
        """The models seen without a price, sorted."""
        with self._lock:
            return sorted(self._unpriced)

    def adapter_error(self, source: str, exc: BaseException) -> None:
        """An adapter (or the guard) failed: count it, note it, log once with the traceback."""
        self.count("adapter_errors")
        self.note_error("adapter_error", f"{source}: {type(exc).__name__}: {exc}")
        self.error_once(
            f"adapter:{source}", f"stripe-token-meter: {source} failed to handle a callback", exc
        )

    def note_error(self, code: str, message: str, *, delivery: bool = False) -> None:
        """`delivery`: an answer (or no answer) from Stripe, cleared by a later success."""
        now = time.time()
        self.last_error = f"{code}: {message}"[:500]
        self.last_error_at = now
        self._delivery_error = delivery
        if delivery:
            self.last_delivery_error = (self.last_error, now)

    def note_delivered(self, n: int) -> None:
        """Stripe accepted `n` events: a delivery error noted before is no longer current."""
        self.delivered += n
        self.last_delivered_at = time.time()
        if self._delivery_error:
            self.last_error = None
            self.last_error_at = None
            self._delivery_error = False

    def warn_once(self, key: str, message: str) -> None:
        """A warning logged the first time `key` comes up in this process."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def error_once(self, key: str, message: str, exc: BaseException | None = None) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error(message, exc_info=exc)

    def log_every(
        self, key: str, level: int, message: str, exc: BaseException | None = None
    ) -> bool:
        """Log `message` unless `key` was logged less than `LOG_EVERY` seconds ago."""
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(key)
            if last is not None and now - last < LOG_EVERY:
                return False
            self._logged[key] = now
        log.log(level, message, exc_info=exc)
        return True
