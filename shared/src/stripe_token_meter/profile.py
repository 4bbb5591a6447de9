"""The settings a journal segment was written with, so any process bills it the same way.

A segment's writer may die and another process take the segment over: the next worker
of the app, but also `stripe-token-meter flush` or a meter configured differently. The
raw records alone are not enough to bill them as their writer would have: its event
name, default customer, token types, payload keys, API, ledger mode, aggregation and
pricing (with the cost events' name) shape the events. So every segment starts with a settings frame, and a segment is
prepared with its own writer's settings, whoever reads it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Final

from .aggregate import DEFAULT_GRACE, Aggregation
from .dimensions import ModelNormalizer, keep_model, normalize_model
from .health import Health
from .prepare import Preparer
from .pricing import Pricing

SETTINGS: Final = 3
"""The first element of a settings frame (records are 1 and 2, see intake.py)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """How the records of one segment become stored events."""

    preparer: Preparer
    api: str
    local: bool
    aggregate: Aggregation | None


def normalizer_name(normalizer: ModelNormalizer) -> str | None:
    """'default', 'keep', or `module:qualname` of a plain function (None: not nameable)."""
    if normalizer is normalize_model:
        return "default"
    if normalizer is keep_model:
        return "keep"
    module = getattr(normalizer, "__module__", None)
    qualname = getattr(normalizer, "__qualname__", "")
    if getattr(normalizer, "__self__", None) is not None or not module or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def settings_of(profile: Profile) -> tuple[Any, ...]:
    """The settings frame's content (plain data, as marshal writes it)."""
    p = profile.preparer
    agg = profile.aggregate
    return (
        SETTINGS,
        {
            "event_name": p.event_name,
            "token_types": p.token_types,
            "default_customer_id": p.default_customer_id,
            "customer_key": p.customer_key,
            "value_key": p.value_key,
            "normalizer": normalizer_name(p.normalizer),
            "api": profile.api,
            "local": profile.local,
            "aggregate": None if agg is None else agg.seconds,
            "pricing": None if p.pricing is None else p.pricing.as_plain(),
            "cost_event_name": p.cost_event_name if p.pricing is not None else None,
        },
    )


def _normalizer(name: object, own: ModelNormalizer) -> ModelNormalizer:
    if name == "default":
        return normalize_model
    if name == "keep":
        return keep_model
    if isinstance(name, str) and ":" in name:
        module, _, qualname = name.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except Exception:
            return own
        if callable(obj):
            result: ModelNormalizer = obj
            return result
    return own  # a lambda or closure cannot be named: the reader's own is the best guess


def profile_from(settings: dict[str, Any], own: Profile, health: Health) -> Profile:
    """The writer's profile, built from its settings frame (`own` when they match)."""
    if settings == settings_of(own)[1]:
        return own
    mine = own.preparer
    seconds = settings.get("aggregate")
    pricing, cost_event_name = _pricing(settings, own, health)
    value_key = str(settings.get("value_key") or mine.value_key)
    return Profile(
        Preparer(
            event_name=str(settings.get("event_name") or mine.event_name),
            token_types=settings.get("token_types") or mine.token_types,
            normalizer=_normalizer(settings.get("normalizer"), mine.normalizer),
            default_customer_id=settings.get("default_customer_id"),
            customer_key=str(settings.get("customer_key") or mine.customer_key),
            value_key=value_key,
            health=health,
            pricing=pricing,
            cost_event_name=cost_event_name,
            on_cost=mine.on_cost,  # the guard is the reader's: it spends whoever wrote it
        ),
        api=str(settings.get("api") or own.api),
        local=bool(settings.get("local", own.local)),
        aggregate=None if not seconds else Aggregation(int(seconds), DEFAULT_GRACE, value_key),
    )


def _pricing(
    settings: dict[str, Any], own: Profile, health: Health
) -> tuple[Pricing | None, str | None]:
    """The writer's pricing and cost event name. A segment from before pricing existed
    had none; an unreadable one (a newer writer's format) falls back to the reader's."""
    plain = settings.get("pricing")
    name = settings.get("cost_event_name")
    if plain is None or not isinstance(name, str) or not name:
        return None, None
    try:
        return Pricing.from_plain(plain), name
    except Exception as exc:
        health.note_error("journal_settings", f"pricing: {exc!r}")
        mine = own.preparer
        return mine.pricing, mine.cost_event_name
