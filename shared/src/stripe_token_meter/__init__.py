"""stripe-token-meter: bill every LLM token to the right Stripe customer, exactly once.

from stripe_token_meter import TokenMeter, Usage
meter = TokenMeter()  # STRIPE_API_KEY from the environment; no key -> local ledger
meter.record(Usage(customer_id="cus_123", model="openai/gpt-4o",
                   input_tokens=1200, output_tokens=300, request_id="run-1"))
"""

from .credit_guard import CreditGuard
from .customer import current_customer
from .dimensions import normalize_model, normalize_provider
from .errors import (
    ConfigurationError,
    CreditExhausted,
    InvalidCustomer,
    InvalidDimension,
    InvalidIdentifier,
    InvalidTimestamp,
    InvalidTokenCount,
    InvalidUsage,
    MissingCustomer,
    OutboxError,
    TokenMeterError,
)
from .events import MeterEvent, build_events, make_identifier
from .guard import Guard, GuardBinding, Hold
from .meter import TokenMeter
from .pricing import Pricing, PricingError
from .settings import check_api_key
from .usage import Usage

__all__ = [
    "ConfigurationError",
    "CreditExhausted",
    "CreditGuard",
    "Guard",
    "GuardBinding",
    "Hold",
    "InvalidCustomer",
    "InvalidDimension",
    "InvalidIdentifier",
    "InvalidTimestamp",
    "InvalidTokenCount",
    "InvalidUsage",
    "MeterEvent",
    "MissingCustomer",
    "OutboxError",
    "Pricing",
    "PricingError",
    "TokenMeter",
    "TokenMeterError",
    "Usage",
    "build_events",
    "check_api_key",
    "current_customer",
    "make_identifier",
    "normalize_model",
    "normalize_provider",
]
__version__ = "0.1.0"
