"""`Pricing`: per-model token prices, so a meter can send each call's cost as an event.

Why: Stripe bills tokens by count; a credit balance, a spend cap or a cost dashboard needs
money. A `TokenMeter(pricing=...)` sends one extra event per priced call whose value is
the call's marked-up cost in micro-units of the currency (1 USD = 1,000,000), so one
metered price of 0.0001 cents per unit turns it into the invoice amount.

Prices are per 1,000,000 tokens in the currency's major unit (the way providers publish
them), decimal strings (or ints / Decimals): a price per 1M tokens is exactly the cost of
one token in micro-units, so the arithmetic is exact, in `Decimal`, and rounded once.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from .dimensions import TokenTypes, infer_provider, normalize_model
from .errors import ConfigurationError

PRICE_TYPES: Final = ("input", "cached_input", "cache_write", "output", "reasoning")
"""The token types a price may name (`Usage`'s five disjoint counts)."""
FALLBACKS: Final[dict[str, str]] = {
    "cached_input": "input",
    "cache_write": "input",
    "reasoning": "output",
}
"""A missing price is the price of the type it is a kind of."""
_ONE: Final = Decimal(1)
_HUNDRED: Final = Decimal(100)
_MILLION: Final = Decimal(1_000_000)
_CURRENCY: Final = re.compile(r"[a-z]{3}")
MICROS: Final = 1_000_000
"""Micro-units in one major unit of a currency (cost events' unit: 1 USD = 1,000,000)."""
ZERO_DECIMAL: Final = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
"""Stripe's zero-decimal currencies: their minor unit is the major one."""
THREE_DECIMAL: Final = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def minor_unit_micros(currency: str) -> int:
    """Micro-units in one minor unit of `currency` (Stripe's amounts are in minor units):
    10,000 for USD's cent, 1,000,000 for a zero-decimal currency, 1,000 for three decimals."""
    cur = currency.lower()
    if cur in ZERO_DECIMAL:
        return MICROS
    if cur in THREE_DECIMAL:
        return 1_000
    return 10_000


class PricingError(ConfigurationError):
    """Prices that cannot be used: a missing input/output price, a negative or non-decimal
    price, a bad markup or currency. The message names the model and the key."""


def _decimal(where: str, value: object) -> Decimal:
    """A finite, non-negative Decimal from a string, int or Decimal (floats are refused:
    0.1 is not one tenth in binary, and prices must be exact)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        hint = f'; write it as a string, e.g. "{value}"' if isinstance(value, float) else ""
        raise PricingError(
            f"{where}: must be a decimal string, int or Decimal, got "
            f"{type(value).__name__} {value!r:.40}{hint}"
        )
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise PricingError(f"{where}: must be a decimal number, got {value!r:.40}") from None
    if not number.is_finite() or number < 0:
        raise PricingError(f"{where}: must be a finite number >= 0, got {value!r:.40}")
    return number


def _text(value: Decimal) -> str:
    """`2.50` -> `"2.5"`: plain, no exponent, no trailing zeros (stable in the journal)."""
    text = format(value.normalize(), "f")
    return text


class Pricing:
    """Prices per model and token type, per 1,000,000 tokens, plus a markup.

    `prices`: `{model: {token type: price}}`, the model as the events carry it (the
    normalised `provider/model`, e.g. `openai/gpt-4o`), the price a decimal string, int
    or Decimal in the currency's major unit per 1M tokens. Token types: `input`,
    `cached_input`, `cache_write`, `output`, `reasoning`. Each model needs `input` and
    `output`; a missing `cached_input` or `cache_write` costs `input`, a missing
    `reasoning` costs `output`. A model recorded without its provider (`gpt-4o`) takes
    the price of the one priced model of that name; `provider/name` takes a price given
    for the bare `name`; one provider's price never applies to another's model.

    With `token_types="basic"` (the meter's default) every prompt token costs `input` and
    every completion token `output`; with `"detailed"` each type has its own price (with
    the fallbacks above). `markup_percent` (>= 0) is added before rounding; the cost is
    rounded half up once, to whole micro-units (1 USD = 1,000,000).
    """

    __slots__ = ("_bare", "_given", "_table", "currency", "markup_percent")

    def __init__(
        self,
        prices: Mapping[str, Mapping[str, str | int | Decimal]],
        *,
        markup_percent: str | int | Decimal = 0,
        currency: str = "usd",
    ) -> None:
        if not isinstance(prices, Mapping):
            raise PricingError(
                f"prices: must be a mapping of model to {{token type: price}}, got "
                f"{type(prices).__name__}"
            )
        self.markup_percent: Decimal = _decimal("markup_percent", markup_percent)
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency.strip().lower()):
            raise PricingError(
                f"currency: must be a three-letter ISO code like 'usd', got {currency!r:.40}"
            )
        self.currency: str = currency.strip().lower()
        given: dict[str, dict[str, Decimal]] = {}
        table: dict[str, tuple[Decimal, Decimal, Decimal, Decimal, Decimal]] = {}
        for model, by_type in prices.items():
            if not isinstance(model, str) or not model.strip():
                raise PricingError(f"prices: model names must be non-empty strings, got {model!r}")
            if not isinstance(by_type, Mapping):
                raise PricingError(
                    f"prices[{model!r}]: must be a mapping of token type to price, got "
                    f"{type(by_type).__name__}"
                )
            own: dict[str, Decimal] = {}
            for kind, price in by_type.items():
                if kind not in PRICE_TYPES:
                    raise PricingError(
                        f"prices[{model!r}][{kind!r}]: unknown token type; use "
                        f"{', '.join(PRICE_TYPES)}"
                    )
                own[kind] = _decimal(f"prices[{model!r}][{kind!r}]", price)
            for needed in ("input", "output"):
                if needed not in own:
                    raise PricingError(
                        f"prices[{model!r}]: missing {needed!r}; every model needs an input "
                        "and an output price (per 1,000,000 tokens)"
                    )
            given[model] = own
            full = {k: own[k] if k in own else own[FALLBACKS[k]] for k in PRICE_TYPES}
            table[model] = (
                full["input"],
                full["cached_input"],
                full["cache_write"],
                full["output"],
                full["reasoning"],
            )
        self._given = given
        self._table = table
        # A model recorded without its provider ("gpt-4o") takes the price of the one priced
        # model of that name ("openai/gpt-4o"); two providers' prices make it ambiguous.
        bare: dict[str, tuple[Decimal, Decimal, Decimal, Decimal, Decimal] | None] = {}
        for model, row in table.items():
            name = model.rsplit("/", 1)[-1]
            bare[name] = None if name in bare else row
        self._bare = bare

    # -- lookups --------------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """The priced models, sorted."""
        return sorted(self._table)

    def _row(self, model: str) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal] | None:
        """The model's prices: its own; for a model without a provider, the one provider's
        model of that name; for `provider/name`, a price given for the bare `name`. Never
        another provider's price."""
        row = self._table.get(model)
        if row is not None:
            return row
        if "/" not in model:
            return self._bare.get(model)
        return self._table.get(model.rsplit("/", 1)[-1])

    def price(self, model: str, token_type: str) -> Decimal | None:
        """The price per 1M tokens of `token_type` for `model` (fallbacks applied), or None."""
        row = self._row(model)
        if row is None or token_type not in PRICE_TYPES:
            return None
        return row[PRICE_TYPES.index(token_type)]

    def cost_micros(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        output_tokens: int = 0,
        reasoning_tokens: int = 0,
        token_types: TokenTypes = "detailed",
    ) -> int | None:
        """The call's marked-up cost in whole micro-units (half up, once); None: unpriced.

        The counts are `Usage`'s disjoint ones. `token_types="basic"` prices all prompt
        tokens at `input` and all completion tokens at `output`, as the token events of a
        basic meter count them.
        """
        row = self._row(model)
        if row is None:
            return None
        p_in, p_cached, p_write, p_out, p_reason = row
        if token_types == "basic":
            total = (input_tokens + cached_input_tokens + cache_write_tokens) * p_in + (
                output_tokens + reasoning_tokens
            ) * p_out
        else:
            total = (
                input_tokens * p_in
                + cached_input_tokens * p_cached
                + cache_write_tokens * p_write
                + output_tokens * p_out
                + reasoning_tokens * p_reason
            )
        if self.markup_percent:
            total = total * (_HUNDRED + self.markup_percent) / _HUNDRED
        # per 1M tokens in major units == micro-units per token: no scaling needed
        return int(total.quantize(_ONE, rounding=ROUND_HALF_UP))

    # -- plain data (the journal's settings frame) -----------------------------------------

    def as_plain(self) -> dict[str, Any]:
        """`{"prices": {model: {type: "2.5"}}, "markup_percent": "20", "currency": "usd"}`:
        strings only, so marshal and JSON keep it exactly; `from_plain` reads it back."""
        return {
            "prices": {
                model: {kind: _text(v) for kind, v in sorted(own.items())}
                for model, own in sorted(self._given.items())
            },
            "markup_percent": _text(self.markup_percent),
            "currency": self.currency,
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> Pricing:
        """The pricing `as_plain` described (validated again)."""
        if not isinstance(plain, Mapping) or "prices" not in plain:
            raise PricingError(f"pricing: expected a mapping with 'prices', got {plain!r:.60}")
        return cls(
            plain["prices"],
            markup_percent=plain.get("markup_percent", 0),
            currency=plain.get("currency", "usd"),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pricing:
        """Read a `.json` or `.toml` file: top-level `prices`, optional `markup_percent`
        and `currency`. Numbers are read as exact decimals."""
        p = Path(path)
        suffix = p.suffix.lower()
        try:
            if suffix == ".json":
                with p.open(encoding="utf-8") as f:
                    data = json.load(f, parse_float=Decimal)
            elif suffix == ".toml":
                toml = _toml()
                with p.open("rb") as f:
                    try:
                        data = toml.load(f, parse_float=Decimal)
                    except toml.TOMLDecodeError as exc:
                        raise PricingError(f"{p}: not valid TOML ({exc})") from None
            else:
                raise PricingError(f"{p}: a pricing file must end in .json or .toml")
        except OSError as exc:
            raise PricingError(f"{p}: cannot be read ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise PricingError(f"{p}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("prices"), dict):
            raise PricingError(f"{p}: needs a top-level 'prices' table of model -> prices")
        unknown = sorted(set(data) - {"prices", "markup_percent", "currency"})
        if unknown:
            raise PricingError(f"{p}: unknown top-level keys {unknown}")
        try:
            return cls.from_plain(data)
        except PricingError as exc:
            raise PricingError(f"{p}: {exc}") from None

    @classmethod
    def from_litellm(
        cls, models: Iterable[str] | None = None, *, markup_percent: str | int | Decimal = 0
    ) -> Pricing:
        """Prices from LiteLLM's bundled cost map (`litellm.model_cost`), in USD.

        Keyed by our normalised model name (`gpt-4o-2024-08-06` -> `openai/gpt-4o`; where
        several entries normalise to one name the undated one wins). `models` (names as
        the events carry them, normalised here) limits the table and must all be found.
        Set `LITELLM_LOCAL_MODEL_COST_MAP=True` before importing litellm to keep it from
        fetching the map over the network.
        """
        try:
            import litellm
        except ImportError:
            raise PricingError(
                "Pricing.from_litellm needs litellm: pip install litellm (or use "
                "Pricing({...}) / Pricing.from_file(...))"
            ) from None
        cost_map: Mapping[str, Any] = litellm.model_cost
        table: dict[str, dict[str, str]] = {}
        exact: set[str] = set()
        for key, entry in cost_map.items():
            prices = _litellm_prices(entry)
            if prices is None:
                continue
            provider = entry.get("litellm_provider")
            try:
                name = normalize_model(provider if isinstance(provider, str) else None, key)
            except Exception:
                continue
            is_exact = name == key or name.partition("/")[2] == key
            if name in table and (name in exact or not is_exact):
                continue  # the first entry, unless an undated one comes later
            table[name] = prices
            if is_exact:
                exact.add(name)
        if models is not None:
            wanted = {normalize_model(infer_provider(m), m): m for m in models}
            missing = sorted(m for name, m in wanted.items() if name not in table)
            if missing:
                raise PricingError(
                    f"models {missing}: not in LiteLLM's cost map with input and output "
                    "prices; give their prices with Pricing({...})"
                )
            table = {name: table[name] for name in wanted}
        return cls(table, markup_percent=markup_percent, currency="usd")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pricing) and self.as_plain() == other.as_plain()

    def __hash__(self) -> int:
        return hash(json.dumps(self.as_plain(), sort_keys=True))

    def __repr__(self) -> str:
        return (
            f"Pricing({len(self._table)} models, markup_percent={_text(self.markup_percent)}, "
            f"currency={self.currency!r})"
        )


def _toml() -> Any:
    """`tomllib` (Python 3.11+), else the `tomli` backport it came from."""
    for name in ("tomllib", "tomli"):  # tomllib from Python 3.11
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise PricingError(
        "a .toml pricing file needs Python 3.11+ or `pip install tomli`; or use .json"
    )


_LITELLM_KEYS: Final = (
    ("input", "input_cost_per_token"),
    ("cached_input", "cache_read_input_token_cost"),
    ("cache_write", "cache_creation_input_token_cost"),
    ("output", "output_cost_per_token"),
    ("reasoning", "output_cost_per_reasoning_token"),
)


def _litellm_prices(entry: object) -> dict[str, str] | None:
    """A cost-map entry's per-token costs as prices per 1M tokens (None: not priceable)."""
    if not isinstance(entry, Mapping):
        return None
    out: dict[str, str] = {}
    for kind, key in _LITELLM_KEYS:
        value = entry.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            continue
        # repr() is the shortest string that reads back as the same float: 2.5e-06 ->
        # Decimal("0.0000025"), never the binary expansion.
        out[kind] = _text(Decimal(repr(value)) * _MILLION)
    if "input" not in out or "output" not in out:
        return None
    return out
