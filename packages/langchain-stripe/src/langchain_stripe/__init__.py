"""langchain-stripe: bill every LangChain LLM call's tokens to Stripe, once per LLM run.

    from stripe_token_meter import TokenMeter
    import langchain_stripe
    from langchain_stripe import CUSTOMER_KEY     # the metadata key naming the customer

    meter = TokenMeter()                       # STRIPE_API_KEY, or the local ledger
    langchain_stripe.enable(meter)             # every chain, agent and graph from now on
    model.invoke("hi", config={"metadata": {CUSTOMER_KEY: "cus_123"}})

Or per call: `config={"callbacks": [StripeCallbackHandler(meter)]}`.
"""

from ._global import disable, enable, enabled_handler
from .handler import CUSTOMER_KEY, DIMENSIONS_KEY, CustomerResolver, StripeCallbackHandler

__all__ = [
    "CUSTOMER_KEY",
    "DIMENSIONS_KEY",
    "CustomerResolver",
    "StripeCallbackHandler",
    "disable",
    "enable",
    "enabled_handler",
]
__version__ = "0.1.0"
