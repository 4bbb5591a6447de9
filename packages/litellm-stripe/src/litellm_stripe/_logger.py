"""`StripeLogger`: a LiteLLM `CustomLogger` that records each successful call's tokens.

Where LiteLLM runs the hooks (litellm 1.110):

- `log_pre_api_call` runs on the caller, inside the call (sync: the calling thread;
  async: the executor LiteLLM runs the call in, with the caller's context copied).
- A sync, non-streaming call's `log_success_event` runs on LiteLLM's logging thread pool
  with the caller's context copied (`utils.py`, `contextvars.copy_context()` before
  `executor.submit`); a sync *stream*'s runs on the pool without it
  (`streaming_handler.py`, `executor.submit(self.logging_obj.success_handler, ...)`).
- `async_log_success_event` runs on LiteLLM's logging worker in a copy of the caller's
  context, except when the worker's atexit flush runs leftovers after the host's event
  loop ended (`logging_worker.py`, `_flush_on_exit`): those run with no context at all.

So a `meter.customer()` scope is captured in `log_pre_api_call`, keyed by
`litellm_call_id`, and used at success; the map is bounded and entries are dropped when
the call succeeds or fails.

Refusing a call (a meter with a guard): `log_pre_api_call` cannot refuse, LiteLLM swallows
its exceptions (`Logging.pre_call`, `except Exception`). `async_pre_call_deployment_hook`
can: `utils.client`'s `wrapper_async` awaits it for every async call (`acompletion`,
`aembedding`, `atext_completion`, the Router's async calls) after the deployment is
picked and before the cache and the HTTP request, and lets its exceptions through as
they are. LiteLLM runs no such hook for the *sync* `completion()` (nor the Router's sync
calls), so those cannot be refused from a callback. The proxy asks
`async_pre_call_hook` first, where a refusal becomes an HTTP 402 answer.

LiteLLM also *loses* async success callbacks when the host's loop ends right after the
call: `asyncio.run()` cancels its tasks, and with them the task that enqueues the callback
(`utils.py`, `_schedule_async_success_logging` -> `spawn_logging_task`) and callbacks the
worker had dequeued; in litellm 1.110 `asyncio.run(main())` with one `acompletion` runs
no success callback at all. LiteLLM additionally runs an async call's success on its
logging *thread pool* for loggers that override only `log_success_event`
(`litellm_logging.py`, `_get_completed_success_callbacks(asynchronous=False)` and
`handle_sync_success_callbacks_for_async_calls`), and that pool is drained at interpreter
exit. So each `StripeLogger` registers a companion (`_ThreadPath`, overriding only
`log_success_event`) in `litellm.success_callback` on its first call: async calls are
reported on both paths, and the dedupe on `litellm_call_id` bills them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

import litellm
from litellm.integrations.custom_logger import CustomLogger
from stripe_token_meter import CreditExhausted, TokenMeter, current_customer
from stripe_token_meter.adapter_kit import (
    CUSTOMER_KEY,
    DIMENSIONS_KEY,
    AdapterKit,
    AdapterOptions,
    InFlight,
    KitOptionsMixin,
    call_customer,
    merge_dimensions,
)

from . import _extract as ex
from ._identity import CallIdentity, CustomerResolver

log = logging.getLogger("litellm_stripe")

__all__ = ["DIMENSIONS_KEY", "StripeLogger"]

SOURCE: Final = "litellm-stripe"
_NO_USAGE_FIX: Final = (
    "make sure the provider returns usage; for OpenAI-compatible streams pass "
    'stream_options={"include_usage": True}'
)


class _CallLog:
    """The calls billed lately: `litellm_call_id` -> the start times seen with it.

    LiteLLM reports one call more than once (the thread path, sync + async): same call id,
    same start, a *repeat*. Another call under a call id already billed (the proxy takes
    it from the client's `x-litellm-call-id`) has another start, and is billed under an
    identifier of its own. Thread-safe; the oldest call ids are dropped past `maxlen`.
    """

    def __init__(self, maxlen: int) -> None:
        self._calls: OrderedDict[str, set[int | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = maxlen

    def seen(self, call_id: str, start: int | None) -> bool:
        """True if this call (id and start) was claimed already: a repeat callback."""
        starts = self._calls.get(call_id)
        return starts is not None and (start in starts or start is None or None in starts)

    def claim(self, call_id: str, start: int | None) -> str | None:
        """The call's request id, or None if it was claimed already (a repeat).

        The first call under a call id is billed as `call_id`; a later one with another
        start as `call_id@start` (never lost, never merged with the first).
        """
        with self._lock:
            starts = self._calls.get(call_id)
            if starts is None:
                self._calls[call_id] = {start}
                if len(self._calls) > self._max:
                    self._calls.popitem(last=False)
                return call_id
            if start in starts or start is None or None in starts:
                return None
            starts.add(start)
            return f"{call_id}@{start}"

    def __len__(self) -> int:
        return len(self._calls)


class StripeLogger(KitOptionsMixin, CustomLogger):
    """Bills every successful LiteLLM call's tokens to a Stripe customer through `meter`.

    `litellm.callbacks = [StripeLogger(meter)]` covers `completion`/`acompletion`,
    streaming (billed once, after the stream ends), `Router`, `text_completion`,
    `embedding` (input tokens only) and `responses`. Failed calls and cache hits are not
    billed (`bill_cache_hits=True` bills cache hits).

    Customer, first that applies: the customer named in the call's metadata under
    `metadata_key` (the kit's `CUSTOMER_KEY`; None ignores call metadata, as the proxy
    logger does) -> `customer_resolver(CallIdentity)` -> `meter.customer()` scope around
    the call -> `customer_id` -> the meter's `default_customer_id` -> dead-lettered as
    `missing_customer`.

    Every callback is deduplicated on LiteLLM's own per-call id (`litellm_call_id`, the
    last `max_tracked` calls), also the event identifiers' prefix; never on the provider's
    response id, which servers (Ollama: `chatcmpl-<0..999>`) and proxies repeat across
    calls and customers. The logger never raises into LiteLLM: failures are counted in
    `meter.stats()["adapter_errors"]` (a strict meter re-raises them: the kit's rule).

    `thread_fallback` (default on) also takes async calls' success from LiteLLM's
    logging thread pool, so calls made right before `asyncio.run()` returns are still
    billed (LiteLLM cancels its own queued async callbacks then).

    With `TokenMeter(guard=...)` async calls (`acompletion`, `aembedding`, the Router's)
    whose customer has no credit raise `CreditExhausted` before the HTTP request, and the
    proxy answers them with HTTP 402. LiteLLM has no hook that can stop a sync
    `completion()`: check `meter.before_call()` yourself there (see the module doc).
    """

    def __new__(cls, meter: Any = None, *args: Any, **kwargs: Any) -> StripeLogger:
        # A guarded meter gets the subclass with the pre-call hooks (see `_GuardedStripeLogger`).
        # `meter` is optional here only so copy/pickle (`cls.__new__(cls)`) keep working.
        if cls is StripeLogger and isinstance(meter, TokenMeter) and meter.guarded:
            cls = _GuardedStripeLogger
        return super().__new__(cls)

    def __init__(
        self,
        meter: TokenMeter,
        customer_id: str | None = None,
        dimensions: Mapping[str, str] | None = None,
        customer_resolver: CustomerResolver | None = None,
        bill_cache_hits: bool = False,
        *,
        metadata_key: str | None = CUSTOMER_KEY,
        call_types: Iterable[str] | None = None,
        max_tracked: int = 10_000,
        thread_fallback: bool = True,
        missing_customer_hint: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(meter, TokenMeter):
            raise TypeError(
                f"meter: expected a stripe_token_meter.TokenMeter, got {type(meter).__name__}"
            )
        if customer_resolver is not None and not callable(customer_resolver):
            raise TypeError("customer_resolver: expected a callable taking a CallIdentity")
        options = AdapterOptions.check(
            customer_id=customer_id, dimensions=dimensions, max_tracked=max_tracked
        )
        self.meter = meter
        self._kit = AdapterKit(meter, options, SOURCE)
        self.customer_resolver = customer_resolver
        self.bill_cache_hits = bill_cache_hits
        self.metadata_key = metadata_key
        self.call_types = (
            frozenset(call_types) if call_types is not None else ex.BILLABLE_CALL_TYPES
        )
        # LiteLLM keeps one logger per (class, public str/bool/int attributes) in its success
        # lists (`LoggingCallbackManager._get_custom_logger_key`): a unique id keeps a second
        # StripeLogger (another meter) from being silently dropped.
        self.logger_id = uuid.uuid4().hex
        self.thread_fallback = thread_fallback
        self.missing_customer_hint = missing_customer_hint
        self._warned_missing_customer = False
        self._thread_path: _ThreadPath | None = _ThreadPath(self) if thread_fallback else None
        self._thread_path_added = False
        self._billed = _CallLog(max_tracked)
        # call id -> the customer scope captured when the call started (the kit's one rule).
        self._calls: InFlight[str, str | None] = InFlight(max_tracked)
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "recorded",
                "repeat_callbacks",
                "duplicates",
                "cache_hits",
                "failures",
                "skipped",
                "no_usage",
            ),
            0,
        )

    def stats(self) -> dict[str, int]:
        """This logger's counters (delivery is in `meter.stats()`).

        `recorded`: calls handed to the meter; `repeat_callbacks`: LiteLLM's further success
        callbacks for a call already recorded (normal: LiteLLM reports most calls twice,
        see the module doc), ignored; `duplicates`: calls that arrived under a
        `litellm_call_id` already billed for another call (through the proxy, a client
        reusing `x-litellm-call-id`), billed under an identifier of their own;
        `cache_hits`: cache hits not billed; `failures`: failed calls (not billed);
        `skipped`: call types that are not billed (reads of stored objects); `no_usage`:
        calls without token usage; `in_flight`: calls started (seen by `log_pre_api_call`)
        that LiteLLM has not reported yet; `holds`: guard reservations of calls not ended
        yet (a meter with a guard).
        """
        with self._counts_lock:
            out = dict(self._counts)
        out["in_flight"] = len(self._calls)
        out["holds"] = self._kit.open_holds
        return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until LiteLLM has reported every call started so far, then `meter.flush()`.

        LiteLLM runs success callbacks after the call returned, on its own threads: call
        this (or `aflush()`) before reading `meter.stats()` or ending a short-lived job.
        False if something was still pending at `timeout` (e.g. a stream never consumed).
        """
        deadline = time.monotonic() + timeout
        while len(self._calls) and time.monotonic() < deadline:
            time.sleep(0.005)
        settled = len(self._calls) == 0
        return self.meter.flush(max(0.0, deadline - time.monotonic())) and settled

    async def aflush(self, timeout: float = 10.0) -> bool:
        """`flush()` for async code: first runs LiteLLM's queued async callbacks on this loop."""
        deadline = time.monotonic() + timeout
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
        except (ImportError, AttributeError, asyncio.TimeoutError):
            pass
        remaining = max(0.0, deadline - time.monotonic())
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, remaining)

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    # -- LiteLLM hooks ----------------------------------------------------------------------

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        # On the caller: capture the meter.customer() scope while it is still visible.
        try:
            if not self._thread_path_added:
                self._add_thread_path()
            cid = kwargs.get("litellm_call_id")
            if cid:
                self._calls.put(str(cid), current_customer())
        except Exception as exc:
            self._failed("log_pre_api_call", exc)

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_success(kwargs, response_obj, end_time)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_success(kwargs, response_obj, end_time)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_failure(kwargs)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._on_failure(kwargs)

    # -- the work -------------------------------------------------------------------------

    def _add_thread_path(self) -> None:
        with self._counts_lock:
            if self._thread_path_added:
                return
            self._thread_path_added = True
        if self._thread_path is not None and self._thread_path not in litellm.success_callback:
            litellm.logging_callback_manager.add_litellm_success_callback(self._thread_path)

    def _on_failure(self, kwargs: Any) -> None:
        try:
            self._count("failures")
            if isinstance(kwargs, Mapping):
                cid = ex.call_id(kwargs)
                if cid is not None:
                    self._calls.pop(cid)
                    self._kit.release(cid)
        except Exception as exc:
            self._failed("log_failure_event", exc)

    def _on_success(self, kwargs: Any, response_obj: Any, end_time: Any) -> None:
        try:
            self._record(kwargs, response_obj, end_time)
        except Exception as exc:
            self._failed("log_success_event", exc)
        finally:
            if isinstance(kwargs, Mapping):
                with contextlib.suppress(Exception):
                    cid = ex.call_id(kwargs)
                    if cid is not None:
                        self._calls.pop(cid)
                        self._kit.release(cid)

    def _record(self, kwargs: Any, response_obj: Any, end_time: Any) -> None:
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"kwargs: expected LiteLLM's model_call_details dict, got {type(kwargs).__name__}"
            )
        slo = ex.standard_payload(kwargs)
        cid = ex.call_id(kwargs, slo)
        if ex.is_cache_hit(kwargs, slo) and not self.bill_cache_hits:
            self._count("cache_hits")
            return
        ctype = ex.call_type(kwargs, slo)
        if ctype is not None and ctype not in self.call_types:
            self._count("skipped")
            return
        start = ex.call_start(kwargs, slo)
        if cid is not None and self._billed.seen(cid, start):
            self._count("repeat_callbacks")
            return
        found = ex.usage_fields(
            response_obj, kwargs, slo, input_only=ctype in ex.INPUT_ONLY_CALL_TYPES
        )
        if found is None:
            self._count("no_usage")
            self.meter.report_missing_usage("LiteLLM", _NO_USAGE_FIX)
            return
        counts, fields = found
        metadata = ex.call_metadata(kwargs)
        captured = self._calls.get(cid) if cid is not None else None
        customer = self._customer(kwargs, slo, metadata, captured)
        rid = None
        if cid is not None:
            rid = self._billed.claim(cid, start)
            if rid is None:
                self._count("repeat_callbacks")  # the other path took it meanwhile
                return
            if rid != cid:
                self._count("duplicates")
        if (
            customer is None
            and self.missing_customer_hint is not None
            and not self._warned_missing_customer
            and self.customer_id is None
            and self.meter.default_customer_id is None
        ):
            self._warn_missing_customer(ex.identity(kwargs, slo, metadata))
        self.meter.record(
            counts=counts,
            fallback_customer_id=self.customer_id,
            customer_id=customer,
            model=ex.model(response_obj, kwargs, slo, metadata),
            provider=ex.provider(kwargs, slo),
            request_id=rid,
            timestamp=ex.timestamp(end_time),
            dimensions=self._dimensions(metadata),
            **fields,
        )
        self._count("recorded")

    def _customer(
        self,
        kwargs: Mapping[str, Any],
        slo: Mapping[str, Any],
        metadata: Mapping[str, Any],
        captured: str | None,
    ) -> Any:
        """The call's customer, or None to let the meter fall back (handler, default)."""
        if self.metadata_key is not None:
            named = call_customer(metadata, self.metadata_key)
            if named is not None:
                return named  # validated by the core: a bad id is dead-lettered, never rerouted
        if self.customer_resolver is not None:
            # The resolver maps the call's own identity: like metadata, it is the call's
            # customer, so it outranks an ambient scope (ARCHITECTURE's precedence).
            try:
                resolved = self.customer_resolver(ex.identity(kwargs, slo, metadata))
            except Exception as exc:
                self._failed("customer_resolver", exc)
                resolved = None
            if resolved is not None and resolved != "":
                return resolved
        if captured is not None:
            return captured
        return current_customer()

    def _dimensions(self, metadata: Mapping[str, Any]) -> Any:
        """The logger's dimensions under the call's own (none read without `metadata_key`)."""
        per_call = metadata.get(DIMENSIONS_KEY) if self.metadata_key is not None else None
        return merge_dimensions(self._kit.options, per_call)

    def _warn_missing_customer(self, identity: CallIdentity) -> None:
        """Once: the core's `missing_customer` advice names the SDK's sources, not the
        proxy's, so say where this logger looks (`missing_customer_hint`)."""
        with self._counts_lock:
            if self._warned_missing_customer:
                return
            self._warned_missing_customer = True
        log.warning(
            "litellm-stripe: a call had no Stripe customer (key alias %r, team %r) and is "
            "dead-lettered as missing_customer. %s",
            identity.user_api_key_alias,
            identity.user_api_key_team_id,
            self.missing_customer_hint,
        )

    def _failed(self, where: str, exc: Exception) -> None:
        """The kit's containment: counted in `meter.stats()`; a strict meter re-raises."""
        self._kit.failed(where, exc)

    def __repr__(self) -> str:
        return (
            f"StripeLogger(event_name={self.meter.event_name!r}, customer_id={self.customer_id!r})"
        )


class _GuardedStripeLogger(StripeLogger):
    """A `StripeLogger` whose meter has a guard: it also asks the guard before each call.

    A class of its own so an unguarded logger does not override LiteLLM's pre-call hooks:
    LiteLLM then keeps its usual path (it checks for overridden hooks per class), and the
    proxy does not call a hook that has nothing to do.
    """

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """Before an async call's HTTP request: refuse it (`CreditExhausted`) when its
        customer has no credit left. Runs only for a meter with a guard; modifies nothing."""
        try:
            ctype = getattr(call_type, "value", call_type)
            if ctype is not None and ctype not in self.call_types:
                return None
            cid = ex.call_id(kwargs)
            if cid is not None and self._kit.reserved(cid):
                return None  # asked already (the proxy's pre-call hook, or a retry)
            view = _request_view(kwargs)
            metadata = ex.call_metadata(view)
            customer = self._customer(view, {}, metadata, None)
            model = kwargs.get("model")
            self._kit.reserve(
                cid,
                _text(customer),
                model=model if isinstance(model, str) else None,
                provider=ex.provider(kwargs, {}) or "",
            )
        except CreditExhausted:
            # CreditExhausted.status_code is 402: the Router does not retry a 4xx (it retried
            # a plain exception twice, with back-off, asking the guard each time).
            raise
        except Exception as exc:
            self._failed("async_pre_call_deployment_hook", exc)
        return None

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """The LiteLLM proxy, before routing: a refused call is answered with HTTP 402 and
        the reason (customer id, "no credit"); the provider is never called."""
        try:
            if call_type is not None and call_type not in self.call_types:
                return None
            view = _request_view(data)
            metadata = ex.call_metadata(view)
            for name, attr in (
                ("user_api_key_metadata", "metadata"),
                ("user_api_key_team_metadata", "team_metadata"),
            ):
                if not isinstance(metadata.get(name), Mapping):
                    value = getattr(user_api_key_dict, attr, None)
                    if isinstance(value, Mapping):
                        metadata[name] = value
            view["litellm_params"] = {"metadata": metadata}
            customer = self._customer(view, {}, metadata, None)
            # The request's model is the proxy's alias, not the deployment's: not passed.
            self._kit.reserve(ex.call_id(data), _text(customer))
        except CreditExhausted as exc:
            raise _payment_required(exc) from None
        except Exception as exc:
            self._failed("async_pre_call_hook", exc)
        return None


def _request_view(data: Mapping[str, Any]) -> dict[str, Any]:
    """A request's kwargs (before LiteLLM built `model_call_details`) in the shape the
    success path reads: metadata under `litellm_params`, so the customer resolves alike."""
    return {
        "litellm_params": {
            "metadata": data.get("metadata"),
            "litellm_metadata": data.get("litellm_metadata"),
        },
        "litellm_call_id": data.get("litellm_call_id"),
        "user": data.get("user"),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _payment_required(exc: CreditExhausted) -> Exception:
    """The proxy turns an `HTTPException` into that status and an OpenAI-style error body."""
    try:
        from fastapi import HTTPException
    except ImportError:  # not running in the proxy
        return exc
    return HTTPException(status_code=402, detail=str(exc))


class _ThreadPath(CustomLogger):
    """Overrides only `log_success_event`, so LiteLLM also reports async calls to it on its
    logging thread pool, which survives the host's event loop ending (see module doc)."""

    def __init__(self, owner: StripeLogger) -> None:
        super().__init__()
        self.logger_id = owner.logger_id
        self._owner = owner

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._owner._on_success(kwargs, response_obj, end_time)

    def __repr__(self) -> str:
        return f"_ThreadPath({self._owner!r})"
