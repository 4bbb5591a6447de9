"""llama-index-llms-anthropic's `Anthropic` against a local Anthropic Messages server.

Its `complete` runs `chat` inside (two nested LLM calls, billed once); streams carry the
usage on `message_start` (input, cache) and `message_delta` (output, or every count
again, cumulative). Billed values must be exactly what the server reported.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.anthropic import Anthropic
from llamaindex_stripe import instrument
from support.events import event_tuples
from support.llama_calls import METHODS, run_llm
from support.providers import AnthropicServer, cached_claude, cached_claude_events

CUS = "cus_claude"
MODEL = "anthropic/claude-3.7-sonnet"
MSGS = [ChatMessage(role="user", content="hello")]
EVENTS = cached_claude_events(CUS, MODEL)
BASIC, DETAILED = EVENTS["basic"], EVENTS["detailed"]


@pytest.fixture(scope="module", params=[True, False], ids=["delta-cumulative", "delta-output"])
def srv(request: pytest.FixtureRequest) -> Iterator[AnthropicServer]:
    """`message_delta` with the cumulative usage, as Anthropic's API streams it; or with
    the output count only (older servers and some gateways)."""
    with cached_claude(
        model="claude-3-7-sonnet-20250219", cumulative_delta=request.param
    ) as server:
        yield server


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("token_types", ["basic", "detailed"])
def test_anthropic_exact_values(
    method: str,
    token_types: str,
    srv: AnthropicServer,
    make_meter: Callable[..., Any],
    fake_stripe: Any,
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types=token_types)
    handler = instrument(meter)
    llm = Anthropic(
        model="claude-3-7-sonnet-20250219", base_url=srv.base_url, api_key="sk-ant", max_retries=0
    )
    run_llm(llm, method, MSGS)
    assert meter.flush(5)
    expected = BASIC if token_types == "basic" else DETAILED
    if "stream" in method and not srv.cumulative_delta:
        # llama-index-llms-anthropic does not yield `message_start`, and the anthropic SDK
        # carries only its input count over to `message_delta`: the cache counts are lost
        # before LlamaIndex reports the stream (see the package README). Pinned here so a
        # fix upstream is noticed.
        expected = [(CUS, MODEL, "input", 50), (CUS, MODEL, "output", 30)]
    assert event_tuples(fake_stripe) == sorted(expected)
    assert len({i.rsplit(":", 2)[0] for i in fake_stripe.identifiers()}) == 1
    gc.collect()
    assert handler.tracked_spans == 0
    assert meter.stats()["no_usage"] == 0 and meter.stats()["adapter_errors"] == 0
