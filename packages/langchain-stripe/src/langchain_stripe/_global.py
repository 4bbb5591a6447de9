"""`enable()` / `disable()`: one handler on every LangChain run, through the configure hook.

LangChain's `register_configure_hook` takes a `ContextVar` and only ever calls its
`.get()` when a callback manager is configured. A value `.set()` on a real ContextVar at
start-up is invisible to threads started later (a new thread begins with an empty
context), so web servers' request threads would silently bill nothing. The hook is
therefore given a process-wide slot with the same `.get()`.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any, cast

from langchain_core.tracers.context import register_configure_hook
from stripe_token_meter import TokenMeter

from .handler import StripeCallbackHandler


class _Slot:
    """Quacks like `ContextVar.get()` for LangChain's hook; the same in every thread."""

    __slots__ = ("handler",)

    def __init__(self) -> None:
        self.handler: StripeCallbackHandler | None = None

    def get(self, default: Any = None) -> StripeCallbackHandler | None:
        return self.handler


_slot = _Slot()
_lock = threading.Lock()
_registered = False


def enable(meter: TokenMeter, **handler_kwargs: Any) -> StripeCallbackHandler:
    """Bill every LangChain LLM run in this process through `meter`; returns the handler.

    `handler_kwargs` are `StripeCallbackHandler`'s (`customer_id`, `dimensions`,
    `customer_resolver`). Calling it again replaces the handler: one handler, one count.
    """
    global _registered
    handler = StripeCallbackHandler(meter, **handler_kwargs)
    with _lock:
        if not _registered:
            # inheritable: child runs (chains -> LLMs, graph nodes) keep the handler, and
            # LangChain adds a hook's handler only if that very object is not there yet.
            register_configure_hook(cast("ContextVar[Any | None]", _slot), inheritable=True)
            _registered = True
        _slot.handler = handler
    return handler


def disable() -> None:
    """Stop billing runs that start from now on; runs already started still finish billing."""
    with _lock:
        _slot.handler = None


def enabled_handler() -> StripeCallbackHandler | None:
    """The handler `enable()` installed, if any."""
    return _slot.handler
