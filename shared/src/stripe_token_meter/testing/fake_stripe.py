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
Billing credits (``_credits``): credit grants (create, list, retrieve, void) and the
customer's credit balance summary, the sum of live grants (FakeStripe never invoices, so
usage never consumes credit); ``grant_credit()`` sets one up without a request.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from stripe_token_meter.testing._catalog import CatalogRoutes
from stripe_token_meter.testing._credits import CreditRoutes
from stripe_token_meter.testing._faults import FaultControls, _Fault, _fault_error, _Periodic
from stripe_token_meter.testing._limits import V1_EVENTS_PATH, Limits, Mode, key_mode, refuse
from stripe_token_meter.testing._meter_events import MeterEventRoutes
from stripe_token_meter.testing._meters import MeterRoutes
from stripe_token_meter.testing._model import (
    IDEMPOTENCY_CACHE_SIZE,
    AcceptedEvent,
    _Meter,
    _Request,
)
from stripe_token_meter.testing._routes import _credential, _parse_params, _resolve
from stripe_token_meter.testing._server import Server
from stripe_token_meter.testing._webhooks import Webhooks
from stripe_token_meter.testing._wire import (
    TEST_ONLY_PREFIX,
    ApiError,
    ApiVersion,
    Response,
    dumps,
    invalid,
    mask_key,
    new_id,
    parse_form,
    rate_limited,
)

if TYPE_CHECKING:
    import stripe

__all__ = ["TEST_ONLY_PREFIX", "TEST_WEBHOOK_SECRET", "AcceptedEvent", "FakeStripe"]

TEST_WEBHOOK_SECRET = "whsec_test_fakestripe"
"""FakeStripe signs its error-report events with this unless `webhook_secret` is set."""


class FakeStripe(
    MeterEventRoutes, MeterRoutes, CatalogRoutes, CreditRoutes, FaultControls, Webhooks
):
    """Stripe billing look-alike; start it, point ``stripe.StripeClient`` at ``url``, inspect.

    All public methods are thread-safe. Attributes ``limits``, ``latency``, ``session_ttl``,
    ``rate_limit_per_second``, ``auto_customers``, ``valid_keys`` and
    ``honor_idempotency_keys`` may be assigned at any time.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, limits: bool = True) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        """Enforce Stripe's request limits by key mode (see `_limits`); False for
        throughput experiments that must not be paced by Stripe's limits."""
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
        self.webhook_url: str | None = None
        """Where error-report thin events are POSTed (None: only kept, see
        `event_notifications()`)."""
        self.webhook_secret: str = TEST_WEBHOOK_SECRET
        """The endpoint secret they are signed with (a test secret, not a real one)."""
        self.error_report_samples: int = 10
        """Sampled failed events per error code in one report (Stripe samples too)."""
        self._outgoing: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._session_modes: dict[str, str] = {}
        self._credit_grants: dict[str, dict[str, Any]] = {}
        self._credit_events: list[dict[str, Any]] = []
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
        self._limits = Limits()
        self._v2_events: dict[str, dict[str, Any]] = {}
        self._notifications: list[dict[str, str]] = []
        self._webhook_deliveries: list[tuple[str, int]] = []

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

    def reset(self) -> None:
        """Forget events, reports, counters, faults and idempotency; keep customers, meters,
        products, prices, credit grants and sessions. Latency and rate limit go back to off."""
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
                status, obj = route.handler(
                    self, _Request(args, params, now, route.api, self._mode(route.auth, authz))
                )
                response: Response = (status, obj if isinstance(obj, bytes) else dumps(obj), [])
                if idem_key and self.honor_idempotency_keys and 200 <= status < 300:
                    self._remember(idem_key, path, body, response)
            except ApiError as exc:
                response = exc.render(api)
        return None if drop else response

    def _mode(self, auth: str, authz: str | None) -> Mode:
        token = _credential(authz)
        if auth == "session":
            return "live" if self._session_modes.get(token) == "live" else "test"
        return key_mode(token)

    def _admit(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[Response | None, tuple[str, str] | None]:
        """Stripe's limits, checked as a request arrives (before its latency): the 429 it
        gets, or the v1 (meter, customer) slot it holds until answered (see `_release`)."""
        path = raw_path.partition("?")[0]
        if not self.limits or path.startswith(TEST_ONLY_PREFIX):
            return None, None
        resolved = _resolve(method, path)
        if resolved is None:
            return None, None
        authz: str | None = headers.get("Authorization")
        now = time.time()
        with self._lock:
            err = self._limits.admit(self._mode(resolved[0].auth, authz), method, path, now)
            if err is not None:
                return refuse(err, path), None
            if method != "POST" or path != V1_EVENTS_PATH:
                return None, None
            slot = self._v1_slot(body)
            if slot is None:
                return None, None
            err = self._limits.lock(slot)
            return (refuse(err, path), None) if err is not None else (None, slot)

    def _v1_slot(self, body: bytes) -> tuple[str, str] | None:
        """(meter id, customer) of a v1 meter event body, if it names an active meter."""
        try:
            params = parse_form(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        meter = self._active_meters.get(str(params.get("event_name")))
        payload = params.get("payload")
        if meter is None or not isinstance(payload, dict):
            return None
        return meter.id, str(payload.get(meter.customer_key))

    def _release(self, slot: tuple[str, str] | None) -> None:
        if slot is not None:
            with self._lock:
                self._limits.unlock(slot)

    @property
    def limit_refusals(self) -> Counter[str]:
        """429s answered for Stripe's limits, by reason (`global-rate`, `endpoint-rate`,
        `lock_timeout`); injected faults are not counted here."""
        with self._lock:
            return Counter(self._limits.refused)

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
