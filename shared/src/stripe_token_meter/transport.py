"""Sending events through the official `stripe` SDK: v2 meter event stream or v1 meter events.

Transports only talk to Stripe and say what each answer means (via `retry.classify`); the
worker decides what to do with the outcomes. There is no transport for the local ledger:
without a key, events are written to the outbox already marked `local`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Final, Protocol

import aiohttp
import aiohttp.abc
import anyio
import stripe

from .outbox import Row
from .pacing import Pacer
from .retry import Outcome, Verdict, classify

_DELIVERED = Outcome(Verdict.DELIVERED)
V2_CONCURRENCY = 16
"""v2 requests in flight (100 events each). Against a 50 ms Stripe, 8 delivered 11,700
events/s and 16 delivered 19,300 (benchmarks/throughput.py --latency 0.05)."""
V1_CONCURRENCY = 64
"""v1 requests in flight (one event each): 470 events/s at 32 and 600 at 64 against 50 ms."""
SESSION_MARGIN = 60.0
"""Renew a v2 session this many seconds before Stripe says it expires (15-minute tokens)."""


class Transport(Protocol):
    """Sends one batch; returns one outcome per row, in order.

    `lane(row)`: rows with the same lane must not be in flight together (v1: Stripe's
    one concurrent call per customer per meter); None: no such rule (v2).
    """

    api: str
    batch_size: int
    concurrency: int
    lanes: bool

    def lane(self, row: Row) -> tuple[str, str] | None: ...

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


class _EventList(list[dict[str, Any]]):
    """The events of one v2 request, as the SDK's debug log should show them.

    The SDK form-encodes every request's params for its debug log, JSON (v2) bodies
    included: 2.8 ms of CPU per 100-event request, a quarter of the worker's time. An
    object with an `id` attribute is logged as that id (`stripe._encode._api_encode`),
    so the list carries a short summary as its `id`; `json.dumps` still sends it as the
    plain list. Should the SDK change, this only gets slower, never wrong.
    """

    __slots__ = ("id",)

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__(events)
        self.id = f"{len(events)} events"


class _Client:
    """The transport's `StripeClient`, and the HTTP session to close with it, if ours.

    A client the meter made (from its key) comes with its session, which the transport
    closes; one the user passed in is shared as is and never closed here.
    """

    def __init__(self, client: stripe.StripeClient, session: aiohttp.ClientSession | None) -> None:
        self.client = client
        self.session = session

    async def aclose(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):  # best effort: the worker is ending anyway
                await self.session.close()


class V2StreamTransport:
    """`/v2/billing/meter_event_stream`: up to 100 events a request, session-token auth."""

    api = "v2"
    lanes = False

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        session: aiohttp.ClientSession | None = None,
        batch_size: int = 100,
        concurrency: int = V2_CONCURRENCY,
        pacer: Pacer | None = None,
    ) -> None:
        self._client = _Client(client, session)
        self.batch_size = min(batch_size, 100)
        self.concurrency = concurrency
        self.pacer = pacer or Pacer.for_client(client, "v2")
        self._token: str | None = None
        self._expires = 0.0
        self._lock = anyio.Lock()

    async def _session_token(self, expired: str | None = None) -> str:
        """The current token; a new one if none, near expiry, or `expired` is still current.

        Several sends in flight may all meet the same expired token: only the first renews
        it, the others take the new one (one session request, not one per send).
        """
        async with self._lock:
            if (
                (expired is not None and expired == self._token)
                or self._token is None
                or time.time() >= self._expires - SESSION_MARGIN
            ):
                client = self._client.client
                await self.pacer.acquire()  # sessions count toward a sandbox's 25/s too
                session = await client.v2.billing.meter_event_session.create_async()
                self._token = session.authentication_token
                self._expires = _parse_expiry(session.expires_at)
            assert self._token is not None
            return self._token

    async def _post(self, rows: Sequence[Row], token: str) -> None:
        events = _EventList(
            [
                {
                    "event_name": r.event.event_name,
                    "identifier": r.event.identifier,
                    "payload": r.event.payload,
                    "timestamp": _iso(r.event.timestamp),
                }
                for r in rows
            ]
        )
        await self.pacer.acquire()
        await self._client.client.v2.billing.meter_event_stream.create_async(
            {"events": events},  # type: ignore[typeddict-item]
            options={"api_key": token},
        )

    async def send(self, rows: Sequence[Row]) -> list[Outcome]:
        expired: str | None = None
        for _ in range(3):
            posting = False
            token: str | None = None
            try:
                token = await self._session_token(expired)
                posting = True
                await self._post(rows, token)
                self.pacer.succeeded()
                return [_DELIVERED] * len(rows)
            except Exception as exc:  # classified below; nothing escapes the worker
                outcome = classify(exc)
                _adapt(self.pacer, outcome)
                if not posting and outcome.maybe_sent:  # only the session failed: no events went
                    outcome = dataclasses.replace(outcome, maybe_sent=False)
            if outcome.verdict is not Verdict.RENEW_SESSION:
                break
            expired = token or self._token
        if outcome.verdict is Verdict.DEAD and len(rows) > 1:
            # Stripe rejected the request for one bad event: bisect to find it, send the rest.
            mid = len(rows) // 2
            return await self.send(rows[:mid]) + await self.send(rows[mid:])
        if outcome.verdict is Verdict.RENEW_SESSION:
            outcome = Outcome(Verdict.RETRY, outcome.code, outcome.message)
        return [outcome] * len(rows)

    def lane(self, row: Row) -> tuple[str, str] | None:
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


def _adapt(pacer: Pacer, outcome: Outcome) -> None:
    """A global 429 slows every request of this transport; a lock timeout does not."""
    if outcome.code == "rate_limit" and not outcome.local:
        pacer.rate_limited(outcome.retry_after)


class V1Transport:
    """`/v1/billing/meter_events`: one event a request, several requests in flight."""

    api = "v1"
    batch_size = 1
    lanes = True

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = V1_CONCURRENCY,
        pacer: Pacer | None = None,
    ) -> None:
        self._client = _Client(client, session)
        self.concurrency = concurrency
        self.pacer = pacer or Pacer.for_client(client, "v1")

    def lane(self, row: Row) -> tuple[str, str] | None:
        """Stripe allows one concurrent v1 call per customer per meter."""
        return row.event.customer_id, row.event.event_name

    async def send(self, rows: Sequence[Row]) -> list[Outcome]:
        out: list[Outcome] = []
        client = self._client.client
        for r in rows:
            e = r.event
            try:
                await self.pacer.acquire()
                await client.v1.billing.meter_events.create_async(
                    {
                        "event_name": e.event_name,
                        "identifier": e.identifier,
                        "payload": e.payload,
                        "timestamp": e.timestamp,
                    }
                )
                self.pacer.succeeded()
                out.append(_DELIVERED)
            except Exception as exc:  # classified; nothing escapes the worker
                outcome = classify(exc)
                _adapt(self.pacer, outcome)
                out.append(outcome)
        return out

    async def aclose(self) -> None:
        await self._client.aclose()


class _Resolver(aiohttp.abc.AbstractResolver):
    """aiohttp's threaded resolver, on anyio's worker threads instead of asyncio's default
    executor, which refuses new work once the interpreter is exiting: exactly when
    `close()` at exit must still reach `api.stripe.com` (it delivered 0 of 50 events)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        # abandon_on_cancel: close()'s deadline must not wait for a hanging DNS server.
        infos = await anyio.to_thread.run_sync(
            functools.partial(
                socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0, _ADDRCONFIG
            ),
            abandon_on_cancel=True,
        )
        out: list[aiohttp.abc.ResolveResult] = []
        for fam, _, proto, _, address in infos:
            if fam == socket.AF_INET6:
                if len(address) < 3:
                    continue  # no IPv6 in this Python build
                if address[3]:  # link-local: the scope id must be kept
                    name, port_text = await anyio.to_thread.run_sync(
                        socket.getnameinfo,
                        address,
                        socket.NI_NUMERICHOST | socket.NI_NUMERICSERV,
                        abandon_on_cancel=True,
                    )
                    resolved, resolved_port = name, int(port_text)
                else:
                    resolved, resolved_port = str(address[0]), int(address[1])
            elif fam == socket.AF_INET:
                resolved, resolved_port = str(address[0]), int(address[1])
            else:
                continue
            out.append(
                {
                    "hostname": host,
                    "host": resolved,
                    "port": resolved_port,
                    "family": fam,
                    "proto": proto,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        return out

    async def close(self) -> None:
        return None


_ADDRCONFIG: Final = getattr(socket, "AI_ADDRCONFIG", 0)


def env_proxy(base_addresses: dict[str, str] | None = None) -> str | None:
    """The proxy `HTTPS_PROXY`/`HTTP_PROXY` (minus `NO_PROXY`) give for Stripe, as httpx
    applied them. Read once here: aiohttp's own `trust_env` looks them up (and `~/.netrc`)
    on a thread for every request, which halved v1 throughput and fails at interpreter
    exit, when no new thread may start."""
    bases = {"api": stripe.DEFAULT_API_BASE, "meter_events": stripe.DEFAULT_METER_EVENTS_API_BASE}
    bases.update(base_addresses or {})
    proxies = urllib.request.getproxies()
    for base in bases.values():
        parts = urllib.parse.urlsplit(base)
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            return proxy
    return None


def make_client(
    api_key: str, base_addresses: dict[str, str] | None = None, *, connections: int = 100
) -> tuple[stripe.StripeClient, aiohttp.ClientSession]:
    """The worker's own `StripeClient` and its HTTP session (the caller closes it). Call it
    inside the worker's event loop: the session belongs to the loop that makes it.

    The SDK's aiohttp client, not httpx: a v1 request costs the SDK ~0.33 ms of CPU over
    aiohttp against ~1.0 ms over httpx, whose async pool also probes every pooled
    connection per request (benchmarks/README.md, finding 15). The session is built here as
    the SDK would (Stripe's CA bundle), with room for every request in flight. No SDK
    retries: ours are in `retry.py`.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path),
            limit=connections,
            resolver=_Resolver(),
        )
    )
    kwargs: dict[str, Any] = {
        "http_client": stripe.AIOHTTPClient(session=session, proxy=env_proxy(base_addresses)),
        "max_network_retries": 0,
    }
    if base_addresses:
        kwargs["base_addresses"] = base_addresses
    return stripe.StripeClient(api_key, **kwargs), session
