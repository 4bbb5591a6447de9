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
from contextlib import suppress
from typing import Any, Final

from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation.span import active_span_id
from stripe_token_meter.adapter_kit import AdapterKit, InFlight, call_customer

from ._billing import Tracker
from ._usage import model_and_provider

_NOT_LLM: Final[list[CBEventType]] = [t for t in CBEventType if t is not CBEventType.LLM]


class GuardCallback(BaseCallbackHandler):
    """Asks the meter's guard at each outermost LLM call's start; raises `CreditExhausted`.

    A legacy LlamaIndex callback because the LLM's `CallbackManager` is the one place
    before the provider call whose handler errors reach the caller (module doc).
    """

    def __init__(self, tracker: Tracker, kit: AdapterKit) -> None:
        super().__init__(event_starts_to_ignore=_NOT_LLM, event_ends_to_ignore=_NOT_LLM)
        self._tracker = tracker
        self._kit = kit  # keeps each call's hold, by the CallbackManager's event id
        self._managers: weakref.WeakSet[Any] = weakref.WeakSet()
        # Event ids holding a reservation, to release them on detach (their ends will not
        # reach us then): the kit has no "release every hold" of its own.
        self._reserved: InFlight[str, bool] = InFlight(kit.options.max_tracked)
        self._lock = threading.Lock()

    @property
    def open_holds(self) -> int:
        """Holds of LLM calls not ended yet."""
        return self._kit.open_holds

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
        """Remove this callback from every CallbackManager it was added to; release holds
        (their calls' ends will not reach it any more)."""
        with self._lock:
            managers = list(self._managers)
            self._managers = weakref.WeakSet()
        for manager in managers:
            with suppress(Exception):
                manager.handlers = [h for h in manager.handlers if h is not self]
        for event_id in list(self._reserved):
            self._reserved.pop(event_id)
            self._kit.release(event_id)

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
        try:
            st = self._tracker.outermost(active_span_id.get())
            if st is None:
                return event_id  # not an outermost call: its outer call was asked
            name = provider = None
            named = st.model_name or _serialized_model(payload)
            if named:
                cls = type(st.instance) if st.instance is not None else None
                name, provider = model_and_provider(None, named, cls, st.class_name)
        except Exception as exc:
            self._kit.failed("guard", exc)
            return event_id
        # Lets `CreditExhausted` through (the CallbackManager does too: the provider is not
        # called); contains anything else.
        self._kit.reserve(event_id, call_customer(st.tags), model=name, provider=provider or "")
        self._reserved.put(event_id, True)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        if self._reserved:
            self._reserved.pop(event_id)
            self._kit.release(event_id)

    def start_trace(self, trace_id: str | None = None) -> None:
        pass

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        pass


def _serialized_model(payload: dict[str, Any] | None) -> str | None:
    """The model the callback payload's serialized LLM names, for when the span has no
    Start event `model_dict` yet (llama-index-core 0.14.16, CI's oldest version)."""
    serialized = payload.get(EventPayload.SERIALIZED) if payload else None
    if isinstance(serialized, dict):
        for key in ("model_name", "model"):
            value = serialized.get(key)
            if isinstance(value, str) and value:
                return value
    return None
