"""The adapter kit: what every framework adapter shares, so each keeps only its framework.

An adapter turns a framework's callbacks into `TokenMeter.record()` calls. What is not
about the framework lives here, once: the metadata keys, the adapter's options checked
once, the per-call customer, the dimension merge, the bounded map of calls in flight, the
one containment and strict rule, and the pre-call hook of a guarded meter. See
README "Writing an adapter" for a minimal adapter built on it.

Customer precedence is the meter's, never the adapter's: per-call (`customer_id=` on the
record, e.g. `call_customer(metadata)`) > `meter.customer()` scope > the adapter's own
(`fallback_customer_id=options.customer_id`) > the meter's default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from .customer import current_customer
from .errors import ConfigurationError, CreditExhausted, InvalidUsage
from .usage import check_customer, check_dimensions

if TYPE_CHECKING:
    from .guard import Hold
    from .meter import TokenMeter

CUSTOMER_KEY: Final = "stripe_customer_id"
"""The framework metadata key naming a call's Stripe customer."""
DIMENSIONS_KEY: Final = "stripe_dimensions"
"""The framework metadata key carrying a call's extra dimensions (a mapping of str)."""
DEFAULT_MAX_TRACKED: Final = 10_000
"""Calls in flight an adapter keeps, should a framework never report some calls' end."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class AdapterOptions:
    """An adapter's own settings, checked once when it is built (not on every call)."""

    customer_id: str | None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    max_tracked: int = DEFAULT_MAX_TRACKED

    def __post_init__(self) -> None:
        # Copied and read-only: options are shared by every call and never change under one.
        object.__setattr__(self, "dimensions", MappingProxyType(dict(self.dimensions)))

    @classmethod
    def check(
        cls,
        *,
        customer_id: str | None = None,
        dimensions: Mapping[str, str] | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
    ) -> AdapterOptions:
        """Validated options; `ConfigurationError` (a `ValueError`) names the bad option.

        A bad option is the developer's mistake, so it fails at start-up rather than
        dead-lettering every call later.
        """
        try:
            customer = check_customer("customer_id", customer_id) if customer_id else None
            dims = check_dimensions(dimensions)
        except InvalidUsage as exc:
            raise ConfigurationError(str(exc)) from exc
        if isinstance(max_tracked, bool) or not isinstance(max_tracked, int) or max_tracked < 1:
            raise ConfigurationError(
                f"max_tracked: must be an int of at least 1, got {max_tracked!r}"
            )
        return cls(customer, dims, max_tracked)


def call_customer(metadata: Mapping[str, Any] | None, key: str = CUSTOMER_KEY) -> str | None:
    """The per-call customer named in framework metadata under `key` (`CUSTOMER_KEY`), or None.

    None and "" mean "not named": the meter's precedence decides. Any other value is
    passed on (a non-str as its `str()`), so a bad id is dead-lettered as
    `invalid_customer` by the core, never billed to a fallback customer instead.
    """
    if not metadata:
        return None
    value = metadata.get(key)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def merge_dimensions(options: AdapterOptions, per_call: object) -> dict[str, Any] | object:
    """The adapter's dimensions overlaid with a call's `DIMENSIONS_KEY` value.

    A falsy value adds nothing. A value that is not a mapping is returned as it is, so the
    record is dead-lettered by the core with `InvalidDimension` naming it: a mistake the
    app can see in `stats()["invalid"]`, never silently dropped.
    """
    if not per_call:
        return {**options.dimensions}
    if isinstance(per_call, Mapping):
        return {**options.dimensions, **per_call}
    return per_call


class InFlight(Mapping[K, V], Generic[K, V]):
    """Calls (or runs, or holds) in flight: a thread-safe, bounded, insertion-ordered map.

    The one eviction rule: past `maxlen` the oldest entry goes, and `on_evict(value)` is
    called for it (its errors contained), so a framework that never reports some calls'
    end costs bounded memory and leaks no reservation. `put` and `pop` are single dict
    operations (atomic in CPython) on the caller's thread; only eviction takes a lock.
    """

    def __init__(self, maxlen: int, on_evict: Callable[[V], object] | None = None) -> None:
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()
        self._max = maxlen
        self._on_evict = on_evict

    def put(self, key: K, value: V) -> None:
        """Keep `value` under `key` (a new key is the newest); evict the oldest when full."""
        items = self._items
        items[key] = value
        if len(items) > self._max:
            self._evict()

    def _evict(self) -> None:
        evicted: list[V] = []
        with self._lock:
            items = self._items
            while len(items) > self._max:
                try:
                    oldest = next(iter(items))
                except (RuntimeError, StopIteration):
                    continue  # another thread changed the map meanwhile: look again
                value = items.pop(oldest, _MISSING)
                if value is not _MISSING:  # else its call ended meanwhile
                    evicted.append(value)  # type: ignore[arg-type]
        if self._on_evict is not None:
            for old in evicted:
                with suppress(Exception):
                    self._on_evict(old)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove and return `key`'s value (`default` if absent)."""
        return self._items.pop(key, default)

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        """`key`'s value, or `default`: no exception raised on a miss (the common case)."""
        return self._items.get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        while True:
            try:
                return iter(list(self._items))
            except RuntimeError:  # changed while being copied: copy again
                continue

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"InFlight({len(self._items)}/{self._max})"


_MISSING: Final = object()


class _NoHold:
    """Marks a call whose guard was asked and returned no hold (so it is not asked twice)."""

    def release(self) -> None:
        """Nothing to release."""


_NO_HOLD: Final = _NoHold()
_REPORTED: Final = "_stripe_token_meter_reported"
"""Set on an error a strict `failed` re-raised, so an outer `failed` does not count it again."""


def _release(hold: Hold) -> None:
    """`Hold.release()` never raises by contract; a broken guard must not break the call."""
    with suppress(Exception):
        hold.release()


class AdapterKit:
    """One adapter instance's shared machinery: containment, strict rule, pre-call holds.

    `source` names the adapter in `stats()["adapter_errors"]` and the log (e.g.
    "langchain-stripe"); each failure is reported as `source.where`.
    """

    def __init__(self, meter: TokenMeter, options: AdapterOptions, source: str) -> None:
        self.meter = meter
        self.options = options
        self.source = source
        self._holds: InFlight[Hashable, Hold] = InFlight(options.max_tracked, _release)

    @property
    def guarded(self) -> bool:
        """Whether the meter has a guard: without one an adapter skips the pre-call hook."""
        return self.meter.guarded

    @property
    def open_holds(self) -> int:
        """Calls asked about (`reserve`) and not yet released (0 when idle)."""
        return len(self._holds)

    def failed(self, where: str, exc: BaseException) -> None:
        """The one containment: count and log the adapter's failure; never break the call.

        The one strict rule: a `strict=True` meter re-raises the error after counting it,
        whatever it is, as `record()` raises on a strict meter: strict mode is for tests
        and development, where an adapter's failure must be seen. A framework that
        swallows callback errors (LlamaIndex's dispatcher) still shows it in the stats.
        """
        if getattr(exc, _REPORTED, False):
            raise exc  # re-raised by a strict inner `failed`: counted once, not twice
        with suppress(Exception):
            self.meter.report_adapter_error(f"{self.source}.{where}", exc)
        if self.meter.strict:
            with suppress(Exception):
                setattr(exc, _REPORTED, True)
            raise exc

    def reserve(
        self,
        key: Hashable,
        customer: str | None,
        *,
        model: str | None = None,
        provider: str | None = None,
    ) -> None:
        """The pre-call hook: ask the meter's guard about `customer` before the provider call.

        `customer` is the call's per-call customer (or None); the adapter's own
        `customer_id` ranks below a `meter.customer()` scope, as for records. The hold is
        kept under `key` until `release(key)` (None: no key to release it by, so it is
        released at once). `CreditExhausted` propagates: the call must not be made.
        Anything else is contained by `failed`. Without a guard it does nothing.
        """
        if not self.meter.guarded:
            return
        try:
            who = customer if isinstance(customer, str) and customer else None
            who = who or current_customer() or self.options.customer_id
            named = model if isinstance(model, str) and model else None
            hold = self.meter.before_call(who, model=named, provider=provider)
            if key is None:
                if hold is not None:
                    _release(hold)
                return
            self._holds.put(key, hold if hold is not None else _NO_HOLD)
        except CreditExhausted:
            raise
        except Exception as exc:
            self.failed("reserve", exc)

    def reserved(self, key: Hashable) -> bool:
        """Whether `reserve(key, ...)` ran and `key` was not released since (asked already)."""
        return key in self._holds

    def release(self, key: Hashable) -> None:
        """End `key`'s hold, whatever the call's outcome; idempotent, never raises."""
        if self._holds._items:  # the common case, no guard: one truth test
            hold = self._holds.pop(key)
            if hold is not None:
                _release(hold)


class KitOptionsMixin:
    """`customer_id` and `dimensions` of an adapter whose kit is `self._kit`: read from its
    options, and a new customer checked as the constructor checks it (an app may re-point
    one handler per request)."""

    _kit: AdapterKit

    @property
    def customer_id(self) -> str | None:
        """The adapter's customer, below a `meter.customer()` scope and the call's own."""
        return self._kit.options.customer_id

    @customer_id.setter
    def customer_id(self, value: str | None) -> None:
        old = self._kit.options
        self._kit.options = AdapterOptions.check(
            customer_id=value, dimensions=old.dimensions, max_tracked=old.max_tracked
        )

    @property
    def dimensions(self) -> Mapping[str, str]:
        """The adapter's extra dimensions, under each call's own."""
        return self._kit.options.dimensions
