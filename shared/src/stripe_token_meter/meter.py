"""`TokenMeter`: the one object users create; a facade over intake, worker and outbox.

`record()` appends the raw record to this process's journal (one `os.write`, a couple of
microseconds) and returns: from then on the call survives any death of the process.
Validation, customer resolution, model normalisation, event building, storage and
delivery all happen on the worker thread (`intake.py`, `worker.py`).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .aggregate import DEFAULT_GRACE, Aggregation, aggregate_from_env, check_aggregate_seconds
from .customer import _scope, customer_scope
from .dimensions import ModelNormalizer, TokenTypes, keep_model, normalize_model
from .errors import ConfigurationError, CreditExhausted
from .guard import Guard, GuardBinding, Hold
from .health import Health
from .intake import Intake, Reader
from .prepare import Preparer, RawRecord
from .pricing import Pricing
from .settings import check_api_key
from .storage import open_store
from .usage import Usage, check_customer, check_text
from .worker import WORKER_MODULES, Worker

if TYPE_CHECKING:
    import stripe

    from .transport import Transport

log = logging.getLogger("stripe_token_meter")

Counts = Literal["disjoint", "openai", "anthropic"]


DEFAULT_COST_EVENT_NAME = "token-billing-cost"
"""The cost events' name when `pricing` is given without `cost_event_name`."""

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

    `aggregate_seconds` (or `STRIPE_AGGREGATE_SECONDS`; 1 to 86400, default off): sum
    usage per (customer, model, token type, dimensions, window) and send one event per
    closed window instead of one per call (see `aggregate.py`). A call recorded twice
    (same request id) still counts once; `flush()` and `close()` send open windows early.

    `pricing` (a `Pricing`): each priced call also sends one event named `cost_event_name`
    (default "token-billing-cost", at most 100 characters, not `event_name`) whose value
    is the call's marked-up cost in micro-units (1 USD = 1,000,000), with the `model` and
    the call's dimensions but no `token_type`. Calls of a model without a price are billed
    in tokens only and listed in `stats()["unpriced_models"]`.

    `guard`: asked before each provider call (`before_call`); if it has `bind`, it is
    told once where usage is kept and how cost is metered (`GuardBinding`); if it has
    `record_cost`, it hears of each cost event built; `close()` closes it.
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
        guard: Guard | None = None,
        aggregate_seconds: int | None = None,
        pricing: Pricing | None = None,
        cost_event_name: str | None = None,
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
        if pricing is not None and not isinstance(pricing, Pricing):
            raise ConfigurationError(
                f"pricing: must be a stripe_token_meter.Pricing, got {type(pricing).__name__}"
            )
        if pricing is None and cost_event_name is not None:
            raise ConfigurationError(
                "cost_event_name: cost events need prices; pass pricing=Pricing({...}) too"
            )
        self.pricing = pricing
        self.cost_event_name = (
            None
            if pricing is None
            else check_text("cost_event_name", cost_event_name or DEFAULT_COST_EVENT_NAME, 100)
        )
        if self.cost_event_name is not None and self.cost_event_name == self.event_name:
            raise ConfigurationError(
                f"cost_event_name: must differ from event_name ({self.event_name!r}): cost "
                "events (micro-units) need their own meter"
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
        self._guard = guard
        self._record_cost = _guard_method(guard, "record_cost")
        seconds = (
            check_aggregate_seconds(aggregate_seconds)
            if aggregate_seconds is not None
            else aggregate_from_env()
        )
        self.aggregate_seconds = seconds
        self._aggregation = (
            None if seconds is None else Aggregation(seconds, DEFAULT_GRACE, self.value_payload_key)
        )
        self._max_queue = max_queue
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._max_retry_delay = max_retry_delay
        self._retry_base = retry_base_delay
        self.exit_timeout = exit_timeout
        # What the worker thread imports, imported now on this thread: a fork while the
        # worker was importing one left the child a half-initialised module for good.
        for module in WORKER_MODULES:
            importlib.import_module(module)
        self._setup_process()
        self.closed = False
        self._bind_guard(base)
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- process-local state (recreated in a forked child) ---------------------------------

    def _setup_process(self) -> None:
        self._health = Health()
        self._outbox = open_store(self._outbox_path)
        preparer = Preparer(
            event_name=self.event_name,
            token_types=self.token_types,
            normalizer=self._normalizer,
            default_customer_id=self.default_customer_id,
            customer_key=self.customer_payload_key,
            value_key=self.value_payload_key,
            health=self._health,
            pricing=self.pricing,
            cost_event_name=self.cost_event_name,
            on_cost=self._record_cost,
        )
        self._intake = Intake(
            self._outbox,
            preparer,
            self._health,
            local=self.local,
            api=self.api,
            max_queue=self._max_queue,
            lease_seconds=self._lease,
            journal_dir=None if self._write_sync else self._outbox.journal_home,
            aggregate=self._aggregation,
        )
        self._state_lock = threading.Lock()
        self._worker: Worker | None = None

    def _bind_guard(self, api_base: str | None) -> None:
        """Tell the guard (once) where usage is kept and how cost is metered."""
        bind = _guard_method(self._guard, "bind")
        if bind is None:
            return
        try:
            bind(
                GuardBinding(
                    outbox=self._outbox_path,
                    cost_event_name=self.cost_event_name,
                    currency=self.pricing.currency if self.pricing is not None else "usd",
                    api_key=self._key,
                    api_base=api_base,
                    stripe_client=self._client,
                )
            )
        except Exception as exc:
            self.report_adapter_error("guard", exc)

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
                    self._intake,
                    self._health,
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

        When it returns, the record is in this process's journal (the OS page cache): it
        survives SIGTERM, `os._exit` and kill -9 (see README, "Deploying").
        """
        try:
            now = time.time()
            scoped = _scope.get()
            if self.strict or self._write_sync or self.closed:
                raw = RawRecord(usage, counts, fields, scoped, fallback_customer_id, now)
                if self.strict:
                    self._intake.preparer.prepare(raw)  # raises InvalidUsage into the caller
                if self._write_sync or self.closed:
                    self._intake.write_through(raw)
                    return
            self._intake.submit_record(usage, counts, fields, scoped, fallback_customer_id, now)
            if self._worker is None:
                self._start_worker()
        except Exception as exc:
            if self.strict:
                raise
            self._failed("record", exc)

    def before_call(
        self, customer_id: str | None = None, *, model: str | None = None
    ) -> Hold | None:
        """For adapters, before the provider is called: may this call's customer spend?

        Raises `CreditExhausted` when the meter's guard refuses (the call must not be
        made); otherwise returns the guard's `Hold` for the call (or None), which the
        adapter releases when the call ends. `customer_id` is the adapter's per-call
        customer; without one the `customer()` scope, then the meter's default, is asked
        about. Any other failure of the guard is contained (the call is allowed, the error
        counted as an adapter error under "guard").
        """
        guard = self._guard
        if guard is None:
            return None
        customer = customer_id or _scope.get() or self.default_customer_id
        if customer is None:
            return None
        try:
            return guard.reserve(customer, model)
        except CreditExhausted:
            raise
        except Exception as exc:
            self.report_adapter_error("guard", exc)
            return None

    def record_later(self, source: str, read: Reader, /, *args: Any) -> None:
        """For adapters: `record(**read(*args))`, with `read` run on the worker thread.

        `read` turns what a framework callback handed over into `record()`'s keyword
        arguments (`counts`, `fallback_customer_id` and the fields), or None when there is
        nothing to bill; it may call `report_missing_usage`. So reading and converting a
        response costs the caller one journal append. The customer scope and the time are
        taken now, as `record()` takes them. `read` must be a module-level function or a
        staticmethod (the journal names it, so another process can run it after a crash;
        anything else is run at once, on the caller), and `args` plain data the framework
        does not change after the callback: counts and names, never prompt or completion
        text, since they are written to the journal. If `read` raises, the call counts in
        `stats()["adapter_errors"]` under `source`. A strict meter runs `read` at once, on
        the caller, so its errors reach the adapter.
        """
        if self.strict:
            kwargs = read(*args)
            if kwargs is not None:
                self.record(**kwargs)
            return
        try:
            if (
                self._write_sync
                or self.closed
                or not self._intake.submit_later(source, read, args, _scope.get(), time.time())
            ):
                self._read_now(source, read, args)
                return
            if self._worker is None:
                self._start_worker()
        except Exception as exc:
            self._failed("record_later", exc)

    def _read_now(self, source: str, read: Reader, args: tuple[Any, ...]) -> None:
        """`record_later` on the caller: a failing `read` is the adapter's error."""
        try:
            kwargs = read(*args)
        except Exception as exc:
            self.report_adapter_error(source, exc)
            return
        if kwargs is not None:
            self.record(**kwargs)

    def _failed(self, where: str, exc: Exception) -> None:
        self._health.note_error("record_failed", f"{where}: {type(exc).__name__}: {exc}")
        self._health.log_every(
            f"failed:{where}",
            logging.ERROR,
            f"stripe-token-meter: {where}() failed; the call may not be billed",
            exc,
        )

    # -- for adapters ----------------------------------------------------------------------

    def report_missing_usage(self, source: str, fix: str) -> None:
        """An LLM call finished without token usage: count it, warn once naming the fix."""
        self._health.count("no_usage")
        self._health.warn_once(
            f"no_usage:{source}",
            f"stripe-token-meter: {source} reported no token usage for an LLM call, so nothing "
            f"was billed for it (counted in stats()['no_usage']). Fix: {fix}",
        )

    def report_adapter_error(self, source: str, exc: BaseException) -> None:
        """An adapter failed to translate a callback: count it, log once with the traceback."""
        self._intake.report_adapter_error(source, exc)

    # -- public control --------------------------------------------------------------------

    def customer(self, customer_id: str) -> AbstractContextManager[str]:
        """`with meter.customer("cus_..."):` bills every call inside to that customer."""
        return customer_scope(customer_id)

    def flush(self, timeout: float = 10.0, *, max_wait: float | None = None) -> bool:
        """Wait until everything recorded so far is delivered, dead-lettered or in the ledger.

        "Recorded so far" includes the journals of processes that have exited (forked or
        multiprocessing children, a previous deploy killed by SIGTERM): they are moved into
        the outbox first, on this thread. `timeout` is patience, not a total: each time
        events are delivered or settled it starts again, so a large backlog that Stripe
        keeps taking (paced, or between 429s) is waited for; False once nothing moved
        for `timeout` seconds, or after `max_wait` seconds in all (a hard bound, e.g. a
        Lambda's remaining time).
        """
        deadline = time.monotonic() + timeout
        progress = _Progress(self, timeout, max_wait)
        intake = self._intake
        try:
            intake.recover_orphans()
        except Exception as exc:
            self._failed("flush", exc)
        worker = self._worker
        while True:
            if worker is None and not self.closed and not self.local and self._has_pending():
                # e.g. a fresh process draining a crashed one's rows, or windows just closed
                worker = self._start_worker()
            if worker is not None and worker.alive:
                worker.nudge()
            else:
                try:
                    intake.drain(limit=10**9)
                except Exception as exc:
                    self._failed("flush", exc)
            settled = intake.backlog() == 0 and intake.settled()
            if settled and self._close_windows():
                continue  # the windows' events are now pending
            if settled and (self.local or not self._has_pending()):
                return True
            deadline = progress.extend(deadline)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def _close_windows(self) -> int:
        """A flush sends open aggregation windows now, rather than at their end: a
        record that still falls in one goes into its next generation (never lost)."""
        try:
            return self._intake.close_windows(everything=True)
        except Exception as exc:
            self._failed("flush", exc)
            return 0

    def _has_pending(self) -> bool:
        try:
            return self._outbox.has_pending()
        except Exception as exc:
            self._health.note_error("outbox_error", repr(exc))
            return True

    async def aflush(self, timeout: float = 10.0) -> bool:
        """`flush()` without blocking the event loop (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.flush, timeout)

    def stats(self) -> dict[str, Any]:
        """Counters for this process plus the outbox's state (shared across processes).

        Never raises: if the outbox cannot be read its counts are None and `last_error`
        says why. `delivered` counts the delivered rows the outbox still keeps
        (`retain_delivered`, 35 days by default), not every event ever delivered.
        `dropped` counts records refused because neither the journal nor memory
        (`max_queue`) could take them; `worker_restarts` the times the worker crashed and
        was started again.
        """
        counts: dict[str, int | None]
        try:
            counts = dict(self._outbox.counts())
        except Exception as exc:
            self._health.note_error("outbox_error", f"{type(exc).__name__}: {exc}")
            counts = dict.fromkeys(
                ("pending", "retrying", "delivered", "local", "dead", "rejected", "cancelled")
            )
        c = self._health.snapshot()
        worker = self._worker
        dead, rejected = counts["dead"], counts["rejected"]
        return {
            "queued": self._intake.backlog(),
            "recorded": c["recorded"],
            "events": c["events"],
            "pending": counts["pending"],
            "retrying": counts["retrying"],
            "delivered": counts["delivered"],
            "local": counts["local"],
            "dead_lettered": None if dead is None or rejected is None else dead + rejected,
            "dead_events": dead,
            "invalid": rejected,
            "cancelled": counts["cancelled"],
            "duplicates": c["duplicates"],
            "empty": c["empty"],
            "no_usage": c["no_usage"],
            "adapter_errors": c["adapter_errors"],
            "dropped": c["dropped"],
            "not_journaled": c["not_journaled"],
            "worker_restarts": c["worker_restarts"],
            "recovered": c["journals_recovered"],
            "aggregating": counts.get("aggregating"),
            "paused": bool(worker and worker.paused),
            "last_error": self._health.last_error,
            "last_error_at": self._health.last_error_at,
            "last_delivery_error": _error_entry(self._health.last_delivery_error),
            "last_delivered_at": self._health.last_delivered_at,
            "unpriced_models": self._health.unpriced(),
            "mode": "local" if self.local else self.api,
            "outbox": self._outbox.label,
        }

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker: journaled records go to the outbox, delivery is tried up to `timeout`."""
        if self.closed:
            return
        wait = self.exit_timeout if timeout is None else timeout
        if self._aggregation is not None and self._worker is not None:
            # The windows this process summed are sent now, not left for the next meter.
            start = time.monotonic()
            self.flush(wait)
            wait = max(0.0, wait - (time.monotonic() - start))
        self.closed = True
        worker = self._worker
        if worker is not None and worker.alive:
            worker.stop(time.monotonic() + wait)
            worker.join(wait + 1.0)
        try:
            self._intake.close()  # anything the worker did not take is kept
        except Exception as exc:
            self._health.log_every(
                "close",
                logging.ERROR,
                "stripe-token-meter: could not move the journal into the outbox at close; it "
                "stays on disk and the next meter on this outbox takes it",
                exc,
            )
        close_guard = _guard_method(self._guard, "close")
        if close_guard is not None:
            try:
                close_guard()
            except Exception as exc:
                self.report_adapter_error("guard", exc)

    def __enter__(self) -> TokenMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _guard_method(guard: object, name: str) -> Callable[..., Any] | None:
    """The guard's optional hook `name` (see guard.py), if it has a callable one."""
    method = getattr(guard, name, None) if guard is not None else None
    return method if callable(method) else None


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
        # The parent's thread, journal and SQLite connection are the parent's: start fresh
        # (our copies of its journal descriptors are closed; the parent keeps its lock).
        journal = meter._intake.journal
        if journal is not None:
            journal.forget_in_child()
        meter._setup_process()


def _error_entry(value: tuple[str, float] | None) -> dict[str, Any] | None:
    return None if value is None else {"error": value[0], "at": value[1]}


class _Progress:
    """`flush()`'s patience: the deadline moves on whenever delivery moved (checked at
    most every `CHECK` seconds: it reads the outbox's pending count)."""

    CHECK = 0.1

    def __init__(self, meter: TokenMeter, timeout: float, max_wait: float | None) -> None:
        self._meter = meter
        self._timeout = timeout
        self._cap = math.inf if max_wait is None else time.monotonic() + max_wait
        self._next = time.monotonic() + self.CHECK
        self._seen = self._state()

    def _state(self) -> tuple[int, int, int]:
        health = self._meter._health
        try:
            pending = self._meter._outbox.pending_count()
        except Exception:
            pending = -1
        return health.delivered, pending, self._meter._intake.backlog()

    def extend(self, deadline: float) -> float:
        now = time.monotonic()
        if now < self._next:
            return deadline
        self._next = now + self.CHECK
        state = self._state()
        delivered, pending, backlog = state
        moved = (
            delivered > self._seen[0] or (0 <= pending < self._seen[1]) or backlog < self._seen[2]
        )
        self._seen = state
        if moved:
            deadline = max(deadline, now + self._timeout)
        return min(deadline, self._cap)
