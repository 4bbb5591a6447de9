"""FakeStripe's data: accepted events, meters, requests and the rules' constants.

Why separate: every route module reads these, so they live apart from all of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from stripe_token_meter.testing._wire import (
    ApiVersion,
    invalid,
    missing,
    new_id,
    parse_iso,
    unknown_param,
)

if TYPE_CHECKING:
    from stripe_token_meter.testing.fake_stripe import FakeStripe


DAY = 86_400
PAST_LIMIT_SECONDS = 35 * DAY
FUTURE_LIMIT_SECONDS = 300
DEDUP_WINDOW_SECONDS = DAY
MAX_STREAM_EVENTS = 100
IDEMPOTENCY_CACHE_SIZE = 50_000  # bounded: the SDK sends a fresh key on every POST
_MAX_VALUE_DIGITS = 18  # keeps values inside int64 like Stripe
_FORMULAS = ("sum", "count", "last")
_V1_EVENT_PARAMS = frozenset({"event_name", "payload", "identifier", "timestamp", "expand"})
_V2_EVENT_FIELDS = frozenset({"event_name", "payload", "identifier", "timestamp"})
_METER_PARAMS = frozenset(
    {
        "display_name",
        "event_name",
        "default_aggregation",
        "customer_mapping",
        "value_settings",
        "event_time_window",
        "dimension_payload_keys",
        "expand",
    }
)


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """One meter event FakeStripe accepted, with the customer and value its meter extracted."""

    event_name: str
    identifier: str
    payload: dict[str, str]
    timestamp: int
    api: Literal["v1", "v2"]
    customer: str
    value: int


class _Rejection(NamedTuple):
    code: str | None
    message: str
    param: str | None
    duplicate: bool = False


class _Meter:
    """Internal meter; attributes are read on every event so they are plain slots."""

    __slots__ = (
        "created",
        "customer_key",
        "deactivated_at",
        "dimension_keys",
        "display_name",
        "event_name",
        "event_time_window",
        "formula",
        "id",
        "status",
        "updated",
        "value_key",
    )

    def __init__(
        self,
        event_name: str,
        display_name: str,
        formula: str,
        customer_key: str,
        value_key: str,
        dimension_keys: list[str],
        event_time_window: str | None,
        now: int,
    ) -> None:
        self.id = new_id("mtr")
        self.event_name = event_name
        self.display_name = display_name
        self.formula = formula
        self.customer_key = customer_key
        self.value_key = value_key
        self.dimension_keys = dimension_keys
        self.event_time_window = event_time_window
        self.status = "active"
        self.created = now
        self.updated = now
        self.deactivated_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``billing.meter`` object as Stripe renders it."""
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": False,
            "status": self.status,
            "status_transitions": {"deactivated_at": self.deactivated_at},
            "updated": self.updated,
            "value_settings": {"event_payload_key": self.value_key},
        }
        if self.dimension_keys:
            obj["dimension_payload_keys"] = list(self.dimension_keys)
        return obj


class _Request(NamedTuple):
    args: tuple[str, ...]
    params: dict[str, Any]
    now: float
    api: ApiVersion
    mode: str = "test"
    """`test` or `live`: the key's mode (`_limits.key_mode`); a session keeps its key's."""


_HandlerFn = Callable[["FakeStripe", _Request], tuple[int, Any]]


class _Route(NamedTuple):
    handler: _HandlerFn
    api: ApiVersion
    auth: Literal["key", "session"]


# ---------------------------------------------------------------------- helpers


def _field(index: int | None, name: str) -> str:
    """Error ``param`` path for a v2 event field (``events[3].payload``) built only on error."""
    return name if index is None else f"events[{index}].{name}"


def _v2_event(raw: Any, index: int | None, now: float) -> tuple[str, str, dict[str, str], int]:
    """Synchronous shape checks for one v2 event; returns (name, identifier, payload, ts).

    Shape errors fail the whole request (Stripe validates the schema synchronously);
    business-rule errors are left to ``_accept``.
    """
    if not isinstance(raw, dict):
        where = "body" if index is None else f"events[{index}]"
        raise invalid(f"{where} must be an object.", "invalid_request", where)
    if not _V2_EVENT_FIELDS.issuperset(raw):
        raise unknown_param(_field(index, next(k for k in raw if k not in _V2_EVENT_FIELDS)))
    name = raw.get("event_name")
    if not isinstance(name, str) or not name:
        raise missing(_field(index, "event_name"))
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise missing(_field(index, "payload"))
    for k, v in payload.items():
        if not isinstance(v, str):
            where = _field(index, f"payload.{k}")
            raise invalid(f"{where} must be a string.", "invalid_request", where)
    identifier = raw.get("identifier")
    if identifier is None:
        identifier = str(uuid.uuid4())
    elif not isinstance(identifier, str) or not identifier:
        where = _field(index, "identifier")
        raise invalid(f"{where} must be a non-empty string.", "invalid_request", where)
    ts_raw = raw.get("timestamp")
    if ts_raw is None:
        return name, identifier, payload, int(now)
    try:
        if not isinstance(ts_raw, str):
            raise ValueError(ts_raw)
        return name, identifier, payload, parse_iso(ts_raw)
    except ValueError:
        where = _field(index, "timestamp")
        raise invalid(
            f"{where} must be an RFC 3339 timestamp, got {ts_raw!r}.", "invalid_request", where
        ) from None


def _duplicate(identifier: str) -> _Rejection:
    return _Rejection(
        None, f"An event already exists with identifier {identifier}.", "identifier", True
    )


def _decimal_param(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {value}", "parameter_invalid_decimal", name) from None
    return str(value)
