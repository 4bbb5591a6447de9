"""litellm-stripe: bill LiteLLM calls (SDK, Router, proxy) to Stripe meters.

    import litellm
    from stripe_token_meter import TokenMeter
    from litellm_stripe import CUSTOMER_KEY, StripeLogger

    meter = TokenMeter()
    litellm.callbacks = [StripeLogger(meter)]
    litellm.completion(model="openai/gpt-4o", messages=[...],
                       metadata={CUSTOMER_KEY: "cus_123"})

Proxy (`config.yaml`): `litellm_settings: {callbacks: litellm_stripe.proxy_logger}`,
configured from `STRIPE_*` environment variables (see `logger_from_env`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._identity import (
    CLIENT_SOURCES,
    CUSTOMER_KEY,
    SOURCES,
    TRUSTED_SOURCES,
    CallIdentity,
    CustomerResolver,
    customer_from,
)
from ._logger import DIMENSIONS_KEY, StripeLogger
from ._proxy import ENV_VARS, logger_from_env

if TYPE_CHECKING:
    proxy_logger: StripeLogger

__all__ = [
    "CLIENT_SOURCES",
    "CUSTOMER_KEY",
    "DIMENSIONS_KEY",
    "ENV_VARS",
    "SOURCES",
    "TRUSTED_SOURCES",
    "CallIdentity",
    "CustomerResolver",
    "StripeLogger",
    "customer_from",
    "logger_from_env",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `litellm_stripe.proxy_logger` is built on first access: importing the package
    # creates no meter, opens no outbox and reads no environment variable.
    if name == "proxy_logger":
        from ._proxy import proxy_logger

        return proxy_logger()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
