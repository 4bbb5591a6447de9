"""Client-side pacing: stay inside Stripe's request limits instead of hammering them.

Why: Stripe answers 429 past its limits (STRIPE-FACTS "Limits"; issue 19 measured 66% of
v1 requests refused without pacing). One `Pacer` per transport spaces requests by the
key's mode and adapts to the 429s that still come:

- test/sandbox keys: 25 requests/s over all endpoints, meter events and the session
  included; we aim at `TEST_RATE` (22/s), leaving headroom for setup calls.
- live keys: v1 meter events 1,000/s (we aim at 900/s), the v2 stream 10,000/s (9,000).
- a global 429 (`Stripe-Rate-Limited-Reason` `global-rate`, `global-concurrency`,
  `endpoint-*`, or none) halves the rate and holds every request for `HOLD` seconds;
  each success then adds back a twentieth of the target rate (AIMD); the 429s of
  requests already out count once.
- a `lock_timeout` 429 is about one customer and meter: it is not paced here; the worker
  keeps one v1 request in flight per (customer, event name) and the event is retried
  with its own backoff.

Limits are per Stripe account, but pacing is per process: N processes sharing one key
each pace at the full rate, so together they can exceed it; their 429s are then retried
(nothing is lost), and each process slows down on its own.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Final, Literal

import anyio

TEST_RATE: Final = 22.0
LIVE_V1_RATE: Final = 900.0
LIVE_V2_RATE: Final = 9_000.0
HOLD: Final = 1.0
"""Seconds every request waits after a global 429 (Stripe sends no Retry-After)."""
MIN_RATE: Final = 1.0

Mode = Literal["test", "live"]


def key_mode(api_key: str | None) -> Mode:
    """`live` for `sk_live_`/`rk_live_` keys; everything else is paced as a sandbox."""
    return "live" if api_key and api_key.startswith(("sk_live_", "rk_live_")) else "test"


def client_key(client: Any) -> str | None:
    """The API key a `StripeClient` was built with (SDK-internal; None if it moved)."""
    requestor = getattr(client, "_requestor", None)
    key = getattr(requestor, "api_key", None)
    return key if isinstance(key, str) else None


def rate_for(mode: Mode, api: str) -> float:
    if mode == "test":
        return TEST_RATE
    return LIVE_V1_RATE if api == "v1" else LIVE_V2_RATE


STRIPE_LIMITS: Final = {"test": 25, "live_v1": 1_000, "live_v2": 10_000}


class Pacer:
    """Spaces request starts at `rate`/s (FIFO reservations, no bursts) and adapts on 429s.

    A second guard counts the requests actually started in the last second and keeps
    them under `window` (Stripe's limit minus one): a stalled event loop that wakes
    several sleeping senders at once must not burst past the limit.
    """

    def __init__(self, rate: float, window: int | None = None) -> None:
        self.target = rate
        self.rate = rate
        self._next = 0.0
        self._window = window if window is not None else max(1, math.ceil(rate * 1.1))
        self._started: collections.deque[float] = collections.deque()
        self._last_cut = -math.inf
        self.slowed = 0
        """Global 429s seen (each halved the rate)."""

    @classmethod
    def for_client(cls, client: Any, api: str) -> Pacer:
        mode = key_mode(client_key(client))
        limit = STRIPE_LIMITS["test" if mode == "test" else f"live_{api}"]
        return cls(rate_for(mode, api), limit - 1)

    async def acquire(self) -> None:
        """Wait for this request's turn."""
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + 1.0 / self.rate
        if start > now:
            await anyio.sleep(start - now)
        started = self._started
        while True:
            now = time.monotonic()
            while started and started[0] <= now - 1.0:
                started.popleft()
            if len(started) < self._window:
                started.append(now)
                return
            await anyio.sleep(started[0] + 1.0 - now)

    def succeeded(self) -> None:
        if self.rate < self.target:
            self.rate = min(self.target, self.rate + self.target / 20)

    def rate_limited(self, retry_after: float | None = None) -> None:
        """A global 429: half the rate, and everyone waits `Retry-After` if Stripe sent
        one, else `HOLD` seconds. The 429s of requests that were already out when the
        first came are one signal, not many: the rate is halved at most once per `HOLD`."""
        now = time.monotonic()
        self._next = max(self._next, now + (HOLD if retry_after is None else retry_after))
        if now < self._last_cut + HOLD:
            return
        self._last_cut = now
        self.slowed += 1
        self.rate = max(MIN_RATE, self.rate / 2)
