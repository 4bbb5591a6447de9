"""Helpers shared by the LiteLLM tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm
from litellm_stripe import StripeLogger

MESSAGES = [{"role": "user", "content": "Say hello"}]


def model_response(
    *,
    model: str = "gpt-4o-2024-08-06",
    prompt: int = 100,
    completion: int = 20,
    cached: int = 0,
    reasoning: int = 0,
) -> litellm.ModelResponse:
    """A fresh `ModelResponse` (own id) with usage details, for `mock_response=`."""
    return litellm.ModelResponse(
        model=model,
        choices=[{"message": {"role": "assistant", "content": "Hello there friend"}}],
        usage=litellm.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details={"cached_tokens": cached},
            completion_tokens_details={"reasoning_tokens": reasoning},
        ),
    )


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def wait_stat(logger: StripeLogger, name: str, n: int, timeout: float = 10.0) -> None:
    """Wait until `logger.stats()[name] >= n` (LiteLLM's callbacks run late, elsewhere)."""
    wait_until(
        lambda: logger.stats()[name] >= n, timeout, f"stats()[{name!r}] >= {n}: {logger.stats()}"
    )


async def drain_litellm(timeout: float = 10.0) -> None:
    """Run LiteLLM's queued async success callbacks now, on this loop (LiteLLM's own flush).

    Without it, callbacks still queued when `asyncio.run()` returns wait for the next event
    loop or LiteLLM's atexit flush.
    """
    import asyncio

    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
