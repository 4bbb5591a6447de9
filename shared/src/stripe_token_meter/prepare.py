"""Raw records -> meter events: validation, customer resolution, model normalisation.

Runs on the worker (or on the caller for `strict=True` and `durable="sync"`). The raw
record is what `record()` took, unchanged, so a record read back from the journal by
another process is prepared exactly as its own process would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .customer import resolve_customer
from .dimensions import ModelNormalizer, TokenTypes
from .errors import InvalidDimension, InvalidUsage, MissingCustomer
from .events import MeterEvent, build_events, make_identifier
from .health import Health
from .outbox import Reject
from .pricing import Pricing
from .usage import Usage, check_customer, check_timestamp

_CONSTRUCTORS: dict[str, Callable[..., Usage]] = {
    "disjoint": Usage,
    "openai": Usage.from_openai,
    "anthropic": Usage.from_anthropic,
}
USAGE_FIELDS: tuple[str, ...] = tuple(Usage.__dataclass_fields__)
COST_TOKEN_TYPE = "cost"
"""The outbox's token type column of a cost event (its payload has no token_type), so
reports can tell cost rows (micro-units) from token rows."""


@dataclass(slots=True)
class RawRecord:
    """What `record()` was given, and the scope and time it was given at."""

    usage: Any
    """A `Usage`, None (the fields describe it), or anything else (rejected)."""
    counts: str
    fields: dict[str, Any]
    scoped: str | None
    fallback: str | None
    recorded_at: float
    request_id: str | None = None
    """An identifier for a record that names none: derived from its journal position, so
    reading the same frame twice gives the same events."""


@dataclass(frozen=True, slots=True)
class Preparer:
    """The meter's settings that shape events, applied to raw records."""

    event_name: str
    token_types: TokenTypes
    normalizer: ModelNormalizer
    default_customer_id: str | None
    customer_key: str
    value_key: str
    health: Health
    reserved: frozenset[str] = frozenset()
    """Payload keys a dimension may not use: set from the keys in `__post_init__`."""
    pricing: Pricing | None = None
    """With prices, one more event per priced call: its cost in micro-units."""
    cost_event_name: str | None = None
    on_cost: Callable[[str, int], None] | None = None
    """The guard's `record_cost(customer_id, micros)`, told of each cost event built."""

    def __post_init__(self) -> None:
        keys = frozenset({"model", "token_type", self.customer_key, self.value_key})
        object.__setattr__(self, "reserved", keys)

    def prepare(self, raw: RawRecord) -> list[MeterEvent]:
        """Raw record -> meter events. Raises InvalidUsage naming the field and the rule."""
        usage = raw.usage
        if usage is None:
            ctor = _CONSTRUCTORS.get(raw.counts)
            if ctor is None:
                raise InvalidUsage(
                    "counts", f"must be 'disjoint', 'openai' or 'anthropic', got {raw.counts!r}"
                )
            try:
                usage = ctor(**raw.fields)
            except TypeError as exc:
                raise InvalidUsage("fields", f"{exc}; see Usage's fields") from None
        elif not isinstance(usage, Usage):
            raise InvalidUsage("usage", f"must be a Usage, got {type(usage).__name__}")
        elif raw.fields:
            raise InvalidUsage(
                "fields",
                f"a Usage was passed with fields {sorted(raw.fields)} as well: put them on the "
                "Usage (e.g. Usage(..., customer_id='cus_...')) or pass only the fields",
            )
        if usage.dimensions:
            clash = sorted(self.reserved & usage.dimensions.keys())
            if clash:
                raise InvalidDimension(
                    "dimensions", f"keys {clash} are the meter's own payload keys"
                )
        default = self.default_customer_id
        customer = resolve_customer(usage.customer_id, raw.scoped, raw.fallback, default)
        if customer is None:
            raise MissingCustomer(
                "customer_id",
                "no customer for this call: pass stripe_customer_id in the call's metadata, use "
                "`with meter.customer('cus_...')`, or set a handler customer_id/default_customer_id",
            )
        if customer is not usage.customer_id and customer is not default:
            customer = check_customer("customer_id", customer)  # the others are checked
        ts = (
            usage.timestamp
            if usage.timestamp is not None
            else check_timestamp("timestamp", raw.recorded_at)
        )
        request_id = usage.request_id or raw.request_id or uuid.uuid4().hex
        events = build_events(
            usage,
            customer_id=customer,
            request_id=request_id,
            timestamp=ts,
            event_name=self.event_name,
            token_types=self.token_types,
            normalizer=self.normalizer,
            customer_key=self.customer_key,
            value_key=self.value_key,
        )
        if events and self.pricing is not None and self.cost_event_name:
            cost = self._cost_event(usage, events[0], request_id)
            if cost is not None:
                events.append(cost)
        if not events:
            self.health.count("empty")
        elif not (usage.input_tokens or usage.cached_input_tokens or usage.cache_write_tokens) and (
            usage.output_tokens or usage.reasoning_tokens
        ):
            # A prompt always has tokens: the input count was lost on the way, not zero.
            self.health.warn_once(
                f"no_input:{usage.model}",
                f"stripe-token-meter: usage for {usage.model} reports output tokens but no "
                "input tokens; billed as reported. The provider or framework dropped the "
                "input count (e.g. LangChain's ChatAnthropic streaming from a server whose "
                "message_delta lacks the cumulative usage Anthropic's API sends)",
            )
        return events

    def _cost_event(self, usage: Usage, first: MeterEvent, request_id: str) -> MeterEvent | None:
        """The call's cost event (None: unpriced model, counted; or a zero cost).

        Same customer, timestamp, model and dimensions as its token events; the identifier
        comes from the request id, so a replayed record gives the same one.
        """
        assert self.pricing is not None and self.cost_event_name is not None
        micros = self.pricing.cost_micros(
            first.model,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            token_types=self.token_types,
        )
        if micros is None:
            self.health.note_unpriced(first.model)
            return None
        if micros <= 0:
            return None
        payload = {
            **usage.dimensions,
            self.customer_key: first.customer_id,
            self.value_key: str(micros),
            "model": first.model,
        }
        return MeterEvent(
            identifier=make_identifier(request_id, COST_TOKEN_TYPE, self.cost_event_name),
            event_name=self.cost_event_name,
            timestamp=first.timestamp,
            customer_id=first.customer_id,
            model=first.model,
            token_type=COST_TOKEN_TYPE,
            value=micros,
            payload=payload,
        )

    def events_or_reject(self, raw: RawRecord, rejects: list[Reject]) -> list[MeterEvent]:
        """`prepare`, or [] with the record appended to `rejects` (kept, never dropped).

        Runs on the worker: the guard's `record_cost` hears of each cost event here (never
        for a rejected record, nor for `strict`'s check on the caller).
        """
        try:
            events = self.prepare(raw)
        except InvalidUsage as exc:
            rejects.append(self.rejected(exc, raw))
            return []
        except Exception as exc:  # e.g. a user normaliser that raised: keep the record
            rejects.append(
                self.rejected(InvalidUsage("record", f"{type(exc).__name__}: {exc}"), raw)
            )
            return []
        on_cost = self.on_cost
        if on_cost is not None and self.cost_event_name:
            for event in events:
                if event.event_name == self.cost_event_name:
                    try:
                        on_cost(event.customer_id, event.value)
                    except Exception as exc:  # the guard's failure never costs the record
                        self.health.adapter_error("guard.record_cost", exc)
        return events

    def rejected(self, exc: InvalidUsage, raw: RawRecord) -> Reject:
        """The dead-letter row for a record that could not become events."""
        record = dict(raw.fields)
        usage = raw.usage
        if isinstance(usage, Usage):
            record.update({k: getattr(usage, k) for k in USAGE_FIELDS})
        elif usage is not None:
            record["usage"] = repr(usage)[:200]
        record.update(
            counts=raw.counts,
            scope_customer=raw.scoped,
            fallback_customer=raw.fallback,
            recorded_at=raw.recorded_at,
        )
        self.health.count("invalid")
        self.health.warn_once(
            f"invalid:{exc.code}", f"stripe-token-meter: usage dead-lettered ({exc.code}): {exc}"
        )
        return (exc.code, exc.field, exc.message, record)
