"""`Usage` -> Stripe meter events, one per non-zero token type, with deterministic identifiers.

The payload has exactly the shape Stripe's own LLM token billing sends
(`stripe_customer_id`, `value`, `model`, `token_type`), plus any extra dimensions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from .dimensions import ModelNormalizer, TokenTypes
from .errors import InvalidDimension
from .usage import Usage, invisible_char

MAX_IDENTIFIER: Final = 100
"""Stripe's limit on an event identifier, in bytes."""

TOKEN_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "basic": ("input", "output"),
    "detailed": ("input", "cached_input", "cache_write", "output", "reasoning"),
}


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """One event as stored in the outbox and sent to Stripe."""

    identifier: str
    event_name: str
    timestamp: int
    customer_id: str
    model: str
    token_type: str
    value: int
    payload: dict[str, str]


def make_identifier(request_id: str, token_type: str, event_name: str) -> str:
    """`<request_id>:<token_type>:<event_name>`, or `stm_<sha256>` when that is not sendable.

    Kept as is only when it is printable ASCII of at most Stripe's 100 bytes: Stripe counts
    bytes, so a shorter id in another script can still be too long (78 characters, 198 bytes
    in UTF-8), and control characters would reach Stripe's dashboard and exports.
    The event name is part of it because Stripe deduplicates identifiers across the
    account: two meters billing the same call must not take each other for a duplicate.
    """
    ident = f"{request_id}:{token_type}:{event_name}"
    # isascii(): one character is one byte, so len() counts bytes; isprintable() on ASCII
    # refuses exactly 0x00-0x1f and 0x7f.
    if len(ident) <= MAX_IDENTIFIER and ident.isascii() and ident.isprintable():
        return ident
    digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()
    return f"stm_{digest}"


def split_counts(usage: Usage, token_types: TokenTypes) -> list[tuple[str, int]]:
    """The (token_type, value) pairs of a usage, zero values left out."""
    if token_types == "basic":
        pairs = [("input", usage.prompt_tokens), ("output", usage.completion_tokens)]
    else:
        pairs = [
            ("input", usage.input_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("output", usage.output_tokens),
            ("reasoning", usage.reasoning_tokens),
        ]
    return [(t, v) for t, v in pairs if v > 0]


def build_events(
    usage: Usage,
    *,
    customer_id: str,
    request_id: str,
    timestamp: float,
    event_name: str,
    token_types: TokenTypes,
    normalizer: ModelNormalizer,
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
) -> list[MeterEvent]:
    """The meter events for one call, customer and request id already resolved."""
    model = normalizer(usage.provider, usage.model)
    if not isinstance(model, str) or invisible_char(model) is not None:
        # Usage refuses such names; this catches a custom normaliser that makes one.
        raise InvalidDimension(
            "model",
            f"the normaliser turned {usage.model!r:.60} into {model!r:.60}, which is not a "
            "string free of control or invisible characters; fix the normalize_models callable",
        )
    ts = int(timestamp)
    events = []
    for token_type, value in split_counts(usage, token_types):
        payload = {
            **usage.dimensions,
            customer_key: customer_id,
            value_key: str(value),
            "model": model,
            "token_type": token_type,
        }
        events.append(
            MeterEvent(
                identifier=make_identifier(request_id, token_type, event_name),
                event_name=event_name,
                timestamp=ts,
                customer_id=customer_id,
                model=model,
                token_type=token_type,
                value=value,
                payload=payload,
            )
        )
    return events
