"""llamaindex-stripe: bill every LlamaIndex LLM call's tokens to a Stripe customer.

from stripe_token_meter import TokenMeter
from llamaindex_stripe import instrument

meter = TokenMeter()
instrument(meter)                 # once, at startup
with meter.customer("cus_123"):
    llm.chat(messages)            # or a query engine, chat engine, agent...
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from llama_index.core.instrumentation import (  # type: ignore[attr-defined]
    get_dispatcher,
    root_manager,
)

from .handler import CUSTOMER_KEY, DIMENSIONS_KEY, StripeEventHandler, StripeSpanHandler

__all__ = [
    "CUSTOMER_KEY",
    "DIMENSIONS_KEY",
    "StripeEventHandler",
    "StripeSpanHandler",
    "instrument",
    "uninstrument",
]
__version__ = "0.1.0"

log = logging.getLogger("llamaindex_stripe")
_lock = threading.Lock()
_installed: list[StripeEventHandler] = []


def instrument(
    meter: Any,
    customer_id: str | None = None,
    dimensions: Mapping[str, str] | None = None,
    dispatcher: Any = None,
) -> StripeEventHandler:
    """Bill LlamaIndex's LLM calls through `meter`; returns the handler (idempotent per meter).

    Adds a `StripeEventHandler` and its `StripeSpanHandler` to LlamaIndex's root
    dispatcher (or `dispatcher`). A meter already instrumented keeps its handler, which
    is returned unchanged (never a second one: events would be billed twice). Several
    meters may be instrumented at once; each bills every call.
    """
    target = dispatcher if dispatcher is not None else get_dispatcher()
    with _lock:
        for existing in _installed:
            if existing.meter is meter:
                differs = (
                    (dispatcher is not None and existing.dispatcher is not target)
                    or (customer_id is not None and customer_id != existing.customer_id)
                    or (dimensions is not None and dict(dimensions) != existing.dimensions)
                )
                if differs:
                    log.warning(
                        "llamaindex-stripe: this meter is already instrumented; returning its "
                        "handler unchanged (uninstrument() it first to change its settings)"
                    )
                return existing
        handler = StripeEventHandler(meter, customer_id=customer_id, dimensions=dimensions)
        # The span handler first: spans must be known before their events arrive.
        target.add_span_handler(handler.span_handler)
        target.add_event_handler(handler)
        handler._dispatcher = target
        _installed.append(handler)
        return handler


def uninstrument(handler: StripeEventHandler | None = None) -> None:
    """Remove `handler` (and its span handler); with no argument, every handler of ours.

    Calls in flight when it is removed are not billed (its state is dropped).
    """
    with _lock:
        if handler is not None:
            targets = [handler]
        else:
            targets = list(_installed)
            for d in list(root_manager.dispatchers.values()):  # also ones added by hand
                targets.extend(h for h in d.event_handlers if isinstance(h, StripeEventHandler))
        for h in targets:
            dispatchers = [h.dispatcher] if h.dispatcher is not None else []
            dispatchers.extend(root_manager.dispatchers.values())
            for d in dispatchers:
                _remove(d, h)
            h._clear()
            h._dispatcher = None
            _installed[:] = [x for x in _installed if x is not h]


def _remove(d: Any, h: StripeEventHandler) -> None:
    # New lists, not in-place removal: a dispatcher may be iterating the old ones.
    if any(x is h for x in d.event_handlers):
        d.event_handlers = [x for x in d.event_handlers if x is not h]
    span = h.span_handler
    if any(x is span for x in d.span_handlers):
        d.span_handlers = [x for x in d.span_handlers if x is not span]
