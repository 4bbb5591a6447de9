"""Sending events through the official `stripe` SDK: v2 meter event stream or v1 meter events.

Transports only talk to Stripe and say what each answer means (via `retry.classify`); the
worker decides what to do with the outcomes. There is no transport for the local ledger:
without a key, events are written to the outbox already marked `local`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import anyio
import stripe

from .outbox import Row
from .retry import Outcome, Verdict, classify

_DELIVERED = Outcome(Verdict.DELIVERED)
SESSION_MARGIN = 60.0
"""Renew a v2 session this many seconds before Stripe says it expires (15-minute tokens)."""


class Transport(Protocol):
    """Sends one batch; returns one outcome per row, in order."""

    api: str
    batch_size: int
    concurrency: int

    async def send(self, rows: Sequence[Row]) -> list[Outcome]: ...

    async def aclose(self) -> None: ...


@functools.lru_cache(maxsize=4096)
def _iso(ts: int) -> str:
    """RFC 3339 for the v2 stream; cached, as a backlog's events share their seconds."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_expiry(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + 14 * 60.0


class V2StreamTransport:
    """`/v2/billing/meter_event_stream`: up to 100 events a request, session-token auth."""

    api = "v2"

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        batch_size: int = 100,
        concurrency: int = 4,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self.batch_size = min(batch_size, 100)
        self.concurrency = concurrency
        self._token: str | None = None
        self._expires = 0.0
        self._lock = anyio.Lock()

    async def _session_token(self, renew: bool = False) -> str:
        async with self._lock:
            if renew or self._token is None or time.time() >= self._expires - SESSION_MARGIN:
                session = await self._client.v2.billing.meter_event_session.create_async()
                self._token = session.authentication_token
                self._expires = _parse_expiry(session.expires_at)
            assert self._token is not None
            return self._token

    async def _post(self, rows: Sequence[Row], token: str) -> None:
        events = [
            {
                "event_name": r.event.event_name,
                "identifier": r.event.identifier,
                "payload": r.event.payload,
                "timestamp": _iso(r.event.timestamp),
            }
            for r in rows
        ]
        await self._client.v2.billing.meter_event_stream.create_async(
            {"events": events},  # type: ignore[typeddict-item]
            options={"api_key": token},
        )

    async def send(self, rows: Sequence[Row]) -> list[Outcome]:
        renew = False
        for _ in range(3):
            try:
                token = await self._session_token(renew)
                await self._post(rows, token)
                return [_DELIVERED] * len(rows)
            except Exception as exc:  # classified below; nothing escapes the worker
                outcome = classify(exc)
            if outcome.verdict is not Verdict.RENEW_SESSION:
                break
            renew = True
        if outcome.verdict is Verdict.DEAD and len(rows) > 1:
            # Stripe rejected the request for one bad event: bisect to find it, send the rest.
            mid = len(rows) // 2
            return await self.send(rows[:mid]) + await self.send(rows[mid:])
        if outcome.verdict is Verdict.RENEW_SESSION:
            outcome = Outcome(Verdict.RETRY, outcome.code, outcome.message)
        return [outcome] * len(rows)

    async def aclose(self) -> None:
        if self._owns_client:
            await _close_client(self._client)


class V1Transport:
    """`/v1/billing/meter_events`: one event a request, several requests in flight."""

    api = "v1"
    batch_size = 1

    def __init__(
        self, client: stripe.StripeClient, *, concurrency: int = 16, owns_client: bool = False
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self.concurrency = concurrency

    async def send(self, rows: Sequence[Row]) -> list[Outcome]:
        out: list[Outcome] = []
        for r in rows:
            e = r.event
            try:
                await self._client.v1.billing.meter_events.create_async(
                    {
                        "event_name": e.event_name,
                        "identifier": e.identifier,
                        "payload": e.payload,
                        "timestamp": e.timestamp,
                    }
                )
                out.append(_DELIVERED)
            except Exception as exc:  # classified; nothing escapes the worker
                out.append(classify(exc))
        return out

    async def aclose(self) -> None:
        if self._owns_client:
            await _close_client(self._client)


async def _close_client(client: stripe.StripeClient) -> None:
    """Close the async HTTP pool we opened, so interpreter exit does not hang on it."""
    http = getattr(getattr(client, "_requestor", None), "_client", None)
    close = getattr(http, "close_async", None)
    if close is not None:
        with contextlib.suppress(Exception):  # best effort: the worker is ending anyway
            await close()


def make_client(api_key: str, base_addresses: dict[str, str] | None = None) -> stripe.StripeClient:
    """A `StripeClient` on httpx (async capable), no SDK retries: ours are in `retry.py`."""
    kwargs: dict[str, Any] = {"http_client": stripe.HTTPXClient(), "max_network_retries": 0}
    if base_addresses:
        kwargs["base_addresses"] = base_addresses
    return stripe.StripeClient(api_key, **kwargs)
