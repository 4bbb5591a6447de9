"""LiteLLM fixtures: one real `litellm` import, a logger wired to FakeStripe, waiting helpers.

LiteLLM runs success callbacks on its own thread pool (sync calls) or logging worker
(async calls), after the call returned. Tests wait for them by polling the logger's own
counters with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# `litellm_testkit` (helpers shared by these test modules) lives beside this file.
sys.path.append(str(Path(__file__).resolve().parent))

import litellm
from litellm_stripe import StripeLogger


@pytest.fixture(autouse=True)
def _clean_litellm_callbacks() -> Iterator[None]:
    """No logger leaks into the next test (LiteLLM copies `callbacks` into its other lists)."""
    litellm.logging_callback_manager._reset_all_callbacks()
    yield
    litellm.logging_callback_manager._reset_all_callbacks()


@pytest.fixture
def stripe_logger(make_meter: Callable[..., Any]) -> Callable[..., tuple[Any, StripeLogger]]:
    """`stripe_logger(meter_kwargs..., logger=dict(...))` -> (meter, logger), installed in LiteLLM."""

    def factory(
        logger: dict[str, Any] | None = None, **meter_kwargs: Any
    ) -> tuple[Any, StripeLogger]:
        meter = make_meter(**meter_kwargs)
        handler = StripeLogger(meter, **(logger or {}))
        litellm.callbacks = [handler]
        return meter, handler

    return factory
