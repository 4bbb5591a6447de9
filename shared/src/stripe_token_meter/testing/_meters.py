"""Meter routes: create, list, retrieve, update, (de|re)activate, event summaries.

Why separate: meters are configuration; events only read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stripe_token_meter.testing._model import (
    _FORMULAS,
    _METER_PARAMS,
    DAY,
    _Meter,
    _Request,
)
from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import (
    invalid,
    missing,
    not_found,
    opt_int,
    opt_str,
    paginate,
    req_str,
    unknown_param,
)

if TYPE_CHECKING:
    pass


class MeterRoutes(State):
    """`/v1/billing/meters` and `/v1/billing/meters/{id}/event_summaries`."""

    def _h_meter_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        for key in p:
            if key not in _METER_PARAMS:
                raise unknown_param(key)
        display_name = req_str(p, "display_name")
        event_name = req_str(p, "event_name")
        agg = p.get("default_aggregation")
        formula = agg.get("formula") if isinstance(agg, dict) else None
        if formula is None:
            raise missing("default_aggregation[formula]")
        if formula not in _FORMULAS:
            raise invalid(
                "Invalid default_aggregation[formula]: must be one of sum, count, or last",
                "parameter_invalid_string",
                "default_aggregation[formula]",
            )
        customer_key = "stripe_customer_id"
        mapping = p.get("customer_mapping")
        if mapping is not None:
            if not isinstance(mapping, dict) or not isinstance(
                mapping.get("event_payload_key"), str
            ):
                raise missing("customer_mapping[event_payload_key]")
            if mapping.get("type", "by_id") != "by_id":
                raise invalid(
                    "Invalid customer_mapping[type]: must be by_id",
                    "parameter_invalid_string",
                    "customer_mapping[type]",
                )
            customer_key = mapping["event_payload_key"]
        value_key = "value"
        settings = p.get("value_settings")
        if settings is not None:
            if not isinstance(settings, dict) or not isinstance(
                settings.get("event_payload_key"), str
            ):
                raise missing("value_settings[event_payload_key]")
            value_key = settings["event_payload_key"]
        dims = p.get("dimension_payload_keys") or []
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise invalid("Invalid array", "parameter_invalid_string", "dimension_payload_keys")
        window = opt_str(p, "event_time_window")
        if event_name in self._active_meters:
            raise invalid(
                f"An active meter with event_name '{event_name}' already exists.",
                "resource_already_exists",
                "event_name",
            )
        meter = _Meter(
            event_name, display_name, formula, customer_key, value_key, dims, window, int(req.now)
        )
        self._meters[meter.id] = meter
        self._active_meters[event_name] = meter
        return 200, meter.to_json()

    def _meter(self, meter_id: str) -> _Meter:
        meter = self._meters.get(meter_id)
        if meter is None:
            raise not_found("billing.meter", meter_id)
        return meter

    def _h_meter_list(self, req: _Request) -> tuple[int, Any]:
        status = opt_str(req.params, "status")
        items = [
            m.to_json()
            for m in reversed(self._meters.values())
            if status is None or m.status == status
        ]
        return 200, paginate(items, req.params, "/v1/billing/meters")

    def _h_meter_retrieve(self, req: _Request) -> tuple[int, Any]:
        return 200, self._meter(req.args[0]).to_json()

    def _h_meter_update(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        for key in req.params:
            if key not in ("display_name", "expand"):
                raise unknown_param(key)
        name = opt_str(req.params, "display_name")
        if name:
            meter.display_name = name
            meter.updated = int(req.now)
        return 200, meter.to_json()

    def _h_meter_deactivate(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        if meter.status == "active":
            meter.status = "inactive"
            meter.deactivated_at = meter.updated = int(req.now)
            if self._active_meters.get(meter.event_name) is meter:
                del self._active_meters[meter.event_name]
        return 200, meter.to_json()

    def _h_meter_reactivate(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        if meter.status != "active":
            other = self._active_meters.get(meter.event_name)
            if other is not None:
                raise invalid(
                    f"An active meter with event_name '{meter.event_name}' already exists "
                    f"({other.id}).",
                    "resource_already_exists",
                    "id",
                )
            meter.status = "active"
            meter.deactivated_at = None
            meter.updated = int(req.now)
            self._active_meters[meter.event_name] = meter
        return 200, meter.to_json()

    def _h_event_summaries(self, req: _Request) -> tuple[int, Any]:
        meter = self._meter(req.args[0])
        p = req.params
        customer = req_str(p, "customer")
        start = opt_int(p, "start_time")
        end = opt_int(p, "end_time")
        if start is None:
            raise missing("start_time")
        if end is None:
            raise missing("end_time")
        if end <= start:
            raise invalid(
                "end_time must be after start_time", "parameter_invalid_integer", "end_time"
            )
        window = opt_str(p, "value_grouping_window")
        if window not in (None, "hour", "day"):
            raise invalid(
                "Invalid value_grouping_window: must be one of day or hour",
                "parameter_invalid_string",
                "value_grouping_window",
            )
        # Stripe's rules (API reference, billing.meter_event_summary list): times are
        # aligned to minute boundaries, and to the grouping window's when grouping; `limit`
        # is 1..100 as for every list.
        align = 60 if window is None else (3600 if window == "hour" else DAY)
        unit = "minute" if window is None else window
        for name, value in (("start_time", start), ("end_time", end)):
            if value % align:
                raise invalid(
                    f"{name} must be aligned with {unit} boundaries.",
                    "parameter_invalid_integer",
                    name,
                )
        limit = opt_int(p, "limit")
        if limit is not None and not 1 <= limit <= 100:
            raise invalid("limit must be between 1 and 100.", "parameter_invalid_integer", "limit")
        step = end - start if window is None else (3600 if window == "hour" else DAY)
        if (end - start) // step > 10_000:
            raise invalid(
                "Too many grouping windows requested.", "parameter_invalid_integer", "start_time"
            )
        cancelled = self._cancelled
        relevant = [
            e
            for e in self._events
            if e.event_name == meter.event_name
            and e.customer == customer
            and start <= e.timestamp < end
            and e.identifier not in cancelled
        ]
        summaries: list[dict[str, Any]] = []
        bucket = start
        while bucket < end:
            bucket_end = min(bucket + step, end)
            inside = [e for e in relevant if bucket <= e.timestamp < bucket_end]
            if meter.formula == "count":
                agg = float(len(inside))
            elif meter.formula == "last":
                agg = float(max(inside, key=lambda e: e.timestamp).value) if inside else 0.0
            else:
                agg = float(sum(e.value for e in inside))
            summaries.append(
                {
                    "id": f"mtrusg_{meter.id}_{customer}_{bucket}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": agg,
                    "customer": customer,
                    "end_time": bucket_end,
                    "livemode": False,
                    "meter": meter.id,
                    "start_time": bucket,
                }
            )
            bucket = bucket_end
        summaries.reverse()  # Stripe lists newest window first
        return 200, paginate(summaries, p, f"/v1/billing/meters/{meter.id}/event_summaries")
