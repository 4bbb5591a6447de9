"""Stripe's documented request limits, by key mode, as FakeStripe enforces them.

Why: a fake more lenient than Stripe let delivery hammer it (issue 19: 1,169 of 1,766
v1 requests were 429s against a server that enforces these). The rules and where each
comes from (docs.stripe.com/rate-limits and
docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api):

- Sandbox/test keys (`sk_test_`, `rk_test_`, and their session tokens): 25 requests/s
  over all endpoints; "calls to the meter event and meter event stream endpoints count
  toward the basic limit" in test mode. Answered 429 `rate_limit`,
  `Stripe-Rate-Limited-Reason: global-rate`.
- Live keys (`sk_live_`, `rk_live_`): `POST /v1/billing/meter_events` 1,000 calls/s (a
  separate limit, not counted in the basic one: `endpoint-rate`); the v2 meter event
  stream 10,000 requests/s (`endpoint-rate`); every other endpoint 100/s (`global-rate`).
- v1 meter events allow "one concurrent call per customer per meter"; a second call for
  the same customer and meter while one is in flight is answered 429 `lock_timeout`
  (Stripe's answer to concurrent writes on one object). Applied in both modes: the docs
  state it without a mode. Whether Stripe sends `Stripe-Rate-Limited-Reason` with a
  lock timeout is not documented, so none is sent; clients must read the code.
- 429s carry no `Retry-After` (Stripe's "usually no Retry-After") and no
  `Stripe-Should-Retry`, so stripe-python never retries them itself (its
  `_should_retry` retries only on `Stripe-Should-Retry: true`, 409 and 5xx).

Windows are sliding (the last second), which is at least as strict as Stripe's own
limiter; only admitted requests count. Keys other than `sk_live_`/`rk_live_` are test.
"""

from __future__ import annotations

import collections
from typing import Final, Literal

from stripe_token_meter.testing._wire import ApiError, Response

Mode = Literal["test", "live"]

TEST_RATE: Final = 25
LIVE_BASIC_RATE: Final = 100
LIVE_V1_EVENTS_RATE: Final = 1_000
LIVE_STREAM_RATE: Final = 10_000
V1_EVENTS_PATH: Final = "/v1/billing/meter_events"
STREAM_PATH: Final = "/v2/billing/meter_event_stream"

_RATE_MESSAGE: Final = (
    "Request rate limit exceeded. Learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
_LOCK_MESSAGE: Final = (
    "This object cannot be accessed right now because another API request or Stripe "
    "process is currently accessing it. If you see this error intermittently, retry the "
    "request. If you see this error frequently and are making multiple concurrent requests "
    "to a single object, make your requests serially or at a lower rate. See "
    "https://stripe.com/docs/rate-limits for more details."
)


def key_mode(key: str) -> Mode:
    """`live` for live secret and restricted keys; anything else is a test key."""
    return "live" if key.startswith(("sk_live_", "rk_live_")) else "test"


def rate_error(reason: str) -> ApiError:
    """429 `rate_limit` with the reason header, no Retry-After."""
    return ApiError(
        429,
        "invalid_request_error",
        _RATE_MESSAGE,
        code="rate_limit",
        headers=[("Stripe-Rate-Limited-Reason", reason)],
        v2_type="rate_limit",
    )


def lock_error() -> ApiError:
    """429 `lock_timeout`: another call for this customer and meter is in flight."""
    return ApiError(429, "invalid_request_error", _LOCK_MESSAGE, code="lock_timeout")


class Limits:
    """Sliding one-second windows per (mode, bucket) and v1 calls in flight. Not locked:
    FakeStripe calls it under its own lock."""

    def __init__(self) -> None:
        self._windows: dict[tuple[Mode, str], collections.deque[float]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self.refused: collections.Counter[str] = collections.Counter()
        """429s answered, by reason (`lock_timeout` for the concurrency rule)."""

    def admit(self, mode: Mode, method: str, path: str, now: float) -> ApiError | None:
        """The 429 this request gets under its mode's rate, or None (then it is counted)."""
        if mode == "test":
            bucket, limit, reason = "all", TEST_RATE, "global-rate"
        elif method == "POST" and path == V1_EVENTS_PATH:
            bucket, limit, reason = "v1_events", LIVE_V1_EVENTS_RATE, "endpoint-rate"
        elif method == "POST" and path == STREAM_PATH:
            bucket, limit, reason = "stream", LIVE_STREAM_RATE, "endpoint-rate"
        else:
            bucket, limit, reason = "basic", LIVE_BASIC_RATE, "global-rate"
        window = self._windows.setdefault((mode, bucket), collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            self.refused[reason] += 1
            return rate_error(reason)
        window.append(now)
        return None

    def lock(self, key: tuple[str, str]) -> ApiError | None:
        """Take the (meter, customer) slot for one v1 call, or the `lock_timeout` 429."""
        if key in self._in_flight:
            self.refused["lock_timeout"] += 1
            return lock_error()
        self._in_flight.add(key)
        return None

    def unlock(self, key: tuple[str, str]) -> None:
        self._in_flight.discard(key)


def refuse(err: ApiError, path: str) -> Response:
    return err.render("v2" if path.startswith("/v2/") else "v1")
