"""`TokenMeter`: the one object users create. `record()` is a hand-off; the worker does the rest.

The caller's thread only reads the customer scope and puts a tuple on a `SimpleQueue`
(about a microsecond). Validation, customer resolution, model normalisation, event
building, storage and delivery all happen on the worker thread.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .customer import _scope, customer_scope, resolve_customer
from .dimensions import ModelNormalizer, TokenTypes, keep_model, normalize_model
from .errors import ConfigurationError, InvalidDimension, InvalidUsage, MissingCustomer
from .events import MeterEvent, build_events
from .outbox import LOCAL, PENDING, Outbox, Row
from .usage import Usage, check_customer, check_text, check_timestamp
from .worker import Worker

if TYPE_CHECKING:
    import stripe

    from .transport import Transport

log = logging.getLogger("stripe_token_meter")

Counts = Literal["disjoint", "openai", "anthropic"]
Reader = Callable[..., "dict[str, Any] | None"]
"""`record_later`'s `read`: callback arguments -> `record()` keyword arguments, or None."""
_Item = tuple[Any, ...]
"""Queued: `record()`'s 6-tuple, `record_later()`'s 5-tuple, or strict mode's (events,)."""

_CONSTRUCTORS: dict[str, Callable[..., Usage]] = {
    "disjoint": Usage,
    "openai": Usage.from_openai,
    "anthropic": Usage.from_anthropic,
}


def check_api_key(api_key: str) -> None:
    """Refuse keys that cannot write meter events, naming the kind to use (never the key)."""
    if api_key.startswith("pk_"):
        raise ConfigurationError(
            "api_key: a publishable key (pk_) cannot write meter events; it is meant for browsers. "
            "Create a restricted key (rk_) with write access to 'Billing meter events'."
        )
    if not api_key.startswith(("sk_", "rk_")):
        raise ConfigurationError(
            "api_key: expected a Stripe secret (sk_) or restricted (rk_) key; restricted keys are "
            "recommended for metering"
        )


MIN_RETAIN_DELIVERED = 86_400
"""A day: `stripe-token-meter cancel` needs the row for the 24 h Stripe allows, and a row
pruned sooner would let a replay bill twice even within Stripe's own 24 h duplicate check.
Past the retention a re-recorded identifier is sent again whatever its age, so anything
shorter than the 35-day default narrows the replay protection to that window."""


def check_retain_delivered(value: object) -> float:
    """Seconds to keep delivered rows: a number of at least a day (`math.inf`: forever)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or value < MIN_RETAIN_DELIVERED
    ):
        raise ConfigurationError(
            f"retain_delivered: must be a number of seconds >= {MIN_RETAIN_DELIVERED} (one day), "
            f"got {value!r:.40}; shorter would let a replayed event bill twice even within "
            "Stripe's 24 h duplicate check and defeat `stripe-token-meter cancel`. Keep the "
            "default (35 * 86400: every timestamp Stripe accepts) or pass math.inf to keep "
            "delivered rows forever"
        )
    return float(value)


class TokenMeter:
    """Bills LLM tokens to Stripe meters, exactly once, in the background.

    Without an API key (argument or `STRIPE_API_KEY`) events go to the local ledger: the
    same SQLite file, rows marked `local`, so everything works on a fresh machine.

    `retain_delivered` (seconds, default 35 days, at least one day, `math.inf` for ever):
    how long delivered rows stay in the outbox before the worker deletes them, so the file
    and its unique identifier index stop growing. 35 days because Stripe accepts meter
    event timestamps up to 35 days old: a replay carrying an event's own timestamp is
    caught by the outbox's unique identifier for as long as Stripe would take it (a request
    id recorded again later, with a new timestamp, is a new event). Pending, dead-lettered,
    cancelled and local-ledger rows are never deleted.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        event_name: str | None = None,
        api: Literal["v2", "v1"] = "v2",
        default_customer_id: str | None = None,
        token_types: TokenTypes = "basic",
        outbox_path: str | os.PathLike[str] | None = None,
        stripe_client: stripe.StripeClient | None = None,
        api_base: str | None = None,
        strict: bool = False,
        durable: Literal["async", "sync"] = "async",
        normalize_models: bool | ModelNormalizer = True,
        customer_payload_key: str = "stripe_customer_id",
        value_payload_key: str = "value",
        max_queue: int = 100_000,
        concurrency: int | None = None,
        lease_seconds: float = 30.0,
        max_retry_delay: float = 60.0,
        retry_base_delay: float = 0.5,
        exit_timeout: float = 5.0,
        retain_delivered: float = 35 * 86400,
    ) -> None:
        if api not in ("v2", "v1"):
            raise ConfigurationError(f"api: must be 'v2' or 'v1', got {api!r}")
        if token_types not in ("basic", "detailed"):
            raise ConfigurationError(
                f"token_types: must be 'basic' or 'detailed', got {token_types!r}"
            )
        key = api_key if api_key is not None else os.environ.get("STRIPE_API_KEY") or None
        if key is not None:
            check_api_key(key)
        self.event_name = check_text(
            "event_name",
            event_name or os.environ.get("STRIPE_METER_EVENT_NAME") or "token-billing-tokens",
            100,
        )
        self.api = api
        self.token_types: TokenTypes = token_types
        self.strict = strict
        if durable not in ("async", "sync"):
            raise ConfigurationError(f"durable: must be 'async' or 'sync', got {durable!r}")
        self._write_sync = durable == "sync"
        self._retain_delivered = check_retain_delivered(retain_delivered)
        self.default_customer_id = (
            check_customer("default_customer_id", default_customer_id)
            if default_customer_id
            else None
        )
        self.customer_payload_key = check_text("customer_payload_key", customer_payload_key, 100)
        self.value_payload_key = check_text("value_payload_key", value_payload_key, 100)
        self._reserved = frozenset({"model", "token_type", customer_payload_key, value_payload_key})
        if normalize_models is True:
            self._normalizer: ModelNormalizer = normalize_model
        elif normalize_models is False:
            self._normalizer = keep_model
        else:
            self._normalizer = normalize_models
        # With a key we build a fresh client per worker (its async HTTP pool belongs to the
        # worker's event loop, and a forked child needs its own); a given client is shared.
        self._client = stripe_client
        self._key = key if stripe_client is None else None
        base = api_base or os.environ.get("STRIPE_API_BASE") or None
        self._base_addresses = {"api": base, "meter_events": base} if base else None
        self.local = self._client is None and self._key is None
        if not self.local:
            # The SDK is imported here, at construction (usually start-up), rather than by
            # the worker during the first call, where it would hold the GIL for ~0.4 s.
            from . import transport  # noqa: F401
        self._outbox_path = outbox_path
        self._max_queue = max_queue
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._max_retry_delay = max_retry_delay
        self._retry_base = retry_base_delay
        self.exit_timeout = exit_timeout
        self._setup_process()
        self.closed = False
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- process-local state (recreated in a forked child) ---------------------------------

    def _setup_process(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._outbox = Outbox(self._outbox_path)
        self._state_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._counters: dict[str, int] = {
            "recorded": 0,
            "events": 0,
            "duplicates": 0,
            "empty": 0,
            "invalid": 0,
            "no_usage": 0,
            "adapter_errors": 0,
        }
        self._last_error: str | None = None
        self._warned: set[str] = set()
        self._delivered_in_process = 0
        self._in_drain = 0
        """Records taken off the queue by a drain and not yet stored (still "queued")."""
        self._carry: list[_Item] = []
        """Records a drain took but could not store (disk full...): stored by the next one."""
        self._worker: Worker | None = None

    def _make_transport(self) -> Transport:
        # Imported here: the stripe SDK is ~95 % of importing this package, and the local
        # ledger (and every adapter import) never needs it.
        from .transport import (
            V1_CONCURRENCY,
            V2_CONCURRENCY,
            V1Transport,
            V2StreamTransport,
            make_client,
        )

        concurrency = self._concurrency or (V1_CONCURRENCY if self.api == "v1" else V2_CONCURRENCY)
        session = None
        if self._key is not None:  # our own client: made here, in the worker's event loop
            client, session = make_client(self._key, self._base_addresses, connections=concurrency)
        else:
            assert self._client is not None
            client = self._client
        if self.api == "v1":
            return V1Transport(client, session=session, concurrency=concurrency)
        return V2StreamTransport(client, session=session, concurrency=concurrency)

    def _start_worker(self) -> Worker:
        with self._state_lock:
            if self._worker is None:
                self._worker = Worker(
                    self,
                    self._outbox,
                    None if self.local else self._make_transport,
                    lease_seconds=self._lease,
                    max_retry_delay=self._max_retry_delay,
                    retry_base_delay=self._retry_base,
                    retain_delivered=self._retain_delivered,
                )
                self._worker.start()
            return self._worker

    # -- the hot path ----------------------------------------------------------------------

    def record(
        self,
        usage: Usage | None = None,
        /,
        *,
        counts: Counts = "disjoint",
        fallback_customer_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Record one LLM call. Never raises (unless `strict=True`); never blocks on I/O.

        Pass a built `Usage`, or its fields: `counts="disjoint"` takes `Usage(...)`'s fields,
        `"openai"` those of `Usage.from_openai`, `"anthropic"` those of `Usage.from_anthropic`.
        Fields are validated on the worker; a bad record is dead-lettered with its reason.
        `fallback_customer_id` (an adapter's own `customer_id`) ranks below the
        `meter.customer()` scope and above the meter's default.
        """
        try:
            item: _Item = (usage, counts, fields, _scope.get(), fallback_customer_id, time.time())
            if self.strict:
                item = (self._prepare(item),)
            self._enqueue(item)
        except Exception:
            if self.strict:
                raise
            log.exception("stripe-token-meter: record() failed; the call is kept if possible")

    def record_later(self, source: str, read: Reader, /, *args: Any) -> None:
        """For adapters: `record(**read(*args))`, with `read` run on the worker thread.

        `read` turns what a framework callback handed over into `record()`'s keyword
        arguments (`counts`, `fallback_customer_id` and the fields), or None when there is
        nothing to bill; it may call `report_missing_usage`. So reading and converting a
        response costs the caller one queue hand-off. The customer scope and the time are
        taken now, as `record()` takes them. Pass only objects the framework does not change
        after the callback (e.g. a response's usage dict, not a response object that a
        cache later rewrites). If `read` raises, the call counts in
        `stats()["adapter_errors"]` under `source`. A strict meter runs `read` at once, on
        the caller, so its errors reach the adapter.
        """
        if self.strict:
            kwargs = read(*args)
            if kwargs is not None:
                self.record(**kwargs)
            return
        try:
            self._enqueue((source, read, args, _scope.get(), time.time()))
        except Exception:
            log.exception("stripe-token-meter: record_later() failed")

    def _enqueue(self, item: _Item) -> None:
        if self._write_sync or self.closed or self._queue.qsize() >= self._max_queue:
            self._write_through(item)
        else:
            self._queue.put(item)
        if self._worker is None and not self.closed:
            self._start_worker()

    # -- worker-side work ------------------------------------------------------------------

    def _prepare(self, item: _Item) -> list[MeterEvent]:
        """Raw record -> meter events (validation, customer, model). Raises InvalidUsage."""
        usage, counts, fields, scoped, fallback, recorded_at = item
        if usage is None:
            ctor = _CONSTRUCTORS.get(counts)
            if ctor is None:
                raise InvalidUsage(
                    "counts", f"must be 'disjoint', 'openai' or 'anthropic', got {counts!r}"
                )
            try:
                usage = ctor(**fields)
            except TypeError as exc:
                raise InvalidUsage("fields", f"{exc}; see Usage's fields") from None
        elif not isinstance(usage, Usage):
            raise InvalidUsage("usage", f"must be a Usage, got {type(usage).__name__}")
        elif fields:
            raise InvalidUsage(
                "fields",
                f"a Usage was passed with fields {sorted(fields)} as well: put them on the "
                "Usage (e.g. Usage(..., customer_id='cus_...')) or pass only the fields",
            )
        if usage.dimensions:
            clash = sorted(self._reserved & usage.dimensions.keys())
            if clash:
                raise InvalidDimension(
                    "dimensions", f"keys {clash} are the meter's own payload keys"
                )
        customer = resolve_customer(usage.customer_id, scoped, fallback, self.default_customer_id)
        if customer is None:
            raise MissingCustomer(
                "customer_id",
                "no customer for this call: pass stripe_customer_id in the call's metadata, use "
                "`with meter.customer('cus_...')`, or set a handler customer_id/default_customer_id",
            )
        if customer is not usage.customer_id and customer is not self.default_customer_id:
            customer = check_customer("customer_id", customer)  # the others are checked
        ts = (
            usage.timestamp
            if usage.timestamp is not None
            else check_timestamp("timestamp", recorded_at)
        )
        events = build_events(
            usage,
            customer_id=customer,
            request_id=usage.request_id or uuid.uuid4().hex,
            timestamp=ts,
            event_name=self.event_name,
            token_types=self.token_types,
            normalizer=self._normalizer,
            customer_key=self.customer_payload_key,
            value_key=self.value_payload_key,
        )
        if not events:
            self._count("empty")
        elif not (usage.input_tokens or usage.cached_input_tokens or usage.cache_write_tokens) and (
            usage.output_tokens or usage.reasoning_tokens
        ):
            # A prompt always has tokens: the input count was lost on the way, not zero.
            self._warn_once(
                f"no_input:{usage.model}",
                f"stripe-token-meter: usage for {usage.model} reports output tokens but no "
                "input tokens; billed as reported. The provider or framework dropped the "
                "input count (e.g. LangChain's ChatAnthropic streaming from a server whose "
                "message_delta lacks the cumulative usage Anthropic's API sends)",
            )
        return events

    def _events_or_reject(self, item: _Item) -> list[MeterEvent] | None:
        """A queued item's events ([] if dead-lettered); None if it was not a record."""
        if len(item) == 1:  # strict mode: prepared on the caller
            events: list[MeterEvent] = item[0]
            return events
        if len(item) == 5:  # from record_later(): read it first
            read_item = self._read_later(item)
            if read_item is None:
                return None
            item = read_item
        try:
            return self._prepare(item)
        except InvalidUsage as exc:
            self._reject(exc, item)
        except Exception as exc:  # e.g. a user normaliser that raised: keep the record
            self._reject(InvalidUsage("record", f"{type(exc).__name__}: {exc}"), item)
        return []

    def _read_later(self, item: _Item) -> _Item | None:
        """A `record_later()` item -> a `record()` item, or None if `read` gave nothing."""
        source, read, args, scoped, recorded_at = item
        try:
            kwargs = read(*args)
        except Exception as exc:
            self.report_adapter_error(source, exc)
            return None
        if kwargs is None:
            return None
        fields = dict(kwargs)
        counts = fields.pop("counts", "disjoint")
        fallback = fields.pop("fallback_customer_id", None)
        return (None, counts, fields, scoped, fallback, recorded_at)

    def _reject(self, exc: InvalidUsage, item: _Item) -> None:
        usage, counts, fields, scoped, fallback, recorded_at = item
        record = dict(fields)
        if isinstance(usage, Usage):
            record.update({k: getattr(usage, k) for k in Usage.__dataclass_fields__})
        elif usage is not None:
            record["usage"] = repr(usage)[:200]
        record.update(
            counts=counts,
            scope_customer=scoped,
            fallback_customer=fallback,
            recorded_at=recorded_at,
        )
        self._outbox.reject(exc.code, exc.field, exc.message, record)
        self._count("invalid")
        self._warn_once(
            f"invalid:{exc.code}", f"stripe-token-meter: usage dead-lettered ({exc.code}): {exc}"
        )

    def _store(self, events: list[MeterEvent], lease_owner: str | None = None) -> list[Row]:
        """Events into the outbox; leased to `lease_owner` (the worker, to send them next)."""
        if not events:
            return []
        rows: list[Row] = []
        if lease_owner is not None and not self.local:
            rows = self._outbox.add_leased(events, lease_owner, self._lease, api=self.api)
            added = len(rows)
        else:
            added = self._outbox.add(events, LOCAL if self.local else PENDING, api=self.api)
        self._count("events", added)
        if added < len(events):
            self._count("duplicates", len(events) - added)
        return rows

    def _drain_queue(
        self, limit: int = 500, lease_owner: str | None = None
    ) -> tuple[int, list[Row]]:
        """Move queued records into the outbox (one transaction): (records moved, rows leased).

        Holds `_drain_lock` from the first `get` to the commit, so `flush()` can tell
        "queue empty" apart from "taken off the queue but not yet stored". Batches stay
        small so a caller writing through (queue full) never waits long for the outbox.
        With `lease_owner`, the new rows come back already claimed by it. If storing fails
        (disk full, database locked), the records taken are kept for the next drain.
        """
        rows: list[Row] = []
        get = self._queue.get_nowait
        with self._drain_lock:
            taken, self._carry = self._carry, []
            try:
                while len(taken) < limit:
                    self._in_drain = len(taken) + 1  # counted before it leaves the queue
                    try:
                        taken.append(get())
                    except queue.Empty:
                        break
                self._in_drain = len(taken)
                if taken:
                    events: list[MeterEvent] = []
                    recorded = 0
                    for item in taken:
                        got = self._events_or_reject(item)
                        if got is not None:
                            events.extend(got)
                            recorded += 1
                    rows = self._store(events, lease_owner)
                    self._count("recorded", recorded)
            except BaseException:
                self._carry = taken  # nothing taken off the queue is lost
                raise
            finally:
                self._in_drain = len(self._carry)
        return len(taken), rows

    def _write_through(self, item: _Item) -> None:
        """`durable="sync"`, after close() or past the queue bound: straight to the outbox."""
        try:
            events = self._events_or_reject(item)
            if events is not None:
                self._store(events)
        except Exception:
            self._queue.put(item)  # kept in memory: the next drain stores it
            raise
        if events is not None:
            self._count("recorded")
        if self._worker is not None:
            self._worker.wake.set()

    def _count(self, name: str, n: int = 1) -> None:
        with self._state_lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def _note_error(self, code: str, message: str) -> None:
        self._last_error = f"{code}: {message}"[:500]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # -- for adapters ----------------------------------------------------------------------

    def report_missing_usage(self, source: str, fix: str) -> None:
        """An LLM call finished without token usage: count it, warn once naming the fix."""
        self._count("no_usage")
        self._warn_once(
            f"no_usage:{source}",
            f"stripe-token-meter: {source} reported no token usage for an LLM call, so nothing "
            f"was billed for it (counted in stats()['no_usage']). Fix: {fix}",
        )

    def report_adapter_error(self, source: str, exc: BaseException) -> None:
        """An adapter failed to translate a callback: count it, log once with the traceback."""
        self._count("adapter_errors")
        self._note_error("adapter_error", f"{source}: {type(exc).__name__}: {exc}")
        if f"adapter:{source}" not in self._warned:
            self._warned.add(f"adapter:{source}")
            log.error("stripe-token-meter: %s failed to handle a callback", source, exc_info=exc)

    # -- public control --------------------------------------------------------------------

    def customer(self, customer_id: str) -> AbstractContextManager[str]:
        """`with meter.customer("cus_..."):` bills every call inside to that customer."""
        return customer_scope(customer_id)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is delivered, dead-lettered or in the ledger."""
        deadline = time.monotonic() + timeout
        worker = self._worker
        if worker is None and not self.closed and self._outbox.has_pending():
            worker = self._start_worker()  # e.g. a fresh process draining a crashed one's rows
        while True:
            if worker is not None and worker.alive:
                worker.wake.set()
            else:
                self._drain_queue(limit=10**9)
            if self._queue.empty() and not self._carry:
                with self._drain_lock:  # wait out a drain that took items but has not stored them
                    # ... and look again: a drain that failed to store carries them over
                    settled = self._queue.empty() and not self._carry
                if settled and (self.local or not self._outbox.has_pending()):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    async def aflush(self, timeout: float = 10.0) -> bool:
        """`flush()` without blocking the event loop (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.flush, timeout)

    def stats(self) -> dict[str, Any]:
        """Counters for this process plus the outbox's state (shared across processes).

        `delivered` counts the delivered rows the outbox still keeps (`retain_delivered`,
        35 days by default), not every event ever delivered.
        """
        counts = self._outbox.counts()
        with self._state_lock:
            c = dict(self._counters)
        worker = self._worker
        return {
            "queued": self._queue.qsize() + self._in_drain,
            "recorded": c["recorded"],
            "events": c["events"],
            "pending": counts["pending"],
            "retrying": counts["retrying"],
            "delivered": counts["delivered"],
            "local": counts["local"],
            "dead_lettered": counts["dead"] + counts["rejected"],
            "dead_events": counts["dead"],
            "invalid": counts["rejected"],
            "cancelled": counts["cancelled"],
            "duplicates": c["duplicates"],
            "empty": c["empty"],
            "no_usage": c["no_usage"],
            "adapter_errors": c["adapter_errors"],
            "paused": bool(worker and worker.hold_until > time.time()),
            "last_error": self._last_error,
            "mode": "local" if self.local else self.api,
            "outbox": self._outbox.path,
        }

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker: queued records go to the outbox, delivery is tried up to `timeout`."""
        if self.closed:
            return
        self.closed = True
        wait = self.exit_timeout if timeout is None else timeout
        worker = self._worker
        if worker is not None and worker.alive:
            worker.deadline = time.monotonic() + wait
            worker.stop_requested.set()
            worker.wake.set()
            worker.join(wait + 1.0)
        self._drain_queue(limit=10**9)  # anything the worker did not take is kept

    def __enter__(self) -> TokenMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_at_exit(ref: weakref.ReferenceType[TokenMeter]) -> None:
    meter = ref()
    if meter is not None:
        try:
            meter.close()
        except Exception:
            log.exception("stripe-token-meter: close at exit failed; events stay in the outbox")


def _after_fork(ref: weakref.ReferenceType[TokenMeter]) -> None:
    meter = ref()
    if meter is not None:
        # The parent's thread, queue and SQLite connection do not survive fork: start fresh.
        meter._setup_process()
