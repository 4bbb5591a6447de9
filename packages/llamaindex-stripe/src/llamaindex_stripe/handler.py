"""`StripeEventHandler` (+ its `StripeSpanHandler`): one `meter.record()` per LLM call.

LlamaIndex reports an LLM call as `LLM{Chat,Completion}StartEvent` ... `EndEvent`, dispatched
inside the span of the LLM method (`OpenAI.chat-<uuid>`). Many LLMs run one LLM method
inside another (`CustomLLM.chat` runs `complete`, `achat` runs `chat`, Anthropic's
`complete` runs `chat`), so one call fires several Start/End pairs. Only the outermost
LLM call is billed:

* The span handler sees every span with its parent, so each span knows its nearest
  ancestor that has an LLM call in progress. An agent, query engine or chat engine span
  is not an LLM call (it fires no LLM Start event): the LLM calls it makes are billed.
* A nested call's usage goes to that ancestor, which bills its own reported usage, or,
  if it reports none (a wrapper LLM), the usage of the calls it made. Exactly one
  record per outermost call, with the outermost span id as request id.
* Streams: the LLM span exits as soon as the generator is returned; the End event comes
  when the stream is consumed. Such a span is kept until its End event, an
  `ExceptionEvent` (the consumer stopped early or the stream failed) or the generator's
  garbage collection, then dropped. Chunks are never billed one by one: the usage the
  provider reported on them is kept (merged) and billed once. Calls an async stream's
  generator makes while being iterated (`CustomLLM.astream_chat` runs `stream_chat`
  there) get the consumer's span as parent, not the stream's: they are recognised by
  the stream's generator frame being on the calling stack.

Refusing a call (a meter with a guard): the instrumentation dispatcher swallows every
exception its event and span handlers raise (`Dispatcher.event`, `span_enter`: `except
BaseException: pass`), so none of them can stop a call. The LLM's legacy
`CallbackManager` does not: `llm_chat_callback` / `llm_completion_callback` call its
handlers' `on_event_start(CBEventType.LLM)` right after dispatching the Start event and
before calling the provider, and let their exceptions through as they are. So the span
handler adds a `_GuardCallback` to the `callback_manager` of each LLM whose span it sees
enter (before the LLM's method runs); that callback asks `meter.before_call()` for the
outermost LLM call only (the tracker knows the call's customer from its Start event) and
raises `CreditExhausted` into the caller. Its hold is released by `on_event_end`, which
LlamaIndex sends when the call returns, fails, or its stream ends or is closed.

Handlers run on the caller's thread and LlamaIndex's dispatcher swallows whatever they
raise, so every handler method catches its own errors and reports them to the meter
(`stats()["adapter_errors"]`, logged once). With `TokenMeter(strict=True)` the error is
re-raised as well, but the dispatcher still swallows it: strict mode cannot make an
instrumentation handler fail the LLM call, it only stops records from being queued.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from itertools import islice
from types import AsyncGeneratorType, FrameType, GeneratorType, MappingProxyType
from typing import Any, Final

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.schema import CBEventType
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
from llama_index.core.instrumentation.span import BaseSpan, active_span_id
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from pydantic import ConfigDict, Field, PrivateAttr
from stripe_token_meter import CreditExhausted, TokenMeter, current_customer
from stripe_token_meter.guard import Hold
from stripe_token_meter.provider_usage import Counts
from stripe_token_meter.provider_usage import UsageReport as Found
from stripe_token_meter.usage import check_customer, check_dimensions

from ._usage import (
    class_provider,
    merge,
    model_and_provider,
    response_model,
    response_usage,
)

log = logging.getLogger("llamaindex_stripe")

CUSTOMER_KEY: Final = "stripe_customer_id"
"""`instrument_tags({"stripe_customer_id": "cus_..."})` bills the calls inside to that customer."""
DIMENSIONS_KEY: Final = "stripe_dimensions"
"""`instrument_tags({"stripe_dimensions": {...}})` adds dimensions to the calls inside."""
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
_NO_TAGS: Final[Mapping[str, Any]] = MappingProxyType({})
_STREAMS: Final = (GeneratorType, AsyncGeneratorType)  # neither can be subclassed
_LLM_CLASSES: dict[type, bool] = {}  # class -> is a BaseLLM (isinstance goes through ABCMeta)
_LLM_CLASSES_MAX: Final = 1024


def _kind(cls: type) -> int | None:
    try:
        return _KINDS[cls]
    except KeyError:
        kind = next((k for base, k in _KIND_BASES if issubclass(cls, base)), None)
        _KINDS[cls] = kind
        return kind


def _new_llm_class(instance: Any) -> bool:
    """Whether `instance` is a LlamaIndex LLM, for a class not in `_LLM_CLASSES` yet."""
    is_llm = isinstance(instance, BaseLLM)
    cls = type(instance)
    if getattr(instance, "__class__", None) is cls:  # not a proxy: its class decides
        if len(_LLM_CLASSES) >= _LLM_CLASSES_MAX:
            _LLM_CLASSES.clear()
        _LLM_CLASSES[cls] = is_llm
    return is_llm


_Call = tuple[Counts, dict[str, Any], str, str | None]
"""One LLM call's reported usage, with the model that answered it:
`(counts, tokens, model, provider)`."""


class _Outcome:
    """How one LLM call ended. Turned into billable calls only at the outermost call, and
    only if needed: a nested call's usage is read only when its outer call reports none."""

    __slots__ = ("chunk", "chunk_model", "nested", "response", "st")

    def __init__(
        self,
        st: _Span,
        chunk: Found | None,
        chunk_model: str | None,
        response: Any,
        nested: list[_Outcome] | None,
    ) -> None:
        self.st = st
        self.chunk = chunk
        self.chunk_model = chunk_model
        self.response = response
        self.nested = nested


class _Span:
    """What is known about one open span (or one LLM stream not yet consumed)."""

    __slots__ = (
        "billed",
        "children",
        "chunk",
        "chunk_model",
        "chunks",
        "depth",
        "done",
        "entered",
        "gen",
        "id",
        "instance",
        "model_dict",
        "nested",
        "owner",
        "parent",
        "scope",
        "stream",
        "tags",
    )

    def __init__(
        self, span_id: str, parent: _Span | None, instance: Any, entered: bool = True
    ) -> None:
        self.id = span_id
        self.parent = parent  # nearest ancestor that had an LLM call in progress
        if instance is None:
            self.instance = None
        else:
            is_llm = _LLM_CLASSES.get(type(instance))
            if is_llm is None:
                is_llm = _new_llm_class(instance)
            self.instance = instance if is_llm else None
        self.entered = entered  # False: first seen through an event, no span_exit to expect
        self.depth = 0  # LLM calls in progress in this span (Start seen, End not yet)
        self.nested: list[_Outcome] | None = None  # LLM calls made inside the current call
        self.chunk: Found | None = None  # usage reported by stream chunks so far
        self.chunk_model: str | None = None  # model named by a stream chunk
        self.chunks = 0
        self.stream = False
        self.gen: weakref.ref[Any] | None = None
        self.children: set[_Span] | None = None  # pending streams opened inside this call
        self.owner: _Span | None = None  # the span whose `children` holds this one
        self.billed = 0  # records made for this span (request id suffix)
        self.done = False
        self.tags: Mapping[str, Any] = _NO_TAGS
        self.scope: str | None = None
        self.model_dict: Mapping[str, Any] | None = None  # the Start event's, read when billed

    @property
    def model_name(self) -> str | None:
        """The LLM's model as the Start event's `model_dict` names it."""
        name = self.model_dict.get("model_name") if self.model_dict else None
        return name if isinstance(name, str) else None

    @property
    def class_name(self) -> str | None:
        if self.instance is not None:
            return type(self.instance).__name__
        return self.model_dict.get("class_name") if self.model_dict else None


def _is_stream(result: Any) -> bool:
    return type(result) in _STREAMS  # = inspect.isgenerator(result) or isasyncgen(result)


def _add_nested(st: _Span, outcome: _Outcome) -> None:
    if st.nested is None:
        st.nested = [outcome]
    else:
        st.nested.append(outcome)


def _abandon_children(tracker: _Tracker, st: _Span) -> None:
    if st.children:
        for child in list(st.children):  # inner streams it did not consume to the end
            tracker._abandon(child)


def _gen_frame(gen: Any) -> FrameType | None:
    frame = getattr(gen, "gi_frame", None)
    if frame is None:
        frame = getattr(gen, "ag_frame", None)
    return frame if isinstance(frame, FrameType) else None


class _Collected:
    """Weakref callback of a stream's generator. It may run inside any allocation (GC), so
    it only notes the span; the next handler call finishes the stream (`_reap`)."""

    __slots__ = ("dead", "span_id")

    def __init__(self, dead: deque[str], span_id: str) -> None:
        self.dead = dead
        self.span_id = span_id

    def __call__(self, _ref: weakref.ref[Any]) -> None:
        self.dead.append(self.span_id)


class _Tracker:
    """Span tree + LLM call state shared by one event handler and its span handler."""

    def __init__(
        self, meter: TokenMeter, customer_id: str | None, dimensions: dict[str, str]
    ) -> None:
        self.meter = meter
        self.customer_id = customer_id
        self.dimensions = dimensions
        self.spans: dict[str, _Span] = {}
        self.streams: dict[str, _Span] = {}  # the pending LLM streams among `spans`
        self.dead: deque[str] = deque()  # streams whose generator was garbage-collected
        # Re-entrant: garbage collection inside a handler may close an abandoned stream,
        # whose ExceptionEvent then reaches this handler on the same thread.
        self.lock = threading.RLock()
        self._warned = False
        # A guarded meter: the callback each seen LLM's CallbackManager gets (module doc).
        self.guard: _GuardCallback | None = _GuardCallback(self) if has_guard(meter) else None

    # -- spans ------------------------------------------------------------------------------

    def enter(self, span_id: str, parent_id: str | None, instance: Any) -> None:
        with self.lock:
            if self.dead:
                self._reap()
            parent = self.spans.get(parent_id) if parent_id else None
            anchor = None
            if parent is not None:
                anchor = parent if parent.depth > 0 else parent.parent
            st = self.spans[span_id] = _Span(span_id, anchor, instance)
            if len(self.spans) > MAX_TRACKED_SPANS:
                self._evict()
        if self.guard is not None and st.instance is not None:
            self.guard.attach(st.instance)

    def exit(self, span_id: str, result: Any) -> None:
        with self.lock:
            st = self.spans.get(span_id)
            if st is None:
                return
            if st.depth == 0:
                self._forget(st)
                return
            if _is_stream(result):
                # The LLM call goes on while the caller consumes the stream.
                st.stream = True
                st.gen = weakref.ref(result, _Collected(self.dead, span_id))
                self.streams[span_id] = st
                owner = self._active_ancestor(st)
                if owner is not None:
                    if owner.children is None:
                        owner.children = set()
                    owner.children.add(st)
                    st.owner = owner
                return
            # Start without End, yet returned: keep what nested calls reported.
            self._unfinished(st)

    def drop(self, span_id: str) -> None:
        with self.lock:
            st = self.spans.get(span_id)
            if st is None:
                return
            if st.depth > 0:  # the LLM call failed: bill the nested calls that completed
                self._unfinished(st)
            else:
                self._forget(st)

    def tracked(self) -> int:
        return len(self.spans)

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()
            self.streams.clear()
            self.dead.clear()
        if self.guard is not None:
            self.guard.detach()

    # -- events -----------------------------------------------------------------------------

    def start(self, event: BaseEvent) -> None:
        span_id = event.span_id
        if not span_id:
            return
        with self.lock:
            if self.dead:
                self._reap()
            st = self.spans.get(span_id)
            if st is None:  # instrumented mid-span, or no span handler on this dispatcher
                st = self.spans[span_id] = _Span(span_id, None, None, entered=False)
            st.depth += 1
            if st.depth > 1:
                return  # an LLM call nested in the same span: it reports to the outer one
            st.tags = dict(event.tags) if event.tags else _NO_TAGS
            st.scope = current_customer()
            model_dict = getattr(event, "model_dict", None)
            st.model_dict = (
                model_dict
                if model_dict and (type(model_dict) is dict or isinstance(model_dict, Mapping))
                else None
            )
            if self.streams and self._active_ancestor(st) is None:
                st.parent = self._running_stream(st) or st.parent

    def progress(self, event: BaseEvent) -> None:
        st = self.spans.get(event.span_id) if event.span_id else None
        if st is None:
            return
        # No lock: a stream's chunks come from its generator, which runs on one thread at
        # a time, and nothing else touches them until the stream ends.
        response = getattr(event, "response", None)
        st.chunks += 1
        found = response_usage(response)
        if found is not None:
            st.chunk = merge(st.chunk, found)
            if st.chunk_model is None:
                st.chunk_model = response_model(response)

    def end(self, event: BaseEvent) -> None:
        response = getattr(event, "response", None)
        span_id = event.span_id
        with self.lock:
            if self.dead:
                self._reap()
            st = self.spans.get(span_id) if span_id else None
            if st is None:  # nothing known about this call: bill it as it stands
                st = _Span(span_id or "", None, None, entered=False)
                st.tags = dict(event.tags) if event.tags else _NO_TAGS
                st.scope = current_customer()
                self._settle(st, _Outcome(st, None, None, response, None), report_missing=True)
                return
            if st.depth > 1:  # nested un-spanned call: the outer call in this span decides
                st.depth -= 1
                _add_nested(st, _Outcome(st, st.chunk, st.chunk_model, response, None))
                st.chunk, st.chunk_model = None, None
                return
            if st.children:
                _abandon_children(self, st)
            st.depth = 0
            outcome = _Outcome(st, st.chunk, st.chunk_model, response, st.nested)
            st.nested, st.chunk, st.chunks, st.chunk_model = None, None, 0, None
            if st.stream or not st.entered:
                self._forget(st)
            anc = self._active_ancestor(st)
            if anc is not None:  # LLM inside LLM: the outer call bills
                _add_nested(anc, outcome)
            else:
                self._bill(st, outcome, report_missing=True, tags=event.tags)

    def exception(self, event: BaseEvent) -> None:
        span_id = event.span_id
        with self.lock:
            if self.dead:
                self._reap()
            st = self.streams.get(span_id) if span_id else None
            if st is not None and not st.done:
                self._abandon(st)

    # -- resolution -------------------------------------------------------------------------

    def _active_ancestor(self, st: _Span) -> _Span | None:
        anc = st.parent
        while anc is not None and (anc.done or anc.depth == 0):
            anc = anc.parent
        return anc

    def _running_stream(self, st: _Span) -> _Span | None:
        """The pending LLM stream whose generator is running this code, if any."""
        frames: dict[int, _Span] = {}
        for s in self.streams.values():
            gen = s.gen() if s.gen is not None else None
            # Only a generator executing right now (in some thread) can be on this stack.
            if gen is None or not (
                getattr(gen, "gi_running", False) or getattr(gen, "ag_running", False)
            ):
                continue
            frame = _gen_frame(gen)
            if frame is not None and s is not st and not s.done:
                frames[id(frame)] = s
        if not frames:
            return None
        f: FrameType | None = sys._getframe(1)
        while f is not None:
            found = frames.get(id(f))
            if found is not None:
                return found
            f = f.f_back
        return None

    def _abandon(self, st: _Span) -> None:
        """A stream that ends without its End event: bill what the provider reported."""
        _abandon_children(self, st)
        outcome = _Outcome(st, st.chunk, st.chunk_model, None, st.nested)
        started = st.chunks > 0
        st.depth, st.nested, st.chunk = 0, None, None
        self._forget(st)
        self._settle(st, outcome, report_missing=started, abandoned=True)

    def _unfinished(self, st: _Span) -> None:
        _abandon_children(self, st)
        outcome = _Outcome(st, None, None, None, st.nested)
        st.nested, st.depth = None, 0
        self._forget(st)
        self._settle(st, outcome, report_missing=False)

    def _forget(self, st: _Span) -> None:
        st.done = True
        self.spans.pop(st.id, None)
        if st.stream:
            self.streams.pop(st.id, None)
        if st.owner is not None:
            if st.owner.children is not None:
                st.owner.children.discard(st)
            st.owner = None

    def _reap(self) -> None:
        while self.dead:
            st = self.streams.get(self.dead.popleft())
            if st is not None and not st.done:
                self._abandon(st)

    def _evict(self) -> None:
        excess = len(self.spans) - MAX_TRACKED_SPANS + MAX_TRACKED_SPANS // 10
        for sid in list(islice(self.spans, excess)):
            st = self.spans.get(sid)
            if st is None:
                continue
            if st.stream:
                self._abandon(st)
            else:
                self._forget(st)
        if not self._warned:
            self._warned = True
            log.warning(
                "llamaindex-stripe: more than %d LlamaIndex spans open; dropped the oldest "
                "(streams never consumed or closed?)",
                MAX_TRACKED_SPANS,
            )

    def _resolve(self, outcome: _Outcome) -> list[_Call]:
        """A call's own reported usage; if none, that of the LLM calls it made."""
        own = outcome.chunk or response_usage(outcome.response)
        if own is not None:
            st = outcome.st
            cls = type(st.instance) if st.instance is not None else None
            answered = response_model(outcome.response) or outcome.chunk_model
            provider = class_provider(cls)
            if answered and provider is not None:
                # What `model_and_provider` returns whenever both are known: the model the
                # response names and the LLM class's provider.
                return [(own[0], own[1], answered, provider)]
            # Otherwise the configured model counts. `metadata` is a property that builds
            # a pydantic object, so it is read only here.
            metadata_model = st.model_name
            if metadata_model is None and st.instance is not None:
                metadata_model = getattr(getattr(st.instance, "metadata", None), "model_name", None)
            model, provider = model_and_provider(answered, metadata_model, cls, st.class_name)
            return [(own[0], own[1], model, provider)]
        calls: list[_Call] = []
        for inner in outcome.nested or ():
            calls.extend(self._resolve(inner))
        return calls

    def _settle(
        self,
        st: _Span,
        outcome: _Outcome,
        *,
        report_missing: bool,
        tags: Mapping[str, Any] | None = None,
        abandoned: bool = False,
    ) -> None:
        anc = self._active_ancestor(st)
        if anc is not None:  # LLM inside LLM: the outer call bills
            _add_nested(anc, outcome)
            return
        self._bill(st, outcome, report_missing=report_missing, tags=tags, abandoned=abandoned)

    def _bill(
        self,
        st: _Span,
        outcome: _Outcome,
        *,
        report_missing: bool,
        tags: Mapping[str, Any] | None = None,
        abandoned: bool = False,
    ) -> None:
        """An outermost call ended: record its usage (or report that it had none)."""
        calls = self._resolve(outcome)
        if not calls:
            if report_missing:
                self.meter.report_missing_usage(
                    f"LlamaIndex {st.class_name or 'LLM'}", self._fix(st, abandoned)
                )
            return
        call_tags: Mapping[str, Any] = st.tags or tags or {}
        customer = call_tags.get(CUSTOMER_KEY) or (tags or {}).get(CUSTOMER_KEY) or st.scope
        dims = self.dimensions
        extra = call_tags.get(DIMENSIONS_KEY)
        if extra is not None and isinstance(extra, Mapping) and extra:
            dims = {**dims, **extra}
        for counts, tokens, model, provider in calls:
            n = st.billed
            st.billed += 1
            request_id = (st.id if n == 0 else f"{st.id}#{n + 1}") if st.id else None
            self.meter.record(
                counts=counts,
                model=model,
                provider=provider,
                customer_id=customer or None,
                request_id=request_id,
                dimensions=dims,
                fallback_customer_id=self.customer_id,
                **tokens,
            )

    def _fix(self, st: _Span, abandoned: bool) -> str:
        if abandoned:
            return (
                "consume LlamaIndex streams to the end: providers report usage with the last chunk"
            )
        provider = class_provider(type(st.instance)) if st.instance is not None else None
        if st.stream and provider in ("openai", "azure"):
            return (
                "LlamaIndex's OpenAI LLMs do not ask for usage when streaming: pass "
                "additional_kwargs={'stream_options': {'include_usage': True}} to the LLM"
            )
        if provider == "mock":
            return "MockLLM never reports usage; use an LLM whose responses carry it"
        return (
            "make the LLM's responses carry the provider's usage in response.raw['usage'] "
            "(OpenAI or Anthropic shape), raw['usage_metadata'] (Gemini) or "
            "additional_kwargs prompt_tokens/completion_tokens"
        )


def has_guard(meter: TokenMeter) -> bool:
    """Whether `meter` was built with a guard; without one nothing is attached to LLMs."""
    return meter.guarded


_NOT_LLM: Final[list[CBEventType]] = [t for t in CBEventType if t is not CBEventType.LLM]


class _GuardCallback(BaseCallbackHandler):
    """Asks the meter's guard at each outermost LLM call's start; raises `CreditExhausted`.

    A legacy LlamaIndex callback because the LLM's `CallbackManager` is the one place
    before the provider call whose handler errors reach the caller (module doc).
    """

    def __init__(self, tracker: _Tracker) -> None:
        super().__init__(event_starts_to_ignore=_NOT_LLM, event_ends_to_ignore=_NOT_LLM)
        self._tracker = tracker
        self._holds: dict[str, Hold] = {}
        self._managers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def open_holds(self) -> int:
        return len(self._holds)

    def attach(self, llm: Any) -> None:
        """Add this callback to `llm`'s CallbackManager once (several LLMs may share one)."""
        manager = getattr(llm, "callback_manager", None)
        handlers = getattr(manager, "handlers", None)
        if manager is None or not isinstance(handlers, list) or manager in self._managers:
            return
        with self._lock:
            if not any(h is self for h in handlers):
                handlers.append(self)
            self._managers.add(manager)

    def detach(self) -> None:
        """Remove this callback from every CallbackManager it was added to; release holds."""
        with self._lock:
            managers = list(self._managers)
            self._managers = weakref.WeakSet()
            holds = list(self._holds.values())
            self._holds.clear()
        for manager in managers:
            with suppress(Exception):
                manager.handlers = [h for h in manager.handlers if h is not self]
        for hold in holds:
            _release(hold)

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        if event_type is not CBEventType.LLM:
            return event_id
        tracker = self._tracker
        try:
            span_id = active_span_id.get()
            st = tracker.spans.get(span_id) if span_id else None
            if st is None or st.depth != 1 or tracker._active_ancestor(st) is not None:
                return event_id  # not an outermost call: its outer call was asked
            customer = st.tags.get(CUSTOMER_KEY) if st.tags else None
            who = customer if isinstance(customer, str) and customer else None
            name = provider = None
            if st.model_name:
                cls = type(st.instance) if st.instance is not None else None
                name, provider = model_and_provider(None, st.model_name, cls, st.class_name)
            hold = tracker.meter.before_call(
                who or st.scope or tracker.customer_id, model=name, provider=provider or ""
            )
            if hold is not None:
                self._keep(event_id, hold)
        except CreditExhausted:
            raise  # the CallbackManager lets it through: the provider is not called
        except Exception as exc:
            _guard(tracker, exc)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        if self._holds:
            hold = self._holds.pop(event_id, None)
            if hold is not None:
                _release(hold)

    def start_trace(self, trace_id: str | None = None) -> None:
        pass

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        pass

    def _keep(self, event_id: str, hold: Hold) -> None:
        with self._lock:
            holds = self._holds
            evicted = None
            if len(holds) >= MAX_TRACKED_SPANS:  # ends lost (a stream never finished)
                evicted = holds.pop(next(iter(holds)))
            holds[event_id] = hold
        if evicted is not None:
            _release(evicted)


def _release(hold: Hold) -> None:
    """`Hold.release()` never raises by contract; a broken guard must not break the call."""
    with suppress(Exception):
        hold.release()


def _guard(tracker: _Tracker, exc: Exception) -> None:
    """A handler failure: counted and logged once; re-raised in strict mode."""
    tracker.meter.report_adapter_error(SOURCE, exc)
    if tracker.meter.strict:
        raise exc


class StripeSpanHandler(BaseSpanHandler[BaseSpan]):
    """Tells its `StripeEventHandler` which span runs inside which; keeps no spans itself."""

    _tracker: Any = PrivateAttr(default=None)

    def __init__(self, tracker: _Tracker) -> None:
        super().__init__()
        self._tracker = tracker

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
        try:
            self.__pydantic_private__["_tracker"].enter(id_, parent_id, instance)  # type: ignore[index]
        except Exception as exc:
            _guard(self._tracker, exc)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self.__pydantic_private__["_tracker"].exit(id_, result)  # type: ignore[index]
        except Exception as exc:
            _guard(self._tracker, exc)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self.__pydantic_private__["_tracker"].drop(id_)  # type: ignore[index]
        except Exception as exc:
            _guard(self._tracker, exc)

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
    Customer, first that applies: `instrument_tags({"stripe_customer_id": ...})` around
    the call, a `meter.customer()` scope, this handler's `customer_id`, the meter's
    default; else the record is dead-lettered as `missing_customer`.
    Dimensions: `dimensions` merged with `instrument_tags({"stripe_dimensions": {...}})`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    meter: TokenMeter
    customer_id: str | None = None
    dimensions: dict[str, str] = Field(default_factory=dict)
    _tracker: Any = PrivateAttr(default=None)
    _span_handler: Any = PrivateAttr(default=None)
    _dispatcher: Any = PrivateAttr(default=None)

    def __init__(
        self,
        meter: TokenMeter,
        customer_id: str | None = None,
        dimensions: Mapping[str, str] | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "meter": meter,
            "customer_id": check_customer("customer_id", customer_id) if customer_id else None,
            "dimensions": check_dimensions(dimensions),
        }
        super().__init__(**fields)
        self._tracker = _Tracker(meter, self.customer_id, dict(self.dimensions))
        self._span_handler = StripeSpanHandler(self._tracker)

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
        guard: _GuardCallback | None = self._tracker.guard
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
        # Straight from pydantic's private storage (here and in the span handler):
        # `self._tracker` goes through BaseModel.__getattr__, a measurable cost per event.
        tracker: _Tracker = self.__pydantic_private__["_tracker"]  # type: ignore[index]
        try:
            if kind == _END:
                tracker.end(event)
            elif kind == _PROGRESS:
                tracker.progress(event)
            elif kind == _START:
                tracker.start(event)
            else:
                tracker.exception(event)
        except Exception as exc:
            _guard(tracker, exc)
