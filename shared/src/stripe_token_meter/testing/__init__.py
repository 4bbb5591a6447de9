"""Test doubles for Stripe: ``FakeStripe`` speaks enough of Stripe's HTTP API for the real SDK.

Why: exercising the real ``stripe`` SDK end to end (HTTP, error mapping, retries) is the
only honest way to test metering code without the network.
"""

from stripe_token_meter.testing.fake_stripe import AcceptedEvent, FakeStripe

__all__ = ["AcceptedEvent", "FakeStripe"]
