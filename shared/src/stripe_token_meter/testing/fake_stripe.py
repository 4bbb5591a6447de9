"""FakeStripe: a local HTTP server that the real ``stripe`` SDK can bill meter events against.

Why: tests, demos and benchmarks need Stripe's metering semantics -- validation error
codes, 24 h identifier de-duplication, v2 meter-event sessions, 429s, 5xx and dropped
connections -- without the network and with the ability to inspect what was billed.
Only the standard library is used so it can run anywhere the package is installed.

Wiring the SDK (any ``sk_``/``rk_`` key works unless ``valid_keys`` is set)::

    with FakeStripe() as fake:
        client = stripe.StripeClient(
            "sk_test_fake",
            base_addresses={"api": fake.url, "meter_events": fake.url},
            http_client=stripe.RequestsClient(),  # or stripe.HTTPXClient(allow_sync_methods=True)
        )
        # (fake.client() builds exactly this)
        session = client.v2.billing.meter_event_session.create()
        client.v2.billing.meter_event_stream.create(
            {"events": [...]},
            options={"api_key": session.authentication_token},  # the session token is the bearer
        )

Rules mirrored from Stripe (see ``_accept`` for the order): inactive meter ->
``archived_meter``; customer key missing -> ``meter_event_no_customer_defined``; unknown
customer -> ``meter_event_customer_not_found``; value not a whole number ->
``meter_event_invalid_value``; timestamp > 35 days old / > 5 min ahead ->
``timestamp_too_far_in_past`` / ``_future``; identifier seen in the last 24 h -> 400 with
``An event already exists with identifier <id>.`` and ``Stripe-Should-Retry: false``.
An event whose ``event_name`` has no meter at all is accepted (HTTP 200) but not counted,
and reported in ``error_reports`` with code ``no_meter`` (Stripe fires a webhook instead).
The v2 stream answers ``{}`` and reports bad events in ``error_reports`` (Stripe does this
asynchronously via webhooks), duplicates with code ``duplicate_meter_event``.
POSTs honour ``Idempotency-Key`` like Stripe: a 2xx answer is replayed for a retried key
(last 50,000 keys). For ``count`` meters the value key is optional and each event counts 1.
Shape errors in a v2 request (non-string payload values, bad RFC 3339 timestamps, unknown
fields, more than 100 events) reject the whole request with a 400, as Stripe's schema does.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from json import JSONDecodeError, loads
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import unquote

from stripe_token_meter.testing._server import Server
from stripe_token_meter.testing._wire import (
    TEST_ONLY_PREFIX,
    ApiError,
    ApiVersion,
    Response,
    dumps,
    invalid,
    iso,
    mask_key,
    missing,
    new_id,
    not_found,
    opt_bool,
    opt_int,
    opt_str,
    paginate,
    parse_form,
    parse_iso,
    rate_limited,
    req_str,
    server_error,
    str_dict,
    unknown_param,
)

if TYPE_CHECKING:
    import stripe

__all__ = ["TEST_ONLY_PREFIX", "AcceptedEvent", "FakeStripe"]

DAY = 86_400
PAST_LIMIT_SECONDS = 35 * DAY
FUTURE_LIMIT_SECONDS = 300
DEDUP_WINDOW_SECONDS = DAY
MAX_STREAM_EVENTS = 100
IDEMPOTENCY_CACHE_SIZE = 50_000  # bounded: the SDK sends a fresh key on every POST
_MAX_VALUE_DIGITS = 18  # keeps values inside int64 like Stripe
_FORMULAS = ("sum", "count", "last")
_V1_EVENT_PARAMS = frozenset({"event_name", "payload", "identifier", "timestamp", "expand"})
_V2_EVENT_FIELDS = frozenset({"event_name", "payload", "identifier", "timestamp"})
_METER_PARAMS = frozenset(
    {
        "display_name",
        "event_name",
        "default_aggregation",
        "customer_mapping",
        "value_settings",
        "event_time_window",
        "dimension_payload_keys",
        "expand",
    }
)


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """One meter event FakeStripe accepted, with the customer and value its meter extracted."""

    event_name: str
    identifier: str
    payload: dict[str, str]
    timestamp: int
    api: Literal["v1", "v2"]
    customer: str
    value: int


class _Rejection(NamedTuple):
    code: str | None
    message: str
    param: str | None
    duplicate: bool = False


@dataclass
class _Fault:
    kind: Literal["fail", "drop"]
    remaining: int
    status: int
    retry_after: float | None
    path_prefix: str | None
    after_processing: bool


@dataclass
class _Periodic:
    """A standing fault: every ``every``-th matching request (``fail_every``/``drop_every``)."""

    kind: Literal["fail", "drop"]
    every: int
    statuses: tuple[int, ...]
    retry_after: float | None
    path_prefix: str | None
    after_processing: bool
    seen: int = 0
    fired: int = 0


class _Meter:
    """Internal meter; attributes are read on every event so they are plain slots."""

    __slots__ = (
        "created",
        "customer_key",
        "deactivated_at",
        "dimension_keys",
        "display_name",
        "event_name",
        "event_time_window",
        "formula",
        "id",
        "status",
        "updated",
        "value_key",
    )

    def __init__(
        self,
        event_name: str,
        display_name: str,
        formula: str,
        customer_key: str,
        value_key: str,
        dimension_keys: list[str],
        event_time_window: str | None,
        now: int,
    ) -> None:
        self.id = new_id("mtr")
        self.event_name = event_name
        self.display_name = display_name
        self.formula = formula
        self.customer_key = customer_key
        self.value_key = value_key
        self.dimension_keys = dimension_keys
        self.event_time_window = event_time_window
        self.status = "active"
        self.created = now
        self.updated = now
        self.deactivated_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``billing.meter`` object as Stripe renders it."""
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": False,
            "status": self.status,
            "status_transitions": {"deactivated_at": self.deactivated_at},
            "updated": self.updated,
            "value_settings": {"event_payload_key": self.value_key},
        }
        if self.dimension_keys:
            obj["dimension_payload_keys"] = list(self.dimension_keys)
        return obj


class _Request(NamedTuple):
    args: tuple[str, ...]
    params: dict[str, Any]
    now: float
    api: ApiVersion


_HandlerFn = Callable[["FakeStripe", _Request], tuple[int, Any]]


class _Route(NamedTuple):
    handler: _HandlerFn
    api: ApiVersion
    auth: Literal["key", "session"]


class FakeStripe:
    """Stripe billing look-alike; start it, point ``stripe.StripeClient`` at ``url``, inspect.

    All public methods are thread-safe. Attributes ``latency``, ``session_ttl``,
    ``rate_limit_per_second``, ``auto_customers``, ``valid_keys`` and
    ``honor_idempotency_keys`` may be assigned at any time.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.latency: float = 0.0
        """Seconds slept before answering each request (outside the state lock)."""
        self.session_ttl: float = 900.0
        """Lifetime of newly issued v2 meter-event session tokens."""
        self.rate_limit_per_second: int | None = None
        """Cap on requests per second per path; beyond it -> 429 + ``Retry-After``."""
        self.auto_customers: bool = False
        """Accept any ``cus_`` id as an existing customer (demos, benchmarks)."""
        self.valid_keys: set[str] | None = None
        """Accepted API keys; None accepts any ``sk_``/``rk_`` key."""
        self.honor_idempotency_keys: bool = True
        """Replay the stored 2xx answer when a POST repeats an ``Idempotency-Key``."""

        self._lock = threading.Lock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._request_ids = itertools.count(1)

        self._customers: dict[str, dict[str, Any]] = {}
        self._meters: dict[str, _Meter] = {}
        self._active_meters: dict[str, _Meter] = {}
        self._products: dict[str, dict[str, Any]] = {}
        self._prices: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, float] = {}
        self._init_volatile()

    def _init_volatile(self) -> None:
        """State that ``reset()`` forgets."""
        self._events: list[AcceptedEvent] = []
        self._seen: dict[str, tuple[float, AcceptedEvent | None]] = {}
        self._cancelled: set[str] = set()
        self._error_reports: list[dict[str, Any]] = []
        self._requests: Counter[tuple[str, str]] = Counter()
        self._faults: list[_Fault] = []
        self._periodic: list[_Periodic] = []
        self._stalls: list[tuple[float, str | None]] = []
        self._duplicates: Counter[str] = Counter()
        self._rate: dict[str, list[int]] = {}
        self._idempotency: dict[str, tuple[str, int, Response]] = {}
        self._internal_errors: list[BaseException] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeStripe:
        """Bind and serve in a daemon thread; returns self so ``FakeStripe().start()`` chains.

        After ``stop()`` it can be started again on the same port with all state kept,
        which simulates Stripe going away and coming back.
        """
        if self._server is not None:
            return self
        server = Server((self.host, self.port), self)
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"FakeStripe:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open keep-alive connection (Stripe 'goes away')."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = None
        self._thread = None
        # shutdown() waits for serve_forever's select() to time out; a throwaway
        # connection wakes it at once so stop() (and test teardown) is fast.
        # Poke until shutdown() returns: a poke that lands before the flag is set is harmless.
        waker = threading.Thread(target=server.shutdown, daemon=True)
        waker.start()
        while waker.is_alive():
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                pass
            waker.join(0.01)
        server.server_close()
        server.close_all_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError("FakeStripe is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def base_addresses(self) -> dict[str, str]:
        """The ``base_addresses`` to pass to ``stripe.StripeClient``."""
        return {"api": self.url, "meter_events": self.url}

    def client(
        self,
        api_key: str = "sk_test_fake",
        *,
        async_http: bool = False,
        max_network_retries: int = 0,
    ) -> stripe.StripeClient:
        """A ``stripe.StripeClient`` wired to this server.

        ``async_http=False`` uses ``RequestsClient`` (with an httpx fallback so
        ``*_async`` methods still work); ``True`` uses
        ``HTTPXClient(allow_sync_methods=True)``. Retries default to 0 so injected
        faults surface as exceptions instead of being retried away by the SDK.
        """
        import stripe

        http_client: stripe.HTTPClient
        if async_http:
            http_client = stripe.HTTPXClient(allow_sync_methods=True)
        else:
            http_client = stripe.RequestsClient(async_fallback_client=stripe.HTTPXClient())
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": self.url, "meter_events": self.url},
            http_client=http_client,
            max_network_retries=max_network_retries,
        )

    # ------------------------------------------------------------------ setup helpers

    def create_customer(
        self,
        customer_id: str | None = None,
        *,
        email: str | None = None,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Create a customer (id chosen by the caller, unlike the API) and return its id."""
        with self._lock:
            cid = customer_id or new_id("cus")
            self._customers[cid] = self._customer_obj(cid, email, name, metadata or {}, time.time())
            return cid

    def create_meter(
        self,
        event_name: str,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        *,
        formula: Literal["sum", "count", "last"] = "sum",
        display_name: str | None = None,
        dimension_keys: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create an active meter; ``ValueError`` if one is already active for ``event_name``."""
        with self._lock:
            if event_name in self._active_meters:
                raise ValueError(f"an active meter for event_name {event_name!r} already exists")
            meter = _Meter(
                event_name,
                display_name or event_name,
                formula,
                customer_key,
                value_key,
                list(dimension_keys or []),
                None,
                int(time.time()),
            )
            self._meters[meter.id] = meter
            self._active_meters[event_name] = meter
            return meter.to_json()

    def meters(self) -> list[dict[str, Any]]:
        """Every meter (active and inactive), oldest first."""
        with self._lock:
            return [m.to_json() for m in self._meters.values()]

    def customers(self) -> list[str]:
        """Ids of every explicitly created customer."""
        with self._lock:
            return list(self._customers)

    # ------------------------------------------------------------------ inspection

    def events(
        self,
        customer: str | None = None,
        event_name: str | None = None,
        *,
        include_cancelled: bool = False,
    ) -> list[AcceptedEvent]:
        """Accepted events in acceptance order (cancelled ones hidden by default)."""
        with self._lock:
            cancelled = self._cancelled
            return [
                e
                for e in self._events
                if (customer is None or e.customer == customer)
                and (event_name is None or e.event_name == event_name)
                and (include_cancelled or e.identifier not in cancelled)
            ]

    def identifiers(self, *, include_cancelled: bool = False) -> list[str]:
        """Identifiers of accepted events, in order; handy for exactly-once assertions."""
        return [e.identifier for e in self.events(include_cancelled=include_cancelled)]

    def identifier_counts(self) -> dict[str, Any]:
        """How often each identifier was accepted and refused as a duplicate (JSON-ready).

        ``{"accepted": A, "duplicates": D, "cancelled": C, "identifiers": {id: {"accepted":
        a, "duplicates": d, "cancelled": bool}}}``: ``accepted`` counts events recorded (as
        ``events(include_cancelled=True)`` lists them; events with no meter are not
        recorded), ``duplicates`` counts events refused because the identifier was seen in
        the last 24 h (v1/v2 400s and v2 stream ``duplicate_meter_event`` reports).
        Accepted identifiers come first in acceptance order, then duplicate-only ones.
        Idempotent replays (same ``Idempotency-Key``) count as neither. This is what
        ``GET /_fake/identifiers`` answers.
        """
        with self._lock:
            cancelled = self._cancelled
            out: dict[str, dict[str, Any]] = {}
            for e in self._events:
                entry = out.get(e.identifier)
                if entry is None:
                    out[e.identifier] = {
                        "accepted": 1,
                        "duplicates": 0,
                        "cancelled": e.identifier in cancelled,
                    }
                else:
                    entry["accepted"] += 1
            for identifier, n in self._duplicates.items():
                entry = out.get(identifier)
                if entry is None:
                    out[identifier] = {"accepted": 0, "duplicates": n, "cancelled": False}
                else:
                    entry["duplicates"] = n
            return {
                "accepted": len(self._events),
                "duplicates": sum(self._duplicates.values()),
                "cancelled": sum(1 for v in out.values() if v["cancelled"]),
                "identifiers": out,
            }

    def cancelled_identifiers(self) -> set[str]:
        """Identifiers cancelled through meter event adjustments."""
        with self._lock:
            return set(self._cancelled)

    def totals(self) -> dict[tuple[str, str, str], int]:
        """Summed value per (customer, payload ``model``, payload ``token_type``), uncancelled."""
        out: dict[tuple[str, str, str], int] = {}
        for e in self.events():
            key = (e.customer, e.payload.get("model", ""), e.payload.get("token_type", ""))
            out[key] = out.get(key, 0) + e.value
        return out

    @property
    def error_reports(self) -> list[dict[str, Any]]:
        """Asynchronous errors (Stripe's webhook reports): identifier, code, message, event_name."""
        with self._lock:
            return list(self._error_reports)

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Snapshot of request counts per (method, path)."""
        with self._lock:
            return Counter(self._requests)

    @property
    def internal_errors(self) -> list[BaseException]:
        """Exceptions raised inside FakeStripe itself (answered as 500); should stay empty."""
        with self._lock:
            return list(self._internal_errors)

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: float | None = 1.0,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (429 rate_limit, 5xx api_error).

        ``Retry-After`` is sent for 429 and 503 when ``retry_after`` is not None.
        """
        with self._lock:
            self._faults.append(_Fault("fail", n, status, retry_after, path_prefix, False))

    def drop_next(
        self, n: int = 1, path_prefix: str | None = None, *, after_processing: bool = False
    ) -> None:
        """Close the socket of the next ``n`` matching requests without answering.

        With ``after_processing=True`` the request takes effect first, so only the
        response is lost -- the case exactly-once delivery has to survive.
        """
        with self._lock:
            self._faults.append(_Fault("drop", n, 0, None, path_prefix, after_processing))

    def fail_every(
        self,
        n: int,
        status: int | Sequence[int] = 429,
        retry_after: float | None = 1.0,
        path_prefix: str | None = None,
    ) -> None:
        """From now on answer every ``n``-th matching request with an error, unprocessed.

        Requests are counted from this call on (any method; paths starting with
        ``path_prefix`` if given, including requests other faults answer): the ``n``-th,
        ``2n``-th, ... fail. Several statuses are used in turn: ``status=(429, 500)`` fails
        the ``n``-th with 429, the ``2n``-th with 500, the ``3n``-th with 429 again.
        ``Retry-After`` as for ``fail_next``. Lasts until ``clear_faults()`` or ``reset()``;
        ``fail_next``/``drop_next`` faults take precedence when both match a request.
        """
        statuses = (status,) if isinstance(status, int) else tuple(status)
        if n < 1 or not statuses or not all(400 <= s <= 599 for s in statuses):
            raise ValueError("fail_every needs n >= 1 and statuses in 400..599")
        with self._lock:
            self._periodic.append(_Periodic("fail", n, statuses, retry_after, path_prefix, False))

    def drop_every(
        self, n: int, path_prefix: str | None = None, *, after_processing: bool = False
    ) -> None:
        """From now on close the socket of every ``n``-th matching request without answering.

        Counted like ``fail_every``; ``after_processing`` as for ``drop_next``.
        """
        if n < 1:
            raise ValueError("drop_every needs n >= 1")
        with self._lock:
            self._periodic.append(_Periodic("drop", n, (), None, path_prefix, after_processing))

    def stall_next(self, seconds: float, path_prefix: str | None = None) -> None:
        """Hold the next matching request ``seconds`` before serving it (one slow request
        among fast ones; ``latency`` slows them all)."""
        with self._lock:
            self._stalls.append((seconds, path_prefix))

    def _take_stall(self, path: str) -> float:
        with self._lock:
            for i, (seconds, prefix) in enumerate(self._stalls):
                if prefix is None or path.startswith(prefix):
                    del self._stalls[i]
                    return seconds
        return 0.0

    def clear_faults(self) -> None:
        """Forget pending ``fail_next``/``drop_next``/``stall_next`` and ``*_every`` faults."""
        with self._lock:
            self._faults.clear()
            self._periodic.clear()
            self._stalls.clear()

    def expire_sessions(self) -> None:
        """Expire every v2 session token issued so far (new sessions are unaffected)."""
        with self._lock:
            for token in self._sessions:
                self._sessions[token] = 0.0

    def reset(self) -> None:
        """Forget events, reports, counters, faults and idempotency; keep customers, meters,
        products, prices and sessions. Latency and rate limit go back to off."""
        with self._lock:
            self._init_volatile()
            self.latency = 0.0
            self.rate_limit_per_second = None

    # ------------------------------------------------------------------ request path

    def _serve(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response | None:
        """Answer one HTTP request; None means 'drop the connection without answering'."""
        path, _, query = raw_path.partition("?")
        if path.startswith(TEST_ONLY_PREFIX):
            return self._serve_test_only(method, path)
        api: ApiVersion = "v2" if path.startswith("/v2/") else "v1"
        resolved = _resolve(method, path)
        params: dict[str, Any] = {}
        parse_error: ApiError | None = None
        if resolved is not None:
            try:
                params = _parse_params(resolved[0].api, method, query, body)
            except ApiError as exc:
                parse_error = exc
        authz: str | None = headers.get("Authorization")
        idem_key: str | None = headers.get("Idempotency-Key") if method == "POST" else None
        now = time.time()
        drop = False
        with self._lock:
            self._requests[(method, path)] += 1
            if self._faults or self._periodic:
                fault = self._take_fault(path)
                if fault is not None:
                    if fault.kind == "fail":
                        return _fault_error(fault).render(api)
                    if not fault.after_processing:
                        return None
                    drop = True
            try:
                if resolved is None:
                    raise invalid(
                        f"Unrecognized request URL ({method}: {path}). Please see "
                        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                        status=404,
                    )
                route, args = resolved
                if self.rate_limit_per_second is not None:
                    self._check_rate(path, now, self.rate_limit_per_second)
                self._authenticate(route.auth, authz, now)
                if parse_error is not None:
                    raise parse_error
                if idem_key and self.honor_idempotency_keys:
                    cached = self._idempotency.get(idem_key)
                    if cached is not None:
                        if cached[0] != path or cached[1] != hash(body):
                            raise ApiError(
                                400,
                                "idempotency_error",
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with. Try using a key other "
                                f"than '{idem_key}' if you meant to execute a different request.",
                            )
                        status, payload, extra = cached[2]
                        replay = [*extra, ("Idempotent-Replayed", "true")]
                        return None if drop else (status, payload, replay)
                status, obj = route.handler(self, _Request(args, params, now, route.api))
                response: Response = (status, obj if isinstance(obj, bytes) else dumps(obj), [])
                if idem_key and self.honor_idempotency_keys and 200 <= status < 300:
                    self._remember(idem_key, path, body, response)
            except ApiError as exc:
                response = exc.render(api)
        return None if drop else response

    def _record_internal_error(self, exc: BaseException) -> None:
        with self._lock:
            self._internal_errors.append(exc)

    def _serve_test_only(self, method: str, path: str) -> Response:
        """FakeStripe's own endpoints for other processes; never faulted, counted or authed."""
        if path == TEST_ONLY_PREFIX + "identifiers":
            if method != "GET":
                return invalid(f"Use GET for {path}.", status=405).render("v1")
            return 200, dumps(self.identifier_counts()), []
        return invalid(
            f"Unrecognized FakeStripe test-only URL ({method}: {path}); "
            f"known: GET {TEST_ONLY_PREFIX}identifiers.",
            status=404,
        ).render("v1")

    def _take_fault(self, path: str) -> _Fault | None:
        due: _Fault | None = None
        for rule in self._periodic:  # every matching request counts, fired or not
            if rule.path_prefix is None or path.startswith(rule.path_prefix):
                rule.seen += 1
                if rule.seen % rule.every == 0 and due is None:
                    status = rule.statuses[rule.fired % len(rule.statuses)] if rule.statuses else 0
                    rule.fired += 1
                    due = _Fault(
                        rule.kind, 0, status, rule.retry_after, None, rule.after_processing
                    )
        for i, fault in enumerate(self._faults):
            if fault.path_prefix is None or path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                return fault
        return due

    def _check_rate(self, path: str, now: float, limit: int) -> None:
        second = int(now)
        slot = self._rate.get(path)
        if slot is None or slot[0] != second:
            slot = [second, 0]
            self._rate[path] = slot
        if slot[1] >= limit:
            raise rate_limited(1.0)
        slot[1] += 1

    def _remember(self, key: str, path: str, body: bytes, response: Response) -> None:
        cache = self._idempotency
        if len(cache) >= IDEMPOTENCY_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = (path, hash(body), response)

    def _authenticate(self, kind: Literal["key", "session"], authz: str | None, now: float) -> None:
        token = _credential(authz)
        if kind == "session":
            expires = self._sessions.get(token)
            if expires is None:
                raise ApiError(
                    401,
                    "invalid_request_error",
                    "Invalid or unknown meter event session token. Create a session with "
                    "POST /v2/billing/meter_event_session and send its authentication_token.",
                    code="billing_meter_event_session_invalid",
                )
            if expires <= now:
                raise ApiError(
                    401,
                    "temporary_session_expired",
                    "The meter event session has expired. Create a new session with "
                    "POST /v2/billing/meter_event_session.",
                    code="billing_meter_event_session_expired",
                )
            return
        if not token:
            raise invalid(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                status=401,
            )
        if token.startswith("pk_"):
            raise invalid(
                "This API call cannot be made with a publishable API key. Please use a "
                "secret API key.",
                status=401,
            )
        valid = self.valid_keys
        if not token.startswith(("sk_", "rk_")) or (valid is not None and token not in valid):
            raise invalid(f"Invalid API Key provided: {mask_key(token)}", status=401)

    # ------------------------------------------------------------------ meter event rules

    def _accept(
        self,
        event_name: str,
        identifier: str,
        payload: dict[str, str],
        timestamp: int,
        api: Literal["v1", "v2"],
        now: float,
    ) -> _Rejection | None:
        """Apply Stripe's meter-event rules in Stripe's order; record the event if valid."""
        meter = self._active_meters.get(event_name)
        if meter is None:
            if any(m.event_name == event_name for m in self._meters.values()):
                return _Rejection(
                    "archived_meter",
                    f"The meter for event_name '{event_name}' is inactive and does not "
                    "accept meter events.",
                    "event_name",
                )
            seen = self._seen.get(identifier)
            if seen is not None and now - seen[0] < DEDUP_WINDOW_SECONDS:
                self._duplicates[identifier] += 1
                return _duplicate(identifier)
            self._seen[identifier] = (now, None)
            self._error_reports.append(
                {
                    "identifier": identifier,
                    "code": "no_meter",
                    "message": f"No active meter was found for event_name '{event_name}'.",
                    "event_name": event_name,
                }
            )
            return None
        customer = payload.get(meter.customer_key)
        if not customer:
            return _Rejection(
                "meter_event_no_customer_defined",
                f"The payload is missing the customer mapping key '{meter.customer_key}'.",
                f"payload[{meter.customer_key}]",
            )
        if customer not in self._customers and not (
            self.auto_customers and customer.startswith("cus_")
        ):
            return _Rejection(
                "meter_event_customer_not_found",
                f"No such customer: '{customer}'",
                f"payload[{meter.customer_key}]",
            )
        raw = payload.get(meter.value_key)
        if raw is None and meter.formula == "count":
            value = 1
        elif raw is None or not raw.isdigit() or not raw.isascii() or len(raw) > _MAX_VALUE_DIGITS:
            return _Rejection(
                "meter_event_invalid_value",
                f"The value for '{meter.value_key}' must be a non-negative whole number, "
                f"got {raw!r}.",
                f"payload[{meter.value_key}]",
            )
        else:
            value = 1 if meter.formula == "count" else int(raw)
        if timestamp < now - PAST_LIMIT_SECONDS:
            return _Rejection(
                "timestamp_too_far_in_past",
                "The timestamp must be within the past 35 calendar days.",
                "timestamp",
            )
        if timestamp > now + FUTURE_LIMIT_SECONDS:
            return _Rejection(
                "timestamp_too_far_in_future",
                "The timestamp cannot be more than 5 minutes in the future.",
                "timestamp",
            )
        seen = self._seen.get(identifier)
        if seen is not None and now - seen[0] < DEDUP_WINDOW_SECONDS:
            self._duplicates[identifier] += 1
            return _duplicate(identifier)
        event = AcceptedEvent(event_name, identifier, payload, timestamp, api, customer, value)
        self._seen[identifier] = (now, event)
        self._events.append(event)
        return None

    def _accept_or_raise(
        self,
        event_name: str,
        identifier: str,
        payload: dict[str, str],
        timestamp: int,
        api: Literal["v1", "v2"],
        now: float,
    ) -> None:
        rejection = self._accept(event_name, identifier, payload, timestamp, api, now)
        if rejection is None:
            return
        if rejection.duplicate:
            raise invalid(
                rejection.message,
                "duplicate_meter_event" if api == "v2" else None,
                "identifier",
                headers=[("Stripe-Should-Retry", "false")],
            )
        raise invalid(rejection.message, rejection.code, rejection.param)

    # ------------------------------------------------------------------ v1 handlers

    def _h_meter_event_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        for key in p:
            if key not in _V1_EVENT_PARAMS:
                raise unknown_param(key)
        event_name = req_str(p, "event_name")
        if "payload" not in p:
            raise missing("payload")
        payload = str_dict(p["payload"], "payload")
        timestamp = opt_int(p, "timestamp")
        ts = int(req.now) if timestamp is None else timestamp
        identifier = opt_str(p, "identifier") or str(uuid.uuid4())
        self._accept_or_raise(event_name, identifier, payload, ts, "v1", req.now)
        return 200, {
            "object": "billing.meter_event",
            "created": int(req.now),
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": ts,
        }

    def _cancel(self, req: _Request) -> tuple[str, str]:
        p = req.params
        event_name = req_str(p, "event_name")
        kind = p.get("type", "cancel")
        if kind != "cancel":
            raise invalid(
                f"Invalid type: must be one of cancel, got {kind!r}",
                "parameter_invalid_string",
                "type",
            )
        cancel = p.get("cancel")
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        if not isinstance(identifier, str) or not identifier:
            raise missing("cancel[identifier]" if req.api == "v1" else "cancel.identifier")
        seen = self._seen.get(identifier)
        event = seen[1] if seen is not None else None
        if (
            seen is None
            or event is None
            or event.event_name != event_name
            or req.now - seen[0] >= DEDUP_WINDOW_SECONDS
        ):
            raise invalid(
                f"No meter event found with identifier '{identifier}' for event_name "
                f"'{event_name}' in the last 24 hours.",
                "resource_missing",
                "cancel[identifier]",
            )
        self._cancelled.add(identifier)
        return event_name, identifier

    def _h_adjustment_create(self, req: _Request) -> tuple[int, Any]:
        event_name, identifier = self._cancel(req)
        return 200, {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": False,
            "status": "pending",
            "type": "cancel",
        }

    def _h_meter_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        for key in p:
            if key not in _METER_PARAMS:
                raise unknown_param(key)
        display_name = req_str(p, "display_name")
        event_name = req_str(p, "event_name")
        agg = p.get("default_aggregation")
        formula = agg.get("formula") if isinstance(agg, dict) else None
        if formula is None:
            raise missing("default_aggregation[formula]")
        if formula not in _FORMULAS:
            raise invalid(
                "Invalid default_aggregation[formula]: must be one of sum, count, or last",
                "parameter_invalid_string",
                "default_aggregation[formula]",
            )
        customer_key = "stripe_customer_id"
        mapping = p.get("customer_mapping")
        if mapping is not None:
            if not isinstance(mapping, dict) or not isinstance(
                mapping.get("event_payload_key"), str
            ):
                raise missing("customer_mapping[event_payload_key]")
            if mapping.get("type", "by_id") != "by_id":
                raise invalid(
                    "Invalid customer_mapping[type]: must be by_id",
                    "parameter_invalid_string",
                    "customer_mapping[type]",
                )
            customer_key = mapping["event_payload_key"]
        value_key = "value"
        settings = p.get("value_settings")
        if settings is not None:
            if not isinstance(settings, dict) or not isinstance(
                settings.get("event_payload_key"), str
            ):
                raise missing("value_settings[event_payload_key]")
            value_key = settings["event_payload_key"]
        dims = p.get("dimension_payload_keys") or []
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise invalid("Invalid array", "parameter_invalid_string", "dimension_payload_keys")
        window = opt_str(p, "event_time_window")
        if event_name in self._active_meters:
            raise invalid(
                f"An active meter with event_name '{event_name}' already exists.",
                "resource_already_exists",
                "event_name",
            )
        meter = _Meter(
            event_name, display_name, formula, customer_key, value_key, dims, window, int(req.now)
        )
        self._meters[meter.id] = meter
        self._active_meters[event_name] = meter
        return 200, meter.to_json()

    def _meter(self, meter_id: str) -> _Meter:
        meter = self._meters.get(meter_id)
        if meter is None:
            raise not_found("billing.meter", meter_id)
        return meter

    def _h_meter_list(self, req: _Request) -> tuple[int, Any]:
        status = opt_str(req.params, "status")
        items = [
            m.to_json()
            for m in reversed(self._meters.values())
            if status is None or m.status == status
        ]
        return 200, paginate(items, req.params, "/v1/billing/meters")

    def _h_meter_retrieve(self, req: _Request) -> tuple[int, Any]:
        return 200, self._meter(req.args[0]).to_json()

    def _h_meter_update(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        for key in req.params:
            if key not in ("display_name", "expand"):
                raise unknown_param(key)
        name = opt_str(req.params, "display_name")
        if name:
            meter.display_name = name
            meter.updated = int(req.now)
        return 200, meter.to_json()

    def _h_meter_deactivate(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        if meter.status == "active":
            meter.status = "inactive"
            meter.deactivated_at = meter.updated = int(req.now)
            if self._active_meters.get(meter.event_name) is meter:
                del self._active_meters[meter.event_name]
        return 200, meter.to_json()

    def _h_meter_reactivate(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        if meter.status != "active":
            other = self._active_meters.get(meter.event_name)
            if other is not None:
                raise invalid(
                    f"An active meter with event_name '{meter.event_name}' already exists "
                    f"({other.id}).",
                    "resource_already_exists",
                    "id",
                )
            meter.status = "active"
            meter.deactivated_at = None
            meter.updated = int(req.now)
            self._active_meters[meter.event_name] = meter
        return 200, meter.to_json()

    def _h_event_summaries(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        p = req.params
        customer = req_str(p, "customer")
        start = opt_int(p, "start_time")
        end = opt_int(p, "end_time")
        if start is None:
            raise missing("start_time")
        if end is None:
            raise missing("end_time")
        if end <= start:
            raise invalid(
                "end_time must be after start_time", "parameter_invalid_integer", "end_time"
            )
        window = opt_str(p, "value_grouping_window")
        if window not in (None, "hour", "day"):
            raise invalid(
                "Invalid value_grouping_window: must be one of day or hour",
                "parameter_invalid_string",
                "value_grouping_window",
            )
        step = end - start if window is None else (3600 if window == "hour" else DAY)
        if (end - start) // step > 10_000:
            raise invalid(
                "Too many grouping windows requested.", "parameter_invalid_integer", "start_time"
            )
        cancelled = self._cancelled
        relevant = [
            e
            for e in self._events
            if e.event_name == meter.event_name
            and e.customer == customer
            and start <= e.timestamp < end
            and e.identifier not in cancelled
        ]
        summaries: list[dict[str, Any]] = []
        bucket = start
        while bucket < end:
            bucket_end = min(bucket + step, end)
            inside = [e for e in relevant if bucket <= e.timestamp < bucket_end]
            if meter.formula == "count":
                agg = float(len(inside))
            elif meter.formula == "last":
                agg = float(max(inside, key=lambda e: e.timestamp).value) if inside else 0.0
            else:
                agg = float(sum(e.value for e in inside))
            summaries.append(
                {
                    "id": f"mtrusg_{meter.id}_{customer}_{bucket}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": agg,
                    "customer": customer,
                    "end_time": bucket_end,
                    "livemode": False,
                    "meter": meter.id,
                    "start_time": bucket,
                }
            )
            bucket = bucket_end
        summaries.reverse()  # Stripe lists newest window first
        return 200, paginate(summaries, p, f"/v1/billing/meters/{meter.id}/event_summaries")

    def _customer_obj(
        self,
        cid: str,
        email: str | None,
        name: str | None,
        metadata: dict[str, str],
        now: float,
        description: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "customer",
            "balance": 0,
            "created": int(now),
            "currency": None,
            "delinquent": False,
            "description": description,
            "email": email,
            "livemode": False,
            "metadata": metadata,
            "name": name,
        }

    def _h_customer_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        if "id" in p:
            raise unknown_param("id")
        cid = new_id("cus")
        obj = self._customer_obj(
            cid,
            opt_str(p, "email"),
            opt_str(p, "name"),
            str_dict(p.get("metadata"), "metadata"),
            req.now,
            opt_str(p, "description"),
        )
        self._customers[cid] = obj
        return 200, obj

    def _h_customer_retrieve(self, req: _Request) -> tuple[int, Any]:
        cid = req.args[0]
        obj = self._customers.get(cid)
        if obj is None:
            if self.auto_customers and cid.startswith("cus_"):
                return 200, self._customer_obj(cid, None, None, {}, req.now)
            raise not_found("customer", cid)
        return 200, obj

    def _h_customer_delete(self, req: _Request) -> tuple[int, Any]:
        cid = req.args[0]
        if self._customers.pop(cid, None) is None:
            raise not_found("customer", cid)
        return 200, {"id": cid, "object": "customer", "deleted": True}

    def _h_customer_list(self, req: _Request) -> tuple[int, Any]:
        email = opt_str(req.params, "email")
        items = [
            c
            for c in reversed(self._customers.values())
            if email is None or c.get("email") == email
        ]
        return 200, paginate(items, req.params, "/v1/customers")

    def _h_product_create(self, req: _Request) -> tuple[int, Any]:
        return 200, self._make_product(req.params, req.now)

    def _make_product(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = req_str(p, "name")
        pid = opt_str(p, "id") or new_id("prod")
        if pid in self._products:
            raise invalid(f"Product already exists with id {pid}.", "resource_already_exists", "id")
        active = opt_bool(p, "active")
        obj: dict[str, Any] = {
            "id": pid,
            "object": "product",
            "active": True if active is None else active,
            "created": int(now),
            "default_price": None,
            "description": opt_str(p, "description"),
            "livemode": False,
            "metadata": str_dict(p.get("metadata"), "metadata"),
            "name": name,
            "type": "service",
            "unit_label": opt_str(p, "unit_label"),
            "updated": int(now),
        }
        self._products[pid] = obj
        return obj

    def _h_product_list(self, req: _Request) -> tuple[int, Any]:
        active = opt_bool(req.params, "active")
        items = [
            o for o in reversed(self._products.values()) if active is None or o["active"] == active
        ]
        return 200, paginate(items, req.params, "/v1/products")

    def _h_product_retrieve(self, req: _Request) -> tuple[int, Any]:
        obj = self._products.get(req.args[0])
        if obj is None:
            raise not_found("product", req.args[0])
        return 200, obj

    def _h_price_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        currency = req_str(p, "currency").lower()
        product_id = opt_str(p, "product")
        if product_id:
            if product_id not in self._products:
                raise invalid(f"No such product: '{product_id}'", "resource_missing", "product")
        elif isinstance(p.get("product_data"), dict):
            product_id = self._make_product(p["product_data"], req.now)["id"]
        else:
            raise missing("product")
        recurring = p.get("recurring")
        recurring_obj: dict[str, Any] | None = None
        if recurring is not None:
            if not isinstance(recurring, dict):
                raise invalid("Invalid hash", "parameter_invalid_string", "recurring")
            interval = recurring.get("interval")
            if interval not in ("day", "week", "month", "year"):
                raise missing("recurring[interval]")
            usage_type = recurring.get("usage_type", "licensed")
            meter_id = recurring.get("meter")
            if meter_id is not None and meter_id not in self._meters:
                raise invalid(
                    f"No such billing meter: '{meter_id}'", "resource_missing", "recurring[meter]"
                )
            if usage_type == "metered" and meter_id is None:
                raise missing("recurring[meter]")
            recurring_obj = {
                "interval": interval,
                "interval_count": opt_int(recurring, "interval_count", 1),
                "meter": meter_id,
                "trial_period_days": None,
                "usage_type": usage_type,
            }
        scheme = opt_str(p, "billing_scheme") or "per_unit"
        tiers_mode = opt_str(p, "tiers_mode")
        tiers = self._tiers(p.get("tiers")) if p.get("tiers") is not None else None
        if scheme == "tiered" and (tiers is None or tiers_mode not in ("graduated", "volume")):
            raise missing("tiers" if tiers is None else "tiers_mode")
        unit_amount = opt_int(p, "unit_amount")
        unit_amount_decimal = _decimal_param(p, "unit_amount_decimal")
        if unit_amount is not None and unit_amount_decimal is None:
            unit_amount_decimal = str(unit_amount)
        lookup_key = opt_str(p, "lookup_key")
        if lookup_key:
            for other in self._prices.values():
                if other["lookup_key"] == lookup_key:
                    if opt_bool(p, "transfer_lookup_key"):
                        other["lookup_key"] = None
                    else:
                        raise invalid(
                            f"A price (`{other['id']}`) already uses that lookup key.",
                            None,
                            "lookup_key",
                        )
        active = opt_bool(p, "active")
        obj: dict[str, Any] = {
            "id": new_id("price"),
            "object": "price",
            "active": True if active is None else active,
            "billing_scheme": scheme,
            "created": int(req.now),
            "currency": currency,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": str_dict(p.get("metadata"), "metadata"),
            "nickname": opt_str(p, "nickname"),
            "product": product_id,
            "recurring": recurring_obj,
            "tax_behavior": opt_str(p, "tax_behavior") or "unspecified",
            "tiers_mode": tiers_mode,
            "transform_quantity": None,
            "type": "recurring" if recurring_obj else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        if tiers is not None:
            obj["tiers"] = tiers
        self._prices[obj["id"]] = obj
        return 200, obj

    def _tiers(self, raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not raw:
            raise invalid("Invalid array", "parameter_invalid_string", "tiers")
        tiers: list[dict[str, Any]] = []
        for i, tier in enumerate(raw):
            if not isinstance(tier, dict) or "up_to" not in tier:
                raise missing(f"tiers[{i}][up_to]")
            up_to = None if tier["up_to"] == "inf" else opt_int(tier, "up_to")
            unit_amount = opt_int(tier, "unit_amount")
            flat_amount = opt_int(tier, "flat_amount")
            unit_dec = _decimal_param(tier, "unit_amount_decimal")
            flat_dec = _decimal_param(tier, "flat_amount_decimal")
            tiers.append(
                {
                    "flat_amount": flat_amount,
                    "flat_amount_decimal": flat_dec
                    or (None if flat_amount is None else str(flat_amount)),
                    "unit_amount": unit_amount,
                    "unit_amount_decimal": unit_dec
                    or (None if unit_amount is None else str(unit_amount)),
                    "up_to": up_to,
                }
            )
        if tiers[-1]["up_to"] is not None:
            raise invalid(
                "The last tier must have up_to set to inf.", "parameter_invalid_integer", "tiers"
            )
        return tiers

    def _h_price_list(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        lookup_keys = p.get("lookup_keys")
        if isinstance(lookup_keys, str):
            lookup_keys = [lookup_keys]
        product = opt_str(p, "product")
        active = opt_bool(p, "active")
        kind = opt_str(p, "type")
        items = [
            o
            for o in reversed(self._prices.values())
            if (lookup_keys is None or o["lookup_key"] in lookup_keys)
            and (product is None or o["product"] == product)
            and (active is None or o["active"] == active)
            and (kind is None or o["type"] == kind)
        ]
        return 200, paginate(items, p, "/v1/prices")

    def _h_price_retrieve(self, req: _Request) -> tuple[int, Any]:
        obj = self._prices.get(req.args[0])
        if obj is None:
            raise not_found("price", req.args[0])
        return 200, obj

    # ------------------------------------------------------------------ v2 handlers

    def _h_session_create(self, req: _Request) -> tuple[int, Any]:
        if req.params:
            raise unknown_param(next(iter(req.params)))
        token = new_id("mest_test")
        expires = req.now + self.session_ttl
        self._sessions[token] = expires
        return 200, {
            "id": new_id("mes_test"),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": iso(req.now),
            "expires_at": iso(expires),
            "livemode": False,
        }

    def _h_stream_create(self, req: _Request) -> tuple[int, Any]:
        events = req.params.get("events")
        for key in req.params:
            if key != "events":
                raise unknown_param(key)
        if not isinstance(events, list):
            raise missing("events")
        if not events:
            raise invalid("events must contain at least 1 event.", "invalid_request", "events")
        if len(events) > MAX_STREAM_EVENTS:
            raise invalid(
                f"events must contain at most {MAX_STREAM_EVENTS} events, got {len(events)}.",
                "invalid_request",
                "events",
            )
        now = req.now
        parsed = [_v2_event(raw, i, now) for i, raw in enumerate(events)]
        reports = self._error_reports
        for name, identifier, payload, ts in parsed:
            rejection = self._accept(name, identifier, payload, ts, "v2", now)
            if rejection is not None:
                reports.append(
                    {
                        "identifier": identifier,
                        "code": "duplicate_meter_event" if rejection.duplicate else rejection.code,
                        "message": rejection.message,
                        "event_name": name,
                    }
                )
        return 200, b"{}"

    def _h_v2_meter_event_create(self, req: _Request) -> tuple[int, Any]:
        name, identifier, payload, ts = _v2_event(req.params, None, req.now)
        self._accept_or_raise(name, identifier, payload, ts, "v2", req.now)
        return 200, {
            "object": "v2.billing.meter_event",
            "created": iso(req.now),
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": iso(ts),
        }

    def _h_v2_adjustment_create(self, req: _Request) -> tuple[int, Any]:
        event_name, identifier = self._cancel(req)
        return 200, {
            "id": new_id("mea_test"),
            "object": "v2.billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "created": iso(req.now),
            "event_name": event_name,
            "livemode": False,
            "status": "pending",
            "type": "cancel",
        }


# ---------------------------------------------------------------------- helpers


def _field(index: int | None, name: str) -> str:
    """Error ``param`` path for a v2 event field (``events[3].payload``) built only on error."""
    return name if index is None else f"events[{index}].{name}"


def _v2_event(raw: Any, index: int | None, now: float) -> tuple[str, str, dict[str, str], int]:
    """Synchronous shape checks for one v2 event; returns (name, identifier, payload, ts).

    Shape errors fail the whole request (Stripe validates the schema synchronously);
    business-rule errors are left to ``_accept``.
    """
    if not isinstance(raw, dict):
        where = "body" if index is None else f"events[{index}]"
        raise invalid(f"{where} must be an object.", "invalid_request", where)
    if not _V2_EVENT_FIELDS.issuperset(raw):
        raise unknown_param(_field(index, next(k for k in raw if k not in _V2_EVENT_FIELDS)))
    name = raw.get("event_name")
    if not isinstance(name, str) or not name:
        raise missing(_field(index, "event_name"))
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise missing(_field(index, "payload"))
    for k, v in payload.items():
        if not isinstance(v, str):
            where = _field(index, f"payload.{k}")
            raise invalid(f"{where} must be a string.", "invalid_request", where)
    identifier = raw.get("identifier")
    if identifier is None:
        identifier = str(uuid.uuid4())
    elif not isinstance(identifier, str) or not identifier:
        where = _field(index, "identifier")
        raise invalid(f"{where} must be a non-empty string.", "invalid_request", where)
    ts_raw = raw.get("timestamp")
    if ts_raw is None:
        return name, identifier, payload, int(now)
    try:
        if not isinstance(ts_raw, str):
            raise ValueError(ts_raw)
        return name, identifier, payload, parse_iso(ts_raw)
    except ValueError:
        where = _field(index, "timestamp")
        raise invalid(
            f"{where} must be an RFC 3339 timestamp, got {ts_raw!r}.", "invalid_request", where
        ) from None


def _duplicate(identifier: str) -> _Rejection:
    return _Rejection(
        None, f"An event already exists with identifier {identifier}.", "identifier", True
    )


def _fault_error(fault: _Fault) -> ApiError:
    if fault.status == 429:
        return rate_limited(fault.retry_after)
    if fault.status >= 500:
        return server_error(fault.status, fault.retry_after if fault.status == 503 else None)
    return invalid("Error injected by FakeStripe.", "fake_stripe_fault", status=fault.status)


def _decimal_param(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {value}", "parameter_invalid_decimal", name) from None
    return str(value)


def _credential(authz: str | None) -> str:
    """Bearer token (or Basic-auth username, which Stripe also accepts)."""
    if not authz:
        return ""
    scheme, _, value = authz.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[0]
        except ValueError:
            return ""
    return ""


def _parse_params(api: ApiVersion, method: str, query: str, body: bytes) -> dict[str, Any]:
    if method != "POST":
        return parse_form(query) if query else {}
    if api == "v1":
        try:
            return parse_form(body.decode("utf-8")) if body else {}
        except UnicodeDecodeError:
            raise invalid("Request body is not valid UTF-8.") from None
    if not body:
        return {}
    try:
        data = loads(body)
    except (JSONDecodeError, UnicodeDecodeError):
        raise invalid(
            "The request body could not be parsed as JSON.", "invalid_request", None
        ) from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.", "invalid_request", None)
    return data


_STATIC: dict[tuple[str, str], _Route] = {
    ("POST", "/v1/billing/meter_events"): _Route(FakeStripe._h_meter_event_create, "v1", "key"),
    ("POST", "/v1/billing/meter_event_adjustments"): _Route(
        FakeStripe._h_adjustment_create, "v1", "key"
    ),
    ("POST", "/v1/billing/meters"): _Route(FakeStripe._h_meter_create, "v1", "key"),
    ("GET", "/v1/billing/meters"): _Route(FakeStripe._h_meter_list, "v1", "key"),
    ("POST", "/v1/customers"): _Route(FakeStripe._h_customer_create, "v1", "key"),
    ("GET", "/v1/customers"): _Route(FakeStripe._h_customer_list, "v1", "key"),
    ("POST", "/v1/products"): _Route(FakeStripe._h_product_create, "v1", "key"),
    ("GET", "/v1/products"): _Route(FakeStripe._h_product_list, "v1", "key"),
    ("POST", "/v1/prices"): _Route(FakeStripe._h_price_create, "v1", "key"),
    ("GET", "/v1/prices"): _Route(FakeStripe._h_price_list, "v1", "key"),
    ("POST", "/v2/billing/meter_event_session"): _Route(FakeStripe._h_session_create, "v2", "key"),
    ("POST", "/v2/billing/meter_event_stream"): _Route(
        FakeStripe._h_stream_create, "v2", "session"
    ),
    ("POST", "/v2/billing/meter_events"): _Route(FakeStripe._h_v2_meter_event_create, "v2", "key"),
    ("POST", "/v2/billing/meter_event_adjustments"): _Route(
        FakeStripe._h_v2_adjustment_create, "v2", "key"
    ),
}

# (method, prefix, suffix) -> route, for paths shaped "<prefix>{id}<suffix>".
_DYNAMIC: list[tuple[str, str, str, _Route]] = [
    (
        "GET",
        "/v1/billing/meters/",
        "/event_summaries",
        _Route(FakeStripe._h_event_summaries, "v1", "key"),
    ),
    (
        "POST",
        "/v1/billing/meters/",
        "/deactivate",
        _Route(FakeStripe._h_meter_deactivate, "v1", "key"),
    ),
    (
        "POST",
        "/v1/billing/meters/",
        "/reactivate",
        _Route(FakeStripe._h_meter_reactivate, "v1", "key"),
    ),
    ("GET", "/v1/billing/meters/", "", _Route(FakeStripe._h_meter_retrieve, "v1", "key")),
    ("POST", "/v1/billing/meters/", "", _Route(FakeStripe._h_meter_update, "v1", "key")),
    ("GET", "/v1/customers/", "", _Route(FakeStripe._h_customer_retrieve, "v1", "key")),
    ("DELETE", "/v1/customers/", "", _Route(FakeStripe._h_customer_delete, "v1", "key")),
    ("GET", "/v1/products/", "", _Route(FakeStripe._h_product_retrieve, "v1", "key")),
    ("GET", "/v1/prices/", "", _Route(FakeStripe._h_price_retrieve, "v1", "key")),
]


def _resolve(method: str, path: str) -> tuple[_Route, tuple[str, ...]] | None:
    route = _STATIC.get((method, path))
    if route is not None:
        return route, ()
    for verb, prefix, suffix, route in _DYNAMIC:
        if verb == method and path.startswith(prefix) and path.endswith(suffix):
            ident = path[len(prefix) : len(path) - len(suffix)]
            if ident and "/" not in ident:
                return route, (unquote(ident),)
    return None
