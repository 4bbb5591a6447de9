"""Catalog routes: customers, products and prices, as `setup` and the demo create them.

Why separate: nothing here is about metering; it only has to be as strict as Stripe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stripe_token_meter.testing._model import (
    _decimal_param,
    _Request,
)
from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import (
    invalid,
    missing,
    new_id,
    not_found,
    opt_bool,
    opt_int,
    opt_str,
    paginate,
    req_str,
    str_dict,
    unknown_param,
)

if TYPE_CHECKING:
    pass


class CatalogRoutes(State):
    """`/v1/customers`, `/v1/products`, `/v1/prices`."""

    def _customer_obj(
        self,
        cid: str,
        email: str | None,
        name: str | None,
        metadata: dict[str, str],
        now: float,
        description: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "customer",
            "balance": 0,
            "created": int(now),
            "currency": None,
            "delinquent": False,
            "description": description,
            "email": email,
            "livemode": False,
            "metadata": metadata,
            "name": name,
        }

    def _h_customer_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        if "id" in p:
            raise unknown_param("id")
        cid = new_id("cus")
        obj = self._customer_obj(
            cid,
            opt_str(p, "email"),
            opt_str(p, "name"),
            str_dict(p.get("metadata"), "metadata"),
            req.now,
            opt_str(p, "description"),
        )
        self._customers[cid] = obj
        return 200, obj

    def _h_customer_retrieve(self, req: _Request) -> tuple[int, Any]:
        cid = req.args[0]
        obj = self._customers.get(cid)
        if obj is None:
            if self.auto_customers and cid.startswith("cus_"):
                return 200, self._customer_obj(cid, None, None, {}, req.now)
            raise not_found("customer", cid)
        return 200, obj

    def _h_customer_delete(self, req: _Request) -> tuple[int, Any]:
        cid = req.args[0]
        if self._customers.pop(cid, None) is None:
            raise not_found("customer", cid)
        return 200, {"id": cid, "object": "customer", "deleted": True}

    def _h_customer_list(self, req: _Request) -> tuple[int, Any]:
        email = opt_str(req.params, "email")
        items = [
            c
            for c in reversed(self._customers.values())
            if email is None or c.get("email") == email
        ]
        return 200, paginate(items, req.params, "/v1/customers")

    def _h_product_create(self, req: _Request) -> tuple[int, Any]:
        return 200, self._make_product(req.params, req.now)

    def _make_product(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = req_str(p, "name")
        pid = opt_str(p, "id") or new_id("prod")
        if pid in self._products:
            raise invalid(f"Product already exists with id {pid}.", "resource_already_exists", "id")
        active = opt_bool(p, "active")
        obj: dict[str, Any] = {
            "id": pid,
            "object": "product",
            "active": True if active is None else active,
            "created": int(now),
            "default_price": None,
            "description": opt_str(p, "description"),
            "livemode": False,
            "metadata": str_dict(p.get("metadata"), "metadata"),
            "name": name,
            "type": "service",
            "unit_label": opt_str(p, "unit_label"),
            "updated": int(now),
        }
        self._products[pid] = obj
        return obj

    def _h_product_list(self, req: _Request) -> tuple[int, Any]:
        active = opt_bool(req.params, "active")
        items = [
            o for o in reversed(self._products.values()) if active is None or o["active"] == active
        ]
        return 200, paginate(items, req.params, "/v1/products")

    def _h_product_retrieve(self, req: _Request) -> tuple[int, Any]:
        obj = self._products.get(req.args[0])
        if obj is None:
            raise not_found("product", req.args[0])
        return 200, obj

    def _h_price_create(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        currency = req_str(p, "currency").lower()
        product_id = opt_str(p, "product")
        if product_id:
            if product_id not in self._products:
                raise invalid(f"No such product: '{product_id}'", "resource_missing", "product")
        elif isinstance(p.get("product_data"), dict):
            product_id = self._make_product(p["product_data"], req.now)["id"]
        else:
            raise missing("product")
        recurring = p.get("recurring")
        recurring_obj: dict[str, Any] | None = None
        if recurring is not None:
            if not isinstance(recurring, dict):
                raise invalid("Invalid hash", "parameter_invalid_string", "recurring")
            interval = recurring.get("interval")
            if interval not in ("day", "week", "month", "year"):
                raise missing("recurring[interval]")
            usage_type = recurring.get("usage_type", "licensed")
            meter_id = recurring.get("meter")
            if meter_id is not None and meter_id not in self._meters:
                raise invalid(
                    f"No such billing meter: '{meter_id}'", "resource_missing", "recurring[meter]"
                )
            if usage_type == "metered" and meter_id is None:
                raise missing("recurring[meter]")
            recurring_obj = {
                "interval": interval,
                "interval_count": opt_int(recurring, "interval_count", 1),
                "meter": meter_id,
                "trial_period_days": None,
                "usage_type": usage_type,
            }
        scheme = opt_str(p, "billing_scheme") or "per_unit"
        tiers_mode = opt_str(p, "tiers_mode")
        tiers = self._tiers(p.get("tiers")) if p.get("tiers") is not None else None
        if scheme == "tiered" and (tiers is None or tiers_mode not in ("graduated", "volume")):
            raise missing("tiers" if tiers is None else "tiers_mode")
        unit_amount = opt_int(p, "unit_amount")
        unit_amount_decimal = _decimal_param(p, "unit_amount_decimal")
        if unit_amount is not None and unit_amount_decimal is None:
            unit_amount_decimal = str(unit_amount)
        lookup_key = opt_str(p, "lookup_key")
        if lookup_key:
            for other in self._prices.values():
                if other["lookup_key"] == lookup_key:
                    if opt_bool(p, "transfer_lookup_key"):
                        other["lookup_key"] = None
                    else:
                        raise invalid(
                            f"A price (`{other['id']}`) already uses that lookup key.",
                            None,
                            "lookup_key",
                        )
        active = opt_bool(p, "active")
        obj: dict[str, Any] = {
            "id": new_id("price"),
            "object": "price",
            "active": True if active is None else active,
            "billing_scheme": scheme,
            "created": int(req.now),
            "currency": currency,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": str_dict(p.get("metadata"), "metadata"),
            "nickname": opt_str(p, "nickname"),
            "product": product_id,
            "recurring": recurring_obj,
            "tax_behavior": opt_str(p, "tax_behavior") or "unspecified",
            "tiers_mode": tiers_mode,
            "transform_quantity": None,
            "type": "recurring" if recurring_obj else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        if tiers is not None:
            obj["tiers"] = tiers
        self._prices[obj["id"]] = obj
        return 200, obj

    def _tiers(self, raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not raw:
            raise invalid("Invalid array", "parameter_invalid_string", "tiers")
        tiers: list[dict[str, Any]] = []
        for i, tier in enumerate(raw):
            if not isinstance(tier, dict) or "up_to" not in tier:
                raise missing(f"tiers[{i}][up_to]")
            up_to = None if tier["up_to"] == "inf" else opt_int(tier, "up_to")
            unit_amount = opt_int(tier, "unit_amount")
            flat_amount = opt_int(tier, "flat_amount")
            unit_dec = _decimal_param(tier, "unit_amount_decimal")
            flat_dec = _decimal_param(tier, "flat_amount_decimal")
            tiers.append(
                {
                    "flat_amount": flat_amount,
                    "flat_amount_decimal": flat_dec
                    or (None if flat_amount is None else str(flat_amount)),
                    "unit_amount": unit_amount,
                    "unit_amount_decimal": unit_dec
                    or (None if unit_amount is None else str(unit_amount)),
                    "up_to": up_to,
                }
            )
        if tiers[-1]["up_to"] is not None:
            raise invalid(
                "The last tier must have up_to set to inf.", "parameter_invalid_integer", "tiers"
            )
        return tiers

    def _h_price_list(self, req: _Request) -> tuple[int, Any]:
        p = req.params
        lookup_keys = p.get("lookup_keys")
        if isinstance(lookup_keys, str):
            lookup_keys = [lookup_keys]
        product = opt_str(p, "product")
        active = opt_bool(p, "active")
        kind = opt_str(p, "type")
        items = [
            o
            for o in reversed(self._prices.values())
            if (lookup_keys is None or o["lookup_key"] in lookup_keys)
            and (product is None or o["product"] == product)
            and (active is None or o["active"] == active)
            and (kind is None or o["type"] == kind)
        ]
        return 200, paginate(items, p, "/v1/prices")

    def _h_price_retrieve(self, req: _Request) -> tuple[int, Any]:
        obj = self._prices.get(req.args[0])
        if obj is None:
            raise not_found("price", req.args[0])
        return 200, obj
