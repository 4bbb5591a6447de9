"""Injected faults: failures, dropped connections and stalls on chosen requests.

Why separate: tests reach for these; Stripe's rules never depend on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import (
    ApiError,
    invalid,
    rate_limited,
    server_error,
)

if TYPE_CHECKING:
    pass


@dataclass
class _Fault:
    kind: Literal["fail", "drop"]
    remaining: int
    status: int
    retry_after: float | None
    path_prefix: str | None
    after_processing: bool


@dataclass
class _Periodic:
    """A standing fault: every ``every``-th matching request (``fail_every``/``drop_every``)."""

    kind: Literal["fail", "drop"]
    every: int
    statuses: tuple[int, ...]
    retry_after: float | None
    path_prefix: str | None
    after_processing: bool
    seen: int = 0
    fired: int = 0


class FaultControls(State):
    """`fail_next`, `drop_next`, `*_every`, `stall_next`: what tests inject."""

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: float | None = 1.0,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (429 rate_limit, 5xx api_error).

        ``Retry-After`` is sent for 429 and 503 when ``retry_after`` is not None.
        """
        with self._lock:
            self._faults.append(_Fault("fail", n, status, retry_after, path_prefix, False))

    def drop_next(
        self,
        n: int = 1,
        path_prefix: str | None = None,
        *,
        after_processing: bool = False,
    ) -> None:
        """Close the socket of the next ``n`` matching requests without answering.

        With ``after_processing=True`` the request takes effect first, so only the
        response is lost -- the case exactly-once delivery has to survive.
        """
        with self._lock:
            self._faults.append(_Fault("drop", n, 0, None, path_prefix, after_processing))

    def fail_every(
        self,
        n: int,
        status: int | Sequence[int] = 429,
        retry_after: float | None = 1.0,
        path_prefix: str | None = None,
    ) -> None:
        """From now on answer every ``n``-th matching request with an error, unprocessed.

        Requests are counted from this call on (any method; paths starting with
        ``path_prefix`` if given, including requests other faults answer): the ``n``-th,
        ``2n``-th, ... fail. Several statuses are used in turn: ``status=(429, 500)`` fails
        the ``n``-th with 429, the ``2n``-th with 500, the ``3n``-th with 429 again.
        ``Retry-After`` as for ``fail_next``. Lasts until ``clear_faults()`` or ``reset()``;
        ``fail_next``/``drop_next`` faults take precedence when both match a request.
        """
        statuses = (status,) if isinstance(status, int) else tuple(status)
        if n < 1 or not statuses or not all(400 <= s <= 599 for s in statuses):
            raise ValueError("fail_every needs n >= 1 and statuses in 400..599")
        with self._lock:
            self._periodic.append(_Periodic("fail", n, statuses, retry_after, path_prefix, False))

    def drop_every(
        self, n: int, path_prefix: str | None = None, *, after_processing: bool = False
    ) -> None:
        """From now on close the socket of every ``n``-th matching request without answering.

        Counted like ``fail_every``; ``after_processing`` as for ``drop_next``.
        """
        if n < 1:
            raise ValueError("drop_every needs n >= 1")
        with self._lock:
            self._periodic.append(_Periodic("drop", n, (), None, path_prefix, after_processing))

    def stall_next(self, seconds: float, path_prefix: str | None = None) -> None:
        """Hold the next matching request ``seconds`` before serving it (one slow request
        among fast ones; ``latency`` slows them all)."""
        with self._lock:
            self._stalls.append((seconds, path_prefix))

    def _take_stall(self, path: str) -> float:
        with self._lock:
            for i, (seconds, prefix) in enumerate(self._stalls):
                if prefix is None or path.startswith(prefix):
                    del self._stalls[i]
                    return seconds
        return 0.0

    def clear_faults(self) -> None:
        """Forget pending ``fail_next``/``drop_next``/``stall_next`` and ``*_every`` faults."""
        with self._lock:
            self._faults.clear()
            self._periodic.clear()
            self._stalls.clear()

    def expire_sessions(self) -> None:
        """Expire every v2 session token issued so far (new sessions are unaffected)."""
        with self._lock:
            for token in self._sessions:
                self._sessions[token] = 0.0

    def _take_fault(self, path: str) -> _Fault | None:
        due: _Fault | None = None
        for rule in self._periodic:  # every matching request counts, fired or not
            if rule.path_prefix is None or path.startswith(rule.path_prefix):
                rule.seen += 1
                if rule.seen % rule.every == 0 and due is None:
                    status = rule.statuses[rule.fired % len(rule.statuses)] if rule.statuses else 0
                    rule.fired += 1
                    due = _Fault(
                        rule.kind, 0, status, rule.retry_after, None, rule.after_processing
                    )
        for i, fault in enumerate(self._faults):
            if fault.path_prefix is None or path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                return fault
        return due


def _fault_error(fault: _Fault) -> ApiError:
    if fault.status == 429:
        return rate_limited(fault.retry_after)
    if fault.status >= 500:
        return server_error(fault.status, fault.retry_after if fault.status == 503 else None)
    return invalid("Error injected by FakeStripe.", "fake_stripe_fault", status=fault.status)
