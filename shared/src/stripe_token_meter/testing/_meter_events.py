"""Meter event routes: Stripe's meter-event rules, v1 and v2 events, sessions, adjustments.

Why separate: the rules every billed event passes through, in Stripe's order, in one place.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Literal

from stripe_token_meter.testing._model import (
    _MAX_VALUE_DIGITS,
    _V1_EVENT_PARAMS,
    DEDUP_WINDOW_SECONDS,
    FUTURE_LIMIT_SECONDS,
    MAX_STREAM_EVENTS,
    PAST_LIMIT_SECONDS,
    AcceptedEvent,
    _duplicate,
    _Rejection,
    _Request,
    _v2_event,
)
from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import (
    invalid,
    iso,
    missing,
    new_id,
    opt_int,
    opt_str,
    req_str,
    str_dict,
    unknown_param,
)

if TYPE_CHECKING:
    pass


class MeterEventRoutes(State):
    """`/v1/billing/meter_events`, adjustments, `/v2/billing/meter_event_*`."""

    def _accept(
        self,
        event_name: str,
        identifier: str,
        payload: dict[str, str],
        timestamp: int,
        api: Literal["v1", "v2"],
        now: float,
    ) -> _Rejection | None:
        """Apply Stripe's meter-event rules in Stripe's order; record the event if valid."""
        meter = self._active_meters.get(event_name)
        if meter is None:
            if any(m.event_name == event_name for m in self._meters.values()):
                return _Rejection(
                    "archived_meter",
                    f"The meter for event_name '{event_name}' is inactive and does not "
                    "accept meter events.",
                    "event_name",
                )
            seen = self._seen.get(identifier)
            if seen is not None and now - seen[0] < DEDUP_WINDOW_SECONDS:
                self._duplicates[identifier] += 1
                return _duplicate(identifier)
            self._seen[identifier] = (now, None)
            self._error_reports.append(
                {
                    "identifier": identifier,
                    "code": "no_meter",
                    "message": f"No active meter was found for event_name '{event_name}'.",
                    "event_name": event_name,
                }
            )
            return None
        customer = payload.get(meter.customer_key)
        if not customer:
            return _Rejection(
                "meter_event_no_customer_defined",
                f"The payload is missing the customer mapping key '{meter.customer_key}'.",
                f"payload[{meter.customer_key}]",
            )
        if customer not in self._customers and not (
            self.auto_customers and customer.startswith("cus_")
        ):
            return _Rejection(
                "meter_event_customer_not_found",
                f"No such customer: '{customer}'",
                f"payload[{meter.customer_key}]",
            )
        raw = payload.get(meter.value_key)
        if raw is None and meter.formula == "count":
            value = 1
        elif raw is None or not raw.isdigit() or not raw.isascii() or len(raw) > _MAX_VALUE_DIGITS:
            return _Rejection(
                "meter_event_invalid_value",
                f"The value for '{meter.value_key}' must be a non-negative whole number, "
                f"got {raw!r}.",
                f"payload[{meter.value_key}]",
            )
        else:
            value = 1 if meter.formula == "count" else int(raw)
        if timestamp < now - PAST_LIMIT_SECONDS:
            return _Rejection(
                "timestamp_too_far_in_past",
                "The timestamp must be within the past 35 calendar days.",
                "timestamp",
            )
        if timestamp > now + FUTURE_LIMIT_SECONDS:
            return _Rejection(
                "timestamp_too_far_in_future",
                "The timestamp cannot be more than 5 minutes in the future.",
                "timestamp",
            )
        seen = self._seen.get(identifier)
        if seen is not None and now - seen[0] < DEDUP_WINDOW_SECONDS:
            self._duplicates[identifier] += 1
            return _duplicate(identifier)
        event = AcceptedEvent(event_name, identifier, payload, timestamp, api, customer, value)
        self._seen[identifier] = (now, event)
        self._events.append(event)
        return None

    def _accept_or_raise(
        self,
        event_name: str,
        identifier: str,
        payload: dict[str, str],
        timestamp: int,
        api: Literal["v1", "v2"],
        now: float,
    ) -> None:
        rejection = self._accept(event_name, identifier, payload, timestamp, api, now)
        if rejection is None:
            return
        if rejection.duplicate:
            raise invalid(
                rejection.message,
                "duplicate_meter_event" if api == "v2" else None,
                "identifier",
                headers=[("Stripe-Should-Retry", "false")],
            )
        raise invalid(rejection.message, rejection.code, rejection.param)

    # ------------------------------------------------------------------ v1 handlers

    def _h_meter_event_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        for key in p:
            if key not in _V1_EVENT_PARAMS:
                raise unknown_param(key)
        event_name = req_str(p, "event_name")
        if "payload" not in p:
            raise missing("payload")
        payload = str_dict(p["payload"], "payload")
        timestamp = opt_int(p, "timestamp")
        ts = int(req.now) if timestamp is None else timestamp
        identifier = opt_str(p, "identifier") or str(uuid.uuid4())
        first = len(self._error_reports)
        self._accept_or_raise(event_name, identifier, payload, ts, "v1", req.now)
        self._emit_reports(self._error_reports[first:], req.now)  # no_meter
        return 200, {
            "object": "billing.meter_event",
            "created": int(req.now),
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": ts,
        }

    def _cancel(self, req: _Request) -> tuple[str, str]:
        p = req.params
        event_name = req_str(p, "event_name")
        kind = p.get("type", "cancel")
        if kind != "cancel":
            raise invalid(
                f"Invalid type: must be one of cancel, got {kind!r}",
                "parameter_invalid_string",
                "type",
            )
        cancel = p.get("cancel")
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        if not isinstance(identifier, str) or not identifier:
            raise missing("cancel[identifier]" if req.api == "v1" else "cancel.identifier")
        seen = self._seen.get(identifier)
        event = seen[1] if seen is not None else None
        if (
            seen is None
            or event is None
            or event.event_name != event_name
            or req.now - seen[0] >= DEDUP_WINDOW_SECONDS
        ):
            raise invalid(
                f"No meter event found with identifier '{identifier}' for event_name "
                f"'{event_name}' in the last 24 hours.",
                "resource_missing",
                "cancel[identifier]",
            )
        self._cancelled.add(identifier)
        return event_name, identifier

    def _h_adjustment_create(self, req: _Request) -> tuple[int, Any]:
        event_name, identifier = self._cancel(req)
        return 200, {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": False,
            "status": "pending",
            "type": "cancel",
        }

    def _h_session_create(self, req: _Request) -> tuple[int, Any]:
        if req.params:
            raise unknown_param(next(iter(req.params)))
        token = new_id("mest_test" if req.mode == "test" else "mest_live")
        expires = req.now + self.session_ttl
        self._sessions[token] = expires
        self._session_modes[token] = req.mode
        return 200, {
            "id": new_id("mes_test"),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": iso(req.now),
            "expires_at": iso(expires),
            "livemode": False,
        }

    def _h_stream_create(self, req: _Request) -> tuple[int, Any]:
        events = req.params.get("events")
        for key in req.params:
            if key != "events":
                raise unknown_param(key)
        if not isinstance(events, list):
            raise missing("events")
        if not events:
            raise invalid("events must contain at least 1 event.", "invalid_request", "events")
        if len(events) > MAX_STREAM_EVENTS:
            raise invalid(
                f"events must contain at most {MAX_STREAM_EVENTS} events, got {len(events)}.",
                "invalid_request",
                "events",
            )
        now = req.now
        parsed = [_v2_event(raw, i, now) for i, raw in enumerate(events)]
        reports = self._error_reports
        first = len(reports)
        for name, identifier, payload, ts in parsed:
            rejection = self._accept(name, identifier, payload, ts, "v2", now)
            if rejection is not None:
                reports.append(
                    {
                        "identifier": identifier,
                        "code": "duplicate_meter_event" if rejection.duplicate else rejection.code,
                        "message": rejection.message,
                        "event_name": name,
                    }
                )
        self._emit_reports(reports[first:], now)
        return 200, b"{}"

    def _h_v2_meter_event_create(self, req: _Request) -> tuple[int, Any]:
        name, identifier, payload, ts = _v2_event(req.params, None, req.now)
        self._accept_or_raise(name, identifier, payload, ts, "v2", req.now)
        return 200, {
            "object": "v2.billing.meter_event",
            "created": iso(req.now),
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": iso(ts),
        }

    def _h_v2_adjustment_create(self, req: _Request) -> tuple[int, Any]:
        event_name, identifier = self._cancel(req)
        return 200, {
            "id": new_id("mea_test"),
            "object": "v2.billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "created": iso(req.now),
            "event_name": event_name,
            "livemode": False,
            "status": "pending",
            "type": "cancel",
        }
