"""The one retry policy: what a Stripe answer means for the events it was about.

The SDK's `StripeClient` retries nothing by default, never retries a 429 without
`Stripe-Should-Retry` and ignores `Retry-After`; so every decision is made here, once.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import stripe

DUPLICATE_MESSAGE: Final = "An event already exists with identifier"


class Verdict(Enum):
    DELIVERED = "delivered"  # accepted, or already held by Stripe (duplicate identifier)
    RETRY = "retry"  # 429, 5xx, network: try again later, same identifier
    PAUSE = "pause"  # 401/403: the key is wrong; keep everything, stop sending for a while
    DEAD = "dead"  # Stripe rejected this event for good: dead-letter with its code
    RENEW_SESSION = "renew_session"  # v2 session token expired: renew and resend now


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    maybe_sent: bool = False
    """RETRY only: Stripe may have recorded the events although the send failed (no
    answer after the request went out, a 5xx). A resend is harmless only while Stripe
    still remembers the identifiers (`DEDUP_WINDOW`)."""
    local: bool = False
    """RETRY only: the failure is about this event's customer and meter (a `lock_timeout`
    429: another call for them was in flight), not about Stripe: no outage, no global
    slow-down; the event is retried with its own backoff."""


DEDUP_WINDOW: Final = 24 * 3600.0
"""Stripe rejects a repeated meter event identifier for at least 24 hours; after that a
resend of an event it did record would be billed again (`outbox.UNCONFIRMED_LIMIT`)."""


def _never_connected(err: BaseException | None) -> bool:
    """The request never left this machine: no connection, no name, refused, bad TLS."""
    return isinstance(err, _connect_errors())


@functools.cache
def _connect_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    found: list[type[BaseException]] = [
        aiohttp.ClientConnectorError,  # refused, DNS, TLS, proxy
        ConnectionRefusedError,
        socket.gaierror,
    ]
    timeout = getattr(aiohttp, "ConnectionTimeoutError", None)  # aiohttp >= 3.10
    if isinstance(timeout, type):
        found.append(timeout)
    with contextlib.suppress(ImportError):  # a `stripe_client` of the user's on httpx
        import httpx

        found += [httpx.ConnectError, httpx.ConnectTimeout]
    return tuple(found)


def _header(err: stripe.StripeError, name: str) -> str | None:
    headers = err.headers or {}
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def _error_code(err: stripe.StripeError) -> str:
    if err.code:
        return str(err.code)
    body = err.json_body if isinstance(err.json_body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(inner, dict)
    return str(inner.get("code") or inner.get("type") or type(err).__name__)


def retry_after_seconds(err: stripe.StripeError) -> float | None:
    raw = _header(err, "Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def classify(err: BaseException) -> Outcome:
    """Map an exception from a send to what happens to its events."""
    import stripe  # here, not at import: the SDK is ~95 % of importing this package

    if not isinstance(err, stripe.StripeError):
        # aiohttp/OS errors that escaped the SDK, timeouts: transient.
        return Outcome(
            Verdict.RETRY,
            "connection_error",
            f"{type(err).__name__}: {err}",
            maybe_sent=not _never_connected(err),
        )
    message = str(err.user_message or err)
    if isinstance(err, stripe.TemporarySessionExpiredError):
        return Outcome(Verdict.RENEW_SESSION, _error_code(err), message)
    if isinstance(err, stripe.RateLimitError) or err.http_status == 429:
        return _rate_limited(err, message)
    if isinstance(err, stripe.APIConnectionError):
        # The SDK raises it `from` the HTTP client's own error.
        sent = not _never_connected(err.__cause__)
        return Outcome(Verdict.RETRY, "connection_error", message, maybe_sent=sent)
    status = err.http_status or 0
    if isinstance(err, (stripe.AuthenticationError, stripe.PermissionError)) or status in (
        401,
        403,
    ):
        return Outcome(Verdict.PAUSE, _error_code(err), message)
    if status >= 500 or status in (0, 408, 409):
        # Stripe's own word on a 5xx: the request may or may not have been processed.
        return Outcome(
            Verdict.RETRY, _error_code(err), message, retry_after_seconds(err), maybe_sent=True
        )
    if DUPLICATE_MESSAGE in message:
        return Outcome(Verdict.DELIVERED, "duplicate_identifier", message)
    if _header(err, "Stripe-Should-Retry") == "true":
        return Outcome(Verdict.RETRY, _error_code(err), message, retry_after_seconds(err))
    return Outcome(Verdict.DEAD, _error_code(err), message)


LOCK_TIMEOUT: Final = "lock_timeout"


def _rate_limited(err: stripe.StripeError, message: str) -> Outcome:
    """A 429: `lock_timeout` concerns one customer and meter (see `Outcome.local`); any
    other is Stripe's rate or concurrency limit, named by `Stripe-Rate-Limited-Reason`."""
    if _error_code(err) == LOCK_TIMEOUT:
        return Outcome(Verdict.RETRY, LOCK_TIMEOUT, message, retry_after_seconds(err), local=True)
    reason = _header(err, "Stripe-Rate-Limited-Reason")
    if reason:
        message = f"{message} (Stripe-Rate-Limited-Reason: {reason})"
    return Outcome(Verdict.RETRY, "rate_limit", message, retry_after_seconds(err))


def backoff(
    attempts: int, retry_after: float | None = None, *, base: float = 0.5, cap: float = 60.0
) -> float:
    """Capped exponential backoff with full jitter; never earlier than Retry-After."""
    delay: float = random.uniform(0.5, 1.0) * min(cap, base * (2.0 ** min(attempts, 16)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
