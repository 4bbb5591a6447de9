"""`Usage`: one LLM call's token counts, customer and model; validated on construction.

The five counts are always *disjoint*: no count includes another. Providers do not agree
on this, which is how tokens get billed twice, so the two provider shapes have their own
constructors and adapters never subtract by hand:

* `Usage.from_openai(prompt_tokens=..., completion_tokens=..., cached_tokens=..., reasoning_tokens=...)`
  for *inclusive* totals: OpenAI's `prompt_tokens` include cached tokens and
  `completion_tokens` include reasoning. LangChain's `usage_metadata` and LiteLLM's `usage`
  are inclusive too, for every provider.
* `Usage.from_anthropic(input_tokens=..., output_tokens=..., cache_read_input_tokens=..., cache_creation_input_tokens=...)`
  for Anthropic's raw API, whose `input_tokens` exclude cache reads and cache writes.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import (
    InvalidCustomer,
    InvalidDimension,
    InvalidIdentifier,
    InvalidTimestamp,
    InvalidTokenCount,
)

MAX_COUNT: Final = 10**15 - 1
"""Stripe meter values are whole numbers; 15 digits is far beyond any real call."""
MAX_PAST_SECONDS: Final = 35 * 24 * 3600
MAX_FUTURE_SECONDS: Final = 5 * 60
MAX_MODEL_LENGTH: Final = 100
RESERVED_DIMENSIONS: Final = frozenset({"model", "token_type"})

_CUSTOMER_RE: Final = re.compile(r"cus_[A-Za-z0-9]+")
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_INVISIBLE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Control (NUL, newline, tab...), format (zero-width, bidi marks) and line/paragraph separators."""


def check_count(name: str, value: object) -> int:
    """A token count as `int`, or `InvalidTokenCount` naming the field and the rule."""
    if type(value) is int:
        if 0 <= value <= MAX_COUNT:
            return value
        if value < 0:
            raise InvalidTokenCount(name, f"must be >= 0, got {value}")
        raise InvalidTokenCount(name, f"must have at most 15 digits, got {value}")
    if isinstance(value, bool):
        raise InvalidTokenCount(name, f"must be an int, got the bool {value!r}")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidTokenCount(name, f"must be a finite whole number, got {value!r}")
        if not value.is_integer():
            raise InvalidTokenCount(name, f"must be a whole number of tokens, got {value!r}")
        return check_count(name, int(value))
    if isinstance(value, int):  # int subclasses (numpy ints register elsewhere)
        return check_count(name, int(value))
    raise InvalidTokenCount(
        name,
        f"must be an int, got {type(value).__name__} {value!r:.40}; pass the count as a number",
    )


def _counts(*named: tuple[str, object]) -> list[int]:
    """`check_count` over several fields; plain in-range ints (nearly always) skip the call."""
    return [
        v if type(v) is int and 0 <= v <= MAX_COUNT else check_count(name, v) for name, v in named
    ]


def check_customer(name: str, value: object) -> str:
    """A Stripe customer id (`cus_` + letters and digits), or `InvalidCustomer`."""
    if isinstance(value, str) and _CUSTOMER_RE.fullmatch(value) and len(value) <= 255:
        return value
    raise InvalidCustomer(
        name,
        f"must be a Stripe customer id like 'cus_NffrFeUfNV2Hib', got {value!r:.60}; "
        "map your own user ids with a customer_resolver",
    )


def check_timestamp(name: str, value: object, now: float | None = None) -> float:
    """Unix seconds inside Stripe's window: at most 35 days old, 5 minutes ahead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTimestamp(name, f"must be Unix seconds (int or float), got {value!r:.40}")
    ts = float(value)
    if math.isnan(ts) or math.isinf(ts):
        raise InvalidTimestamp(name, f"must be finite, got {value!r}")
    now = time.time() if now is None else now
    if ts < now - MAX_PAST_SECONDS:
        raise InvalidTimestamp(
            name, "is more than 35 days in the past; Stripe rejects it (timestamp_too_far_in_past)"
        )
    if ts > now + MAX_FUTURE_SECONDS:
        raise InvalidTimestamp(
            name,
            "is more than 5 minutes in the future; check the clock (timestamp_too_far_in_future)",
        )
    return ts


def invisible_char(value: str) -> str | None:
    """The first control/format/separator character in `value` (as `U+000A at index 3`), or None.

    Such characters reach Stripe's dashboard, exports and invoices as they are: a NUL or a
    newline in a model name makes a price that never matches and a line that cannot be read.
    """
    if value.isascii():  # nearly always: one regex scan instead of a per-character lookup
        found = _ASCII_CONTROL.search(value)
        return None if found is None else f"U+{ord(found.group()):04X} at index {found.start()}"
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in _INVISIBLE:
            return f"U+{ord(ch):04X} at index {i}"
    return None


def check_text(name: str, value: object, max_len: int, *, visible: bool = True) -> str:
    """A non-empty string of at most `max_len` characters (ids, model names).

    `visible=True` also refuses control and format characters (see `invisible_char`), for
    text sent to Stripe as it is; request ids (`visible=False`) are hashed instead.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidIdentifier(name, f"must be a non-empty string, got {value!r:.40}")
    if len(value) > max_len:
        raise InvalidIdentifier(name, f"must be at most {max_len} characters, got {len(value)}")
    if visible:
        bad = invisible_char(value)
        if bad is not None:
            raise InvalidIdentifier(
                name,
                f"must not contain control or invisible characters (NUL, newline, tab, "
                f"zero-width...), got {bad} in {value!r:.60}; strip them before recording",
            )
    return value


def check_dimensions(
    value: object, reserved: frozenset[str] = RESERVED_DIMENSIONS
) -> dict[str, str]:
    """Extra dimensions: string keys and values, never overriding model/token_type."""
    if value is None or (type(value) is dict and not value):
        return {}
    if not isinstance(value, Mapping):
        raise InvalidDimension(
            "dimensions", f"must be a mapping of str to str, got {type(value).__name__}"
        )
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise InvalidDimension("dimensions", f"keys must be non-empty strings, got {k!r:.40}")
        if k in reserved:
            raise InvalidDimension(
                "dimensions", f"key {k!r} is reserved for the meter's own payload"
            )
        if not isinstance(v, str) or not v:
            raise InvalidDimension(
                "dimensions", f"value of {k!r} must be a non-empty string, got {v!r:.40}"
            )
        if len(k) > 100 or len(v) > 100:
            raise InvalidDimension(
                "dimensions", f"{k!r}: keys and values are at most 100 characters"
            )
        bad = invisible_char(k)
        where = f"key {k!r:.60}"
        if bad is None:
            bad = invisible_char(v)
            where = f"value of {k!r:.60}"
        if bad is not None:
            raise InvalidDimension(
                "dimensions",
                f"{where} must not contain control or invisible characters (NUL, newline, "
                f"tab, zero-width...), got {bad}; strip them before recording",
            )
        out[k] = v
    return out


_COUNT_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True, slots=True)
class Usage:
    """One LLM call's tokens. All counts are disjoint; their sum is the call's total.

    - `input_tokens`: prompt tokens neither read from nor written to a cache.
    - `cached_input_tokens`: prompt tokens read from the provider's cache.
    - `cache_write_tokens`: prompt tokens written to the cache (Anthropic cache creation).
    - `output_tokens`: visible completion tokens (reasoning excluded).
    - `reasoning_tokens`: hidden reasoning/thinking tokens.

    `customer_id` may be None: the meter resolves it (scope, handler, default).
    `request_id` makes identifiers deterministic: a replay never bills twice.
    `timestamp` is Unix seconds; None means "when recorded".
    """

    model: str
    customer_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    provider: str | None = None
    request_id: str | None = None
    timestamp: float | None = None
    dimensions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        check_text("model", self.model, MAX_MODEL_LENGTH)
        # The meter's worker builds one Usage per call: plain in-range ints (nearly always
        # the case) are checked in one expression; anything else goes through check_count.
        a, b, c, d, e = (
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )
        if not (
            type(a) is int
            and type(b) is int
            and type(c) is int
            and type(d) is int
            and type(e) is int
            and 0 <= a <= MAX_COUNT
            and 0 <= b <= MAX_COUNT
            and 0 <= c <= MAX_COUNT
            and 0 <= d <= MAX_COUNT
            and 0 <= e <= MAX_COUNT
        ):
            for name in _COUNT_FIELDS:
                s(self, name, check_count(name, getattr(self, name)))
        if self.customer_id is not None:
            check_customer("customer_id", self.customer_id)
        if self.provider is not None:
            check_text("provider", self.provider, 100)
        if self.request_id is not None:
            # Any length or character: identifiers that are not printable ASCII of at most
            # Stripe's 100 bytes are hashed (events.make_identifier).
            check_text("request_id", self.request_id, 10_000, visible=False)
        if self.timestamp is not None:
            s(self, "timestamp", check_timestamp("timestamp", self.timestamp))
        s(self, "dimensions", check_dimensions(self.dimensions))

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens (uncached + cache reads + cache writes)."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def completion_tokens(self) -> int:
        """All completion tokens (visible + reasoning)."""
        return self.output_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(
        cls,
        *,
        model: str,
        prompt_tokens: object = 0,
        completion_tokens: object = 0,
        cached_tokens: object = 0,
        cache_write_tokens: object = 0,
        reasoning_tokens: object = 0,
        **common: Any,
    ) -> Usage:
        """From inclusive totals (OpenAI, LangChain `usage_metadata`, LiteLLM `usage`).

        `prompt_tokens` includes `cached_tokens` and `cache_write_tokens`;
        `completion_tokens` includes `reasoning_tokens`.
        """
        prompt, completion, cached, written, reasoning = _counts(
            ("prompt_tokens", prompt_tokens),
            ("completion_tokens", completion_tokens),
            ("cached_tokens", cached_tokens),
            ("cache_write_tokens", cache_write_tokens),
            ("reasoning_tokens", reasoning_tokens),
        )
        if cached + written > prompt:
            raise InvalidTokenCount(
                "cached_tokens",
                f"cached_tokens ({cached}) + cache_write_tokens ({written}) exceed prompt_tokens "
                f"({prompt}); these totals are not inclusive: use Usage.from_anthropic",
            )
        if reasoning > completion:
            raise InvalidTokenCount(
                "reasoning_tokens",
                f"reasoning_tokens ({reasoning}) exceed completion_tokens ({completion}); "
                "completion_tokens must include reasoning",
            )
        return cls(
            model=model,
            input_tokens=prompt - cached - written,
            cached_input_tokens=cached,
            cache_write_tokens=written,
            output_tokens=completion - reasoning,
            reasoning_tokens=reasoning,
            **common,
        )

    @classmethod
    def from_anthropic(
        cls,
        *,
        model: str,
        input_tokens: object = 0,
        output_tokens: object = 0,
        cache_read_input_tokens: object = 0,
        cache_creation_input_tokens: object = 0,
        **common: Any,
    ) -> Usage:
        """From Anthropic's raw usage, whose `input_tokens` exclude cache reads and writes."""
        return cls(
            model=model,
            input_tokens=check_count("input_tokens", input_tokens),
            cached_input_tokens=check_count("cache_read_input_tokens", cache_read_input_tokens),
            cache_write_tokens=check_count(
                "cache_creation_input_tokens", cache_creation_input_tokens
            ),
            output_tokens=check_count("output_tokens", output_tokens),
            **common,
        )
