"""Who pays for a call: the per-call id, a `meter.customer()` scope, a handler's, the default.

The scope is a `ContextVar`, so it follows async tasks and `contextvars.copy_context()`
(which LangChain and `asyncio.to_thread` use for thread pools) without leaking between
concurrent requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from .usage import check_customer

_scope: Final[ContextVar[str | None]] = ContextVar("stripe_token_meter_customer", default=None)


def current_customer() -> str | None:
    """The customer of the innermost `customer_scope()` in this context, if any."""
    return _scope.get()


@contextmanager
def customer_scope(customer_id: str) -> Iterator[str]:
    """Bill every LLM call made inside the block (this task, its children) to `customer_id`."""
    token = _scope.set(check_customer("customer_id", customer_id))
    try:
        yield customer_id
    finally:
        _scope.reset(token)


def resolve_customer(*candidates: str | None) -> str | None:
    """The first candidate that is set, in precedence order."""
    for candidate in candidates:
        if candidate:
            return candidate
    return None
