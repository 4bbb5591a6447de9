"""Shared fixtures: a FakeStripe server and meters wired to it through the real SDK."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("STRIPE_API_KEY", None)

from stripe_token_meter import TokenMeter

EVENT_NAME = "token-billing-tokens"


@pytest.fixture
def fake_stripe() -> Iterator[Any]:
    """A running FakeStripe with the default meter; any `cus_` id is a known customer."""
    from stripe_token_meter.testing import FakeStripe

    with FakeStripe() as fake:
        fake.create_meter(EVENT_NAME)
        fake.auto_customers = True
        yield fake


@pytest.fixture
def make_meter(fake_stripe: Any, tmp_path: Path) -> Iterator[Callable[..., TokenMeter]]:
    """Build TokenMeters that deliver to `fake_stripe`; each gets its own outbox file."""
    meters: list[TokenMeter] = []

    def factory(**kwargs: Any) -> TokenMeter:
        if "stripe_client" not in kwargs:  # configured as users do: a key and an API base
            kwargs.setdefault("api_key", "sk_test_fake")
            kwargs.setdefault("api_base", fake_stripe.url)
        kwargs.setdefault("outbox_path", tmp_path / f"outbox-{len(meters)}.sqlite3")
        meter = TokenMeter(**kwargs)
        meters.append(meter)
        return meter

    yield factory
    for m in meters:
        m.close(timeout=2.0)


@pytest.fixture
def local_meter(tmp_path: Path) -> Iterator[Callable[..., TokenMeter]]:
    """TokenMeters with no key: the embedded local ledger."""
    meters: list[TokenMeter] = []

    def factory(**kwargs: Any) -> TokenMeter:
        kwargs.setdefault("outbox_path", tmp_path / f"ledger-{len(meters)}.sqlite3")
        meter = TokenMeter(**kwargs)
        meters.append(meter)
        return meter

    yield factory
    for m in meters:
        m.close(timeout=1.0)
