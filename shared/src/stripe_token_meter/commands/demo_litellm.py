"""The demo's LiteLLM part: `mock_response` calls carrying real usage, through StripeLogger.

Why `mock_response=ModelResponse(...)`: it is LiteLLM's own fake model; the whole
completion path (callbacks, logging worker, stream assembly) runs, only the provider
request is skipped. The customer travels in the call's `metadata`, as in an app.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..meter import TokenMeter
from ._demo_calls import (
    CallUsage,
    FrameworkRun,
    FrameworkUnavailable,
    plain_usage,
    reasoning_usage,
    split,
)

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the cost map over the network

try:
    import litellm
    from litellm_stripe import StripeLogger
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise FrameworkUnavailable(f"{exc.name or exc}: pip install litellm-stripe") from None

PLAIN_MODEL = "anthropic/claude-3-5-sonnet-20241022"
REASONING_MODEL = "openai/o4-mini"


def _response(model: str, u: CallUsage) -> Any:
    return litellm.ModelResponse(
        model=model.partition("/")[2],
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Done: the report is attached."},
            }
        ],
        usage={
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        },
    )


def run(meter: TokenMeter, customer_id: str, calls: int) -> FrameworkRun:
    """`completion()` calls, a third of them streamed; LiteLLM's callbacks are restored after."""
    result = FrameworkRun("litellm", customer_id, models=[PLAIN_MODEL, REASONING_MODEL])
    saved = list(litellm.callbacks)
    litellm.callbacks = [StripeLogger(meter)]
    messages = [{"role": "user", "content": "Draft the quarterly report."}]
    metadata = {"stripe_customer_id": customer_id}
    plain, streamed = split(calls)
    start = time.perf_counter()
    try:
        for i in range(plain):
            usage = plain_usage(i, 12_000, 900, 9_000)
            litellm.completion(
                model=PLAIN_MODEL,
                messages=messages,
                metadata=metadata,
                mock_response=_response(PLAIN_MODEL, usage),
            )
            result.calls += 1
        for i in range(streamed):
            usage = reasoning_usage(i, 3_000, 1_500, 900)
            stream = litellm.completion(
                model=REASONING_MODEL,
                messages=messages,
                metadata=metadata,
                stream=True,
                stream_options={"include_usage": True},
                mock_response=_response(REASONING_MODEL, usage),
            )
            for _ in stream:
                pass
            result.calls += 1
            result.streamed += 1
    finally:
        result.seconds = time.perf_counter() - start
        litellm.callbacks = saved
    return result
