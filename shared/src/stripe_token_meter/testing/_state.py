"""The state FakeStripe's route modules share, declared once for the type checker.

Why: each route module is a mixin of `FakeStripe`; this base names the attributes they
read, which `FakeStripe.__init__` sets.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stripe_token_meter.testing._faults import _Fault, _Periodic
    from stripe_token_meter.testing._model import AcceptedEvent, _Meter


class State:
    """Attributes only; no behaviour (and `_emit_reports`, which `_webhooks` defines)."""

    def _emit_reports(self, entries: list[dict[str, Any]], now: float) -> None:
        raise NotImplementedError

    _lock: threading.Lock
    session_ttl: float
    auto_customers: bool
    _customers: dict[str, dict[str, Any]]
    _meters: dict[str, _Meter]
    _active_meters: dict[str, _Meter]
    _products: dict[str, dict[str, Any]]
    _prices: dict[str, dict[str, Any]]
    _sessions: dict[str, float]
    _session_modes: dict[str, str]
    _events: list[AcceptedEvent]
    _seen: dict[str, tuple[float, AcceptedEvent | None]]
    _cancelled: set[str]
    _error_reports: list[dict[str, Any]]
    _duplicates: Counter[str]
    _faults: list[_Fault]
    _periodic: list[_Periodic]
    _stalls: list[tuple[float, str | None]]
    webhook_url: str | None
    webhook_secret: str
    error_report_samples: int
    _v2_events: dict[str, dict[str, Any]]
    _notifications: list[dict[str, str]]
    _outgoing: queue.Queue[tuple[str, dict[str, str]]]
    _sender: threading.Thread | None
    _webhook_deliveries: list[tuple[str, int]]
