"""`StripeEventHandler` (+ its `StripeSpanHandler`): one `meter.record()` per LLM call.

Thin pydantic shells over LlamaIndex's instrumentation: they turn span and event
callbacks into plain calls on the billing state machine (`_billing.Tracker`, which
decides what is billed: one record per outermost LLM call), add the guard callback
that refuses a call before the provider (`_refuse.py`), and contain their own errors.
Streams are handled in `_streams.py`; usage, model and provider are read in `_usage.py`.

Handlers run on the caller's thread and LlamaIndex's dispatcher swallows whatever they
raise, so every handler method catches its own errors and reports them to the meter
(`stats()["adapter_errors"]`, logged once). With `TokenMeter(strict=True)` the error is
re-raised as well, but the dispatcher still swallows it: strict mode cannot make an
instrumentation handler fail the LLM call, it only stops records from being queued.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Final

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.span import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from pydantic import ConfigDict, Field, PrivateAttr
from stripe_token_meter import ConfigurationError, InvalidUsage, TokenMeter
from stripe_token_meter.adapter_kit import CUSTOMER_KEY, DIMENSIONS_KEY, AdapterKit, AdapterOptions

from ._billing import Tracker
from ._refuse import GuardCallback
from ._usage import LLAMA

__all__ = ["CUSTOMER_KEY", "DIMENSIONS_KEY", "StripeEventHandler", "StripeSpanHandler"]

SOURCE: Final = "llamaindex-stripe"
MAX_TRACKED_SPANS: Final = 100_000
"""Bound on spans kept, should LlamaIndex never close some (the oldest are dropped)."""

_START, _END, _PROGRESS, _EXCEPTION = 1, 2, 3, 4
_KINDS: dict[type, int | None] = {
    LLMChatStartEvent: _START,
    LLMCompletionStartEvent: _START,
    LLMChatEndEvent: _END,
    LLMCompletionEndEvent: _END,
    LLMChatInProgressEvent: _PROGRESS,
    LLMCompletionInProgressEvent: _PROGRESS,
    ExceptionEvent: _EXCEPTION,
}
_KIND_BASES: Final = tuple(_KINDS.items())
_UNSEEN: Final = 0  # `_KINDS.get` default: an event class not looked at yet


def _kind(cls: type) -> int | None:
    try:
        return _KINDS[cls]
    except KeyError:
        kind = next((k for base, k in _KIND_BASES if issubclass(cls, base)), None)
        _KINDS[cls] = kind
        return kind


class _Shared:
    """What an event handler and its span handler share: the tracker, guard and kit."""

    __slots__ = ("failed", "guard", "kit", "tracker")

    def __init__(self, kit: AdapterKit, tracker: Tracker) -> None:
        self.kit = kit
        self.tracker = tracker
        # The kit's one containment and strict rule (`kit.failed(where, exc)`).
        self.failed = kit.failed
        # A guarded meter: the callback each seen LLM's CallbackManager gets (`_refuse`).
        self.guard = GuardCallback(tracker, kit) if kit.guarded else None

    def clear(self) -> None:
        """Uninstrumented: drop every call in flight, detach the guard, release its holds."""
        self.tracker.clear()
        if self.guard is not None:
            self.guard.detach()


class StripeSpanHandler(BaseSpanHandler[BaseSpan]):
    """Tells its `StripeEventHandler` which span runs inside which; keeps no spans itself."""

    _shared: Any = PrivateAttr(default=None)

    def __init__(self, shared: _Shared) -> None:
        super().__init__()
        self._shared = shared

    @classmethod
    def class_name(cls) -> str:
        return "StripeSpanHandler"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Straight from pydantic's private storage (here and in the event handler):
        # `self._shared` goes through BaseModel.__getattr__, a measurable cost per span.
        shared: _Shared = self.__pydantic_private__["_shared"]  # type: ignore[index]
        try:
            st = shared.tracker.enter(id_, parent_id, instance)
            if shared.guard is not None and st.instance is not None:
                shared.guard.attach(st.instance)
        except Exception as exc:
            shared.failed("span_enter", exc)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        shared: _Shared = self.__pydantic_private__["_shared"]  # type: ignore[index]
        try:
            shared.tracker.exit(id_, result)
        except Exception as exc:
            shared.failed("span_exit", exc)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        shared: _Shared = self.__pydantic_private__["_shared"]  # type: ignore[index]
        try:
            shared.tracker.drop(id_)
        except Exception as exc:
            shared.failed("span_drop", exc)

    # BaseSpanHandler's abstract hooks: unused, span_enter/exit/drop are overridden.
    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return None

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return None

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return None


class StripeEventHandler(BaseEventHandler):
    """Bills each outermost LlamaIndex LLM call's tokens to a Stripe customer via `meter`.

    Use `instrument(meter)`, which also adds the `span_handler` this handler needs.
    Customer, first that applies: `instrument_tags({CUSTOMER_KEY: ...})` around the call,
    a `meter.customer()` scope, this handler's `customer_id`, the meter's default; else
    the record is dead-lettered as `missing_customer`. Dimensions: `dimensions` merged
    with `instrument_tags({DIMENSIONS_KEY: {...}})`; a non-mapping there is dead-lettered
    as `invalid_dimension`, never dropped (the adapter kit's rules, `adapter_kit.py`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    meter: TokenMeter
    customer_id: str | None = None
    dimensions: dict[str, str] = Field(default_factory=dict)
    _tracker: Any = PrivateAttr(default=None)
    _shared: Any = PrivateAttr(default=None)
    _span_handler: Any = PrivateAttr(default=None)
    _dispatcher: Any = PrivateAttr(default=None)

    def __init__(
        self,
        meter: TokenMeter,
        customer_id: str | None = None,
        dimensions: Mapping[str, str] | None = None,
    ) -> None:
        try:
            options = AdapterOptions.check(
                customer_id=customer_id, dimensions=dimensions, max_tracked=MAX_TRACKED_SPANS
            )
        except ConfigurationError as exc:
            # The error LlamaIndex's handler has always raised here (`InvalidCustomer`, ...).
            raise exc.__cause__ if isinstance(exc.__cause__, InvalidUsage) else exc from None
        fields: dict[str, Any] = {
            "meter": meter,
            "customer_id": options.customer_id,
            "dimensions": dict(options.dimensions),
        }
        super().__init__(**fields)
        self._tracker = Tracker(meter, LLAMA, options)
        self._shared = _Shared(AdapterKit(meter, options, SOURCE), self._tracker)
        self._span_handler = StripeSpanHandler(self._shared)

    @classmethod
    def class_name(cls) -> str:
        return "StripeEventHandler"

    @property
    def span_handler(self) -> StripeSpanHandler:
        """The span handler that must sit on the same dispatcher (`instrument` adds it)."""
        handler: StripeSpanHandler = self._span_handler
        return handler

    @property
    def dispatcher(self) -> Any:
        """The dispatcher `instrument()` added this handler to (None if added by hand)."""
        return self._dispatcher

    @property
    def open_holds(self) -> int:
        """Guard reservations of LLM calls not ended yet (0 when idle or without a guard)."""
        guard: GuardCallback | None = self._shared.guard
        return 0 if guard is None else guard.open_holds

    @property
    def tracked_spans(self) -> int:
        """Spans and unconsumed streams currently tracked (0 when LlamaIndex is idle)."""
        n: int = self._tracker.tracked()
        return n

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        kind = _KINDS.get(type(event), _UNSEEN)
        if kind == _UNSEEN:
            kind = _kind(type(event))
        if kind is None:
            return
        private = self.__pydantic_private__
        tracker: Tracker = private["_tracker"]  # type: ignore[index]
        try:
            if kind == _END:
                tracker.end(event.span_id, event.tags, getattr(event, "response", None))
            elif kind == _PROGRESS:
                tracker.progress(event.span_id, getattr(event, "response", None))
            elif kind == _START:
                tracker.start(event.span_id, event.tags, getattr(event, "model_dict", None))
            else:
                tracker.exception(event.span_id)
        except Exception as exc:
            private["_shared"].failed("handle", exc)  # type: ignore[index]

    def _clear(self) -> None:
        """Uninstrumented: calls in flight are dropped, the guard's holds released."""
        self._shared.clear()
