"""The billing state machine: LlamaIndex spans and LLM calls in, one record per call out.

No llama_index imports: it is fed plain values (span ids, tags, responses) by the
handlers in `handler.py`, reads responses through a `Reading` (`_usage.LLAMA`), and is
tested directly (tests/llamaindex/test_billing_state.py).

LlamaIndex reports an LLM call as `LLM{Chat,Completion}StartEvent` ... `EndEvent`,
dispatched inside the span of the LLM method. Many LLMs run one LLM method inside
another (`CustomLLM.chat` runs `complete`, `achat` runs `chat`, Anthropic's `complete`
runs `chat`), so one call fires several Start/End pairs. Only the outermost call bills:

* Every span knows its nearest ancestor that has an LLM call in progress (`parent`). An
  agent, query engine or chat engine span is not an LLM call (it fires no Start): the
  LLM calls it makes are billed.
* A nested call's usage goes to that ancestor, which bills its own reported usage, or,
  if it reports none (a wrapper LLM), the usage of the calls it made. Exactly one record
  per outermost call, with the outermost span id as request id.
* However a call ends (End event, stream abandoned, span returned or failed without an
  End), `Tracker._finish` is the one path that ends it. Streams: `_streams.py`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from stripe_token_meter import TokenMeter, current_customer
from stripe_token_meter.adapter_kit import (
    DIMENSIONS_KEY,
    AdapterOptions,
    InFlight,
    call_customer,
    merge_dimensions,
)
from stripe_token_meter.provider_usage import Counts
from stripe_token_meter.provider_usage import UsageReport as Found

from ._streams import add_chunk, is_stream, running_stream, watch

log = logging.getLogger("llamaindex_stripe")

_NO_TAGS: Final[Mapping[str, Any]] = MappingProxyType({})

# How a call ended (`Tracker._finish`).
ENDED: Final = 1  # its End event: billed, or reported as missing usage
ABANDONED: Final = 2  # a stream not consumed to its End: what its chunks reported
UNFINISHED: Final = 3  # returned or failed with no End: only its nested calls that ended

Billable = tuple[Counts, dict[str, Any], str, str | None]
"""One LLM call's reported usage, with the model that answered it:
`(counts, tokens, model, provider)`."""


class Reading(Protocol):
    """What the state machine needs from the framework, so it imports none of it."""

    def is_llm(self, instance: object) -> bool:
        """Whether a span's instance is an LLM (its span may host an LLM call)."""
        ...

    def usage(self, response: object) -> Found | None:
        """The usage a response (or stream chunk) reports, or None."""
        ...

    def model(self, response: object) -> str | None:
        """The model a response names as having answered, or None."""
        ...

    def name(self, call: Call, answered: str | None) -> tuple[str, str | None]:
        """(model, provider) to bill `call` under; `answered`: the model the provider named."""
        ...

    def missing(self, call: Call, abandoned: bool) -> tuple[str, str]:
        """(source, fix) to report when `call` ended without usage."""
        ...


class Outcome:
    """How one LLM call ended. Turned into billable calls only at the outermost call, and
    only if needed: a nested call's usage is read only when its outer call reports none."""

    __slots__ = ("call", "chunk", "chunk_model", "nested", "response")

    def __init__(
        self,
        call: Call,
        chunk: Found | None,
        chunk_model: str | None,
        response: Any,
        nested: list[Outcome] | None,
    ) -> None:
        self.call = call
        self.chunk = chunk
        self.chunk_model = chunk_model
        self.response = response
        self.nested = nested


class Call:
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
        self, span_id: str, parent: Call | None, instance: Any, entered: bool = True
    ) -> None:
        self.id = span_id
        self.parent = parent  # nearest ancestor that had an LLM call in progress
        self.instance = instance  # the LLM whose method this span runs, or None
        self.entered = entered  # False: first seen through an event, no span exit to expect
        self.depth = 0  # LLM calls in progress in this span (Start seen, End not yet)
        self.nested: list[Outcome] | None = None  # LLM calls made inside the current call
        self.chunk: Found | None = None  # usage reported by stream chunks so far
        self.chunk_model: str | None = None  # model named by a stream chunk
        self.chunks = 0
        self.stream = False
        self.gen: weakref.ref[Any] | None = None
        self.children: set[Call] | None = None  # pending streams opened inside this call
        self.owner: Call | None = None  # the call whose `children` holds this one
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
        """The LLM's class name, from the instance or the Start event's `model_dict`."""
        if self.instance is not None:
            return type(self.instance).__name__
        return self.model_dict.get("class_name") if self.model_dict else None

    def add_nested(self, outcome: Outcome) -> None:
        """A call made inside this one ended: this one bills it if it reports no usage."""
        if self.nested is None:
            self.nested = [outcome]
        else:
            self.nested.append(outcome)


class Tracker:
    """Span tree + LLM call state shared by one event handler and its span handler.

    `options` (the adapter kit's, checked once): the handler's customer, below the call's
    tags and `meter.customer()` scope, its dimensions, under the call's, and the bound on
    spans kept should LlamaIndex never close some.
    """

    def __init__(
        self, meter: TokenMeter, reading: Reading, options: AdapterOptions | None = None
    ) -> None:
        self.meter = meter
        self.reading = reading
        self.options = options if options is not None else AdapterOptions.check()
        # The kit's one eviction rule: past the bound the oldest span goes (`_evicted`).
        self.spans: InFlight[str, Call] = InFlight(self.options.max_tracked, self._evicted)
        self.streams: dict[str, Call] = {}  # the pending LLM streams among `spans`
        self.dead: deque[str] = deque()  # streams whose generator was garbage-collected
        # Re-entrant: garbage collection inside a handler may close an abandoned stream,
        # whose ExceptionEvent then reaches this tracker on the same thread.
        self.lock = threading.RLock()
        self._is_llm = reading.is_llm
        self._warned = False

    # -- spans ------------------------------------------------------------------------------

    def enter(self, span_id: str, parent_id: str | None, instance: Any) -> Call:
        """A span entered (before its method runs); returns its state."""
        llm = instance if instance is not None and self._is_llm(instance) else None
        with self.lock:
            if self.dead:
                self._reap()
            parent = self.spans.get(parent_id) if parent_id else None
            anchor = None
            if parent is not None:
                anchor = parent if parent.depth > 0 else parent.parent
            st = Call(span_id, anchor, llm)
            self.spans.put(span_id, st)
        return st

    def exit(self, span_id: str, result: Any) -> None:
        """A span's method returned `result`: a stream goes on, anything else is over."""
        with self.lock:
            st = self.spans.get(span_id)
            if st is None:
                return
            if st.depth == 0:
                self._forget(st)
                return
            if is_stream(result):
                # The LLM call goes on while the caller consumes the stream.
                watch(st, result, self.dead)
                self.streams[span_id] = st
                owner = self._active_ancestor(st)
                if owner is not None:
                    if owner.children is None:
                        owner.children = set()
                    owner.children.add(st)
                    st.owner = owner
                return
            # Start without End, yet returned: keep what nested calls reported.
            self._finish(st, UNFINISHED)

    def drop(self, span_id: str) -> None:
        """A span's method raised: bill the nested calls that completed."""
        with self.lock:
            st = self.spans.get(span_id)
            if st is None:
                return
            if st.depth > 0:
                self._finish(st, UNFINISHED)
            else:
                self._forget(st)

    def tracked(self) -> int:
        """Spans and unconsumed streams currently tracked."""
        return len(self.spans)

    def clear(self) -> None:
        """Forget everything (uninstrumented): calls in flight are not billed."""
        with self.lock:
            self.spans = InFlight(self.options.max_tracked, self._evicted)
            self.streams.clear()
            self.dead.clear()

    # -- events -----------------------------------------------------------------------------

    def start(self, span_id: str | None, tags: Mapping[str, Any] | None, model_dict: Any) -> None:
        """An LLM call's Start event, in span `span_id`, with the dispatcher's tags."""
        if not span_id:
            return
        with self.lock:
            if self.dead:
                self._reap()
            st = self.spans.get(span_id)
            if st is None:  # instrumented mid-span, or no span handler on this dispatcher
                st = Call(span_id, None, None, entered=False)
                self.spans.put(span_id, st)
            st.depth += 1
            if st.depth > 1:
                return  # an LLM call nested in the same span: it reports to the outer one
            st.tags = dict(tags) if tags else _NO_TAGS
            st.scope = current_customer()
            st.model_dict = (
                model_dict
                if model_dict and (type(model_dict) is dict or isinstance(model_dict, Mapping))
                else None
            )
            if self.streams and self._active_ancestor(st) is None:
                st.parent = running_stream(self.streams.values(), st) or st.parent

    def progress(self, span_id: str | None, response: Any) -> None:
        """A streamed chunk of the call in span `span_id`."""
        st = self.spans.get(span_id) if span_id else None
        if st is None:
            return
        # No lock: a stream's chunks come from its generator, which runs on one thread at
        # a time, and nothing else touches them until the stream ends.
        found = self.reading.usage(response)
        add_chunk(st, found, self.reading.model(response) if found is not None else None)

    def end(self, span_id: str | None, tags: Mapping[str, Any] | None, response: Any) -> None:
        """An LLM call's End event with its response."""
        with self.lock:
            if self.dead:
                self._reap()
            st = self.spans.get(span_id) if span_id else None
            if st is None:  # nothing known about this call: bill it as it stands
                st = Call(span_id or "", None, None, entered=False)
                st.depth = 1
                st.tags = dict(tags) if tags else _NO_TAGS
                st.scope = current_customer()
            elif st.depth > 1:  # nested un-spanned call: the outer call in this span decides
                st.depth -= 1
                st.add_nested(Outcome(st, st.chunk, st.chunk_model, response, None))
                st.chunk, st.chunk_model = None, None
                return
            self._finish(st, ENDED, response, tags)

    def exception(self, span_id: str | None) -> None:
        """An `ExceptionEvent`: a pending stream in that span stopped early or failed."""
        with self.lock:
            if self.dead:
                self._reap()
            st = self.streams.get(span_id) if span_id else None
            if st is not None and not st.done:
                self._finish(st, ABANDONED)

    def outermost(self, span_id: str | None) -> Call | None:
        """The call in `span_id` if an outermost LLM call is starting there (the guard asks)."""
        st = self.spans.get(span_id) if span_id else None
        if st is None or st.depth != 1 or self._active_ancestor(st) is not None:
            return None
        return st

    # -- the one way a call ends -------------------------------------------------------------

    def _finish(
        self,
        st: Call,
        how: int,
        response: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """End `st`'s LLM call however it ended: the outer call or the meter gets it."""
        if st.children:
            for child in list(st.children):  # inner streams it did not consume to the end
                self._finish(child, ABANDONED)
        if how == UNFINISHED:
            outcome = Outcome(st, None, None, None, st.nested)
        else:
            outcome = Outcome(st, st.chunk, st.chunk_model, response, st.nested)
        report_missing = how == ENDED or (how == ABANDONED and st.chunks > 0)
        st.depth, st.nested, st.chunk, st.chunks, st.chunk_model = 0, None, None, 0, None
        # A spanned call that ended stays until its span exits (more calls may run in it).
        if how != ENDED or st.stream or not st.entered:
            self._forget(st)
        anc = self._active_ancestor(st)
        if anc is not None:  # LLM inside LLM: the outer call bills
            anc.add_nested(outcome)
        else:
            self._bill(st, outcome, report_missing, tags, abandoned=how == ABANDONED)

    def _bill(
        self,
        st: Call,
        outcome: Outcome,
        report_missing: bool,
        tags: Mapping[str, Any] | None,
        *,
        abandoned: bool,
    ) -> None:
        """An outermost call ended: record its usage (or report that it had none)."""
        calls = self._resolve(outcome)
        if not calls:
            if report_missing:
                self.meter.report_missing_usage(*self.reading.missing(st, abandoned))
            return
        call_tags: Mapping[str, Any] = st.tags or tags or _NO_TAGS
        # The call's own customer, else the scope it started in: the End event may come on
        # another thread or context (a stream consumed elsewhere, a collected generator).
        customer = call_customer(call_tags) or call_customer(tags) or st.scope
        dims = merge_dimensions(self.options, call_tags.get(DIMENSIONS_KEY))
        for counts, tokens, model, provider in calls:
            n = st.billed
            st.billed += 1
            request_id = (st.id if n == 0 else f"{st.id}#{n + 1}") if st.id else None
            self.meter.record(
                counts=counts,
                model=model,
                provider=provider,
                customer_id=customer,
                request_id=request_id,
                dimensions=dims,
                fallback_customer_id=self.options.customer_id,
                **tokens,
            )

    def _resolve(self, outcome: Outcome) -> list[Billable]:
        """A call's own reported usage; if none, that of the LLM calls it made."""
        own = outcome.chunk or self.reading.usage(outcome.response)
        if own is not None:
            answered = self.reading.model(outcome.response) or outcome.chunk_model
            model, provider = self.reading.name(outcome.call, answered)
            return [(own[0], own[1], model, provider)]
        calls: list[Billable] = []
        for inner in outcome.nested or ():
            calls.extend(self._resolve(inner))
        return calls

    # -- bookkeeping ------------------------------------------------------------------------

    def _active_ancestor(self, st: Call) -> Call | None:
        anc = st.parent
        while anc is not None and (anc.done or anc.depth == 0):
            anc = anc.parent
        return anc

    def _forget(self, st: Call) -> None:
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
                self._finish(st, ABANDONED)

    def _evicted(self, st: Call) -> None:
        """Past the bound (LlamaIndex never closed some spans): the oldest span is dropped,
        a stream billed for what its chunks reported."""
        if not st.done:
            if st.stream:
                self._finish(st, ABANDONED)
            else:
                self._forget(st)
        if not self._warned:
            self._warned = True
            log.warning(
                "llamaindex-stripe: more than %d LlamaIndex spans open; dropped the oldest "
                "(streams never consumed or closed?)",
                self.options.max_tracked,
            )
