"""Named errors: every rejected input says which field broke which rule and what to do.

An `InvalidUsage` is never lost: the meter keeps the rejected record in the outbox's
dead-letter table with `code`, `field` and the message, so it can be inspected and fixed.
"""

from __future__ import annotations

from decimal import Decimal


class TokenMeterError(Exception):
    """Base class of every error this package raises."""


class InvalidUsage(TokenMeterError, ValueError):
    """A usage record breaks one of Stripe's meter event rules.

    `code` is a stable machine name (used in stats and the dead-letter table),
    `field` the offending `Usage` field.
    """

    code = "invalid_usage"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class InvalidTokenCount(InvalidUsage):
    """A token count is not a non-negative whole number of at most 15 digits."""

    code = "invalid_token_count"


class InvalidTimestamp(InvalidUsage):
    """The timestamp is outside Stripe's window (35 days past, 5 minutes future)."""

    code = "invalid_timestamp"


class InvalidCustomer(InvalidUsage):
    """The customer id is not a Stripe customer id (`cus_` followed by letters and digits)."""

    code = "invalid_customer"


class MissingCustomer(InvalidUsage):
    """No customer could be resolved for the call (no per-call id, scope or default)."""

    code = "missing_customer"


class InvalidIdentifier(InvalidUsage):
    """A request id, event name, model or provider name breaks a length, type or character rule.

    Model and provider names (and event names) are sent to Stripe as they are, so control
    and invisible characters are refused; a request id is hashed into the identifier instead.
    """

    code = "invalid_identifier"


class InvalidDimension(InvalidUsage):
    """A dimension key or value is not a non-empty string of visible characters, or is reserved.

    Also raised for a `model` dimension a custom normaliser made unsendable.
    """

    code = "invalid_dimension"


class ConfigurationError(TokenMeterError, ValueError):
    """`TokenMeter` was given settings that cannot work (e.g. a publishable key)."""


class OutboxError(TokenMeterError):
    """The outbox file cannot be used: corrupt, not an outbox, unwritable, an unknown URL.

    `path` names the file; the message says what was wrong and what to do.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"outbox {path}: {message}")


class CreditExhausted(TokenMeterError):
    """The customer has no credit left: the call was refused before the provider was called.

    The one exception an adapter raises into user code on purpose (see `TokenMeter(guard=)`).
    Nothing is billed for a refused call. `remaining` is the guard's estimate (<= 0) in
    `currency` major units.
    """

    status_code = 402
    """HTTP's Payment Required: what a server should answer, and what LiteLLM's Router
    reads to raise the error at once instead of retrying it."""

    def __init__(
        self, customer_id: str, remaining: Decimal, currency: str, *, reason: str | None = None
    ) -> None:
        self.customer_id = customer_id
        self.remaining = remaining
        self.currency = currency
        self.reason = reason
        """Why, when it is not a spent credit (e.g. a balance Stripe could not give)."""
        why = reason or f"has no credit left ({remaining} {currency.upper()} remaining)"
        super().__init__(
            f"customer {customer_id} {why}; the call was not made and nothing was billed"
        )
