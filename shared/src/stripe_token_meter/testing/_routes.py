"""FakeStripe's route table: (method, path) -> handler, API version and kind of auth.

Why separate: the table names every route module; the server core only looks routes up.
"""

from __future__ import annotations

import base64
from json import JSONDecodeError, loads
from typing import Any
from urllib.parse import unquote

from stripe_token_meter.testing._catalog import CatalogRoutes
from stripe_token_meter.testing._credits import CreditRoutes
from stripe_token_meter.testing._meter_events import MeterEventRoutes
from stripe_token_meter.testing._meters import MeterRoutes
from stripe_token_meter.testing._model import (
    _Route,
)
from stripe_token_meter.testing._webhooks import Webhooks
from stripe_token_meter.testing._wire import (
    ApiVersion,
    invalid,
    parse_form,
)


def _credential(authz: str | None) -> str:
    """Bearer token (or Basic-auth username, which Stripe also accepts)."""
    if not authz:
        return ""
    scheme, _, value = authz.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[0]
        except ValueError:
            return ""
    return ""


def _parse_params(api: ApiVersion, method: str, query: str, body: bytes) -> dict[str, Any]:
    if method != "POST":
        return parse_form(query) if query else {}
    if api == "v1":
        try:
            return parse_form(body.decode("utf-8")) if body else {}
        except UnicodeDecodeError:
            raise invalid("Request body is not valid UTF-8.") from None
    if not body:
        return {}
    try:
        data = loads(body)
    except (JSONDecodeError, UnicodeDecodeError):
        raise invalid(
            "The request body could not be parsed as JSON.", "invalid_request", None
        ) from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.", "invalid_request", None)
    return data


_STATIC: dict[tuple[str, str], _Route] = {
    ("POST", "/v1/billing/meter_events"): _Route(
        MeterEventRoutes._h_meter_event_create, "v1", "key"
    ),
    ("POST", "/v1/billing/meter_event_adjustments"): _Route(
        MeterEventRoutes._h_adjustment_create, "v1", "key"
    ),
    ("POST", "/v1/billing/meters"): _Route(MeterRoutes._h_meter_create, "v1", "key"),
    ("GET", "/v1/billing/meters"): _Route(MeterRoutes._h_meter_list, "v1", "key"),
    ("POST", "/v1/customers"): _Route(CatalogRoutes._h_customer_create, "v1", "key"),
    ("GET", "/v1/customers"): _Route(CatalogRoutes._h_customer_list, "v1", "key"),
    ("POST", "/v1/products"): _Route(CatalogRoutes._h_product_create, "v1", "key"),
    ("GET", "/v1/products"): _Route(CatalogRoutes._h_product_list, "v1", "key"),
    ("POST", "/v1/prices"): _Route(CatalogRoutes._h_price_create, "v1", "key"),
    ("GET", "/v1/prices"): _Route(CatalogRoutes._h_price_list, "v1", "key"),
    ("POST", "/v1/billing/credit_grants"): _Route(CreditRoutes._h_credit_grant_create, "v1", "key"),
    ("GET", "/v1/billing/credit_grants"): _Route(CreditRoutes._h_credit_grant_list, "v1", "key"),
    ("GET", "/v1/billing/credit_balance_summary"): _Route(
        CreditRoutes._h_credit_balance_summary, "v1", "key"
    ),
    ("POST", "/v2/billing/meter_event_session"): _Route(
        MeterEventRoutes._h_session_create, "v2", "key"
    ),
    ("POST", "/v2/billing/meter_event_stream"): _Route(
        MeterEventRoutes._h_stream_create, "v2", "session"
    ),
    ("POST", "/v2/billing/meter_events"): _Route(
        MeterEventRoutes._h_v2_meter_event_create, "v2", "key"
    ),
    ("POST", "/v2/billing/meter_event_adjustments"): _Route(
        MeterEventRoutes._h_v2_adjustment_create, "v2", "key"
    ),
}

# (method, prefix, suffix) -> route, for paths shaped "<prefix>{id}<suffix>".
_DYNAMIC: list[tuple[str, str, str, _Route]] = [
    (
        "GET",
        "/v1/billing/meters/",
        "/event_summaries",
        _Route(MeterRoutes._h_event_summaries, "v1", "key"),
    ),
    (
        "POST",
        "/v1/billing/meters/",
        "/deactivate",
        _Route(MeterRoutes._h_meter_deactivate, "v1", "key"),
    ),
    (
        "POST",
        "/v1/billing/meters/",
        "/reactivate",
        _Route(MeterRoutes._h_meter_reactivate, "v1", "key"),
    ),
    ("GET", "/v1/billing/meters/", "", _Route(MeterRoutes._h_meter_retrieve, "v1", "key")),
    ("POST", "/v1/billing/meters/", "", _Route(MeterRoutes._h_meter_update, "v1", "key")),
    (
        "POST",
        "/v1/billing/credit_grants/",
        "/void",
        _Route(CreditRoutes._h_credit_grant_void, "v1", "key"),
    ),
    (
        "GET",
        "/v1/billing/credit_grants/",
        "",
        _Route(CreditRoutes._h_credit_grant_retrieve, "v1", "key"),
    ),
    ("GET", "/v1/customers/", "", _Route(CatalogRoutes._h_customer_retrieve, "v1", "key")),
    ("DELETE", "/v1/customers/", "", _Route(CatalogRoutes._h_customer_delete, "v1", "key")),
    ("GET", "/v1/products/", "", _Route(CatalogRoutes._h_product_retrieve, "v1", "key")),
    ("GET", "/v1/prices/", "", _Route(CatalogRoutes._h_price_retrieve, "v1", "key")),
    ("GET", "/v2/core/events/", "", _Route(Webhooks._h_v2_event_retrieve, "v2", "key")),
]


def _resolve(method: str, path: str) -> tuple[_Route, tuple[str, ...]] | None:
    route = _STATIC.get((method, path))
    if route is not None:
        return route, ()
    for verb, prefix, suffix, route in _DYNAMIC:
        if verb == method and path.startswith(prefix) and path.endswith(suffix):
            ident = path[len(prefix) : len(path) - len(suffix)]
            if ident and "/" not in ident:
                return route, (unquote(ident),)
    return None
