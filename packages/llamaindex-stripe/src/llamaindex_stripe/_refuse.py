"""Refusing a call before the provider (a meter with a guard): `GuardCallback`.

The instrumentation dispatcher swallows every exception its event and span handlers
raise (`Dispatcher.event`, `span_enter`: `except BaseException: pass`), so none of them
can stop a call. The LLM's legacy `CallbackManager` does not: `llm_chat_callback` /
`llm_completion_callback` call its handlers' `on_event_start(CBEventType.LLM)` right
after dispatching the Start event and before calling the provider, and let their
exceptions through as they are. So the span handler adds a `GuardCallback` to the
`callback_manager` of each LLM whose span it sees enter (before the LLM's method runs);
that callback asks `meter.before_call()` for the outermost LLM call only (the tracker
knows the call's customer from its Start event) and raises `CreditExhausted` into the
caller. Its hold is released by `on_event_end`, which LlamaIndex sends when the call
returns, fails, or its stream ends or is closed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.schema import CBEventType
from llama_index.core.instrumentation.span import active_span_id
from stripe_token_meter import CreditExhausted
from stripe_token_meter.guard import Hold

from ._billing import CUSTOMER_KEY, Tracker
from ._usage import model_and_provider

_NOT_LLM: Final[list[CBEventType]] = [t for t in CBEventType if t is not CBEventType.LLM]


class GuardCallback(BaseCallbackHandler):
    """Asks the meter's guard at each outermost LLM call's start; raises `CreditExhausted`.

    A legacy LlamaIndex callback because the LLM's `CallbackManager` is the one place
    before the provider call whose handler errors reach the caller (module doc).
    """

    def __init__(self, tracker: Tracker, failed: Callable[[Exception], None]) -> None:
        super().__init__(event_starts_to_ignore=_NOT_LLM, event_ends_to_ignore=_NOT_LLM)
        self._tracker = tracker
        self._failed = failed
        self._holds: dict[str, Hold] = {}
        self._managers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def open_holds(self) -> int:
        """Holds of LLM calls not ended yet."""
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
            st = tracker.outermost(active_span_id.get())
            if st is None:
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
            self._failed(exc)
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
            if len(holds) >= self._tracker.max_tracked:  # ends lost (a stream never finished)
                evicted = holds.pop(next(iter(holds)))
            holds[event_id] = hold
        if evicted is not None:
            _release(evicted)


def _release(hold: Hold) -> None:
    """`Hold.release()` never raises by contract; a broken guard must not break the call."""
    with suppress(Exception):
        hold.release()
