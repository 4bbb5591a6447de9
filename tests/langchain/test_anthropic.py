"""The real `ChatAnthropic` against a local Anthropic Messages server.

Anthropic's `input_tokens` exclude cache reads and writes; LangChain folds them into its
inclusive `usage_metadata`. Billed totals must equal what the server reported, exactly,
for calls and streams, whether `message_delta` repeats the cumulative input counts or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import TokenMeter
from support.events import event_tuples
from support.providers import AnthropicServer, cached_claude, cached_claude_events

MeterFactory = Callable[..., TokenMeter]
MODEL = "anthropic/claude-3.5-sonnet"
CUS = "cus_claude"

EVENTS = cached_claude_events(CUS, MODEL)
BASIC, DETAILED = EVENTS["basic"], EVENTS["detailed"]


@pytest.fixture(scope="module")
def server() -> Iterator[AnthropicServer]:
    """As Anthropic's API streams: `message_delta` repeats the cumulative usage."""
    with cached_claude(cumulative_delta=True) as srv:
        yield srv


def _model(srv: AnthropicServer, **kwargs: Any) -> ChatAnthropic:
    return ChatAnthropic(  # type: ignore[call-arg]
        model="claude-3-5-sonnet-20241022",
        base_url=srv.base_url,
        api_key="sk-ant-test",
        max_retries=0,
        **kwargs,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize(("token_types", "expected"), [("basic", BASIC), ("detailed", DETAILED)])
def test_invoke_and_stream(
    make_meter: MeterFactory,
    fake_stripe: Any,
    server: AnthropicServer,
    stream: bool,
    token_types: str,
    expected: list[Any],
) -> None:
    meter = make_meter(token_types=token_types)
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    model = _model(server)
    if stream:
        text = "".join(str(c.content) for c in model.stream("hi", config={"callbacks": [handler]}))
        assert text.strip() == server.text
    else:
        reply = model.invoke("hi", config={"callbacks": [handler]})
        assert reply.usage_metadata is not None
        assert reply.usage_metadata["input_tokens"] == 550
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(expected)
    assert meter.stats()["no_usage"] == 0 and handler.open_runs == 0


def test_async_calls_and_streams(
    make_meter: MeterFactory, fake_stripe: Any, server: AnthropicServer
) -> None:
    meter = make_meter(token_types="detailed")
    handler = StripeCallbackHandler(meter, customer_id=CUS)

    async def run() -> None:
        model = _model(server, callbacks=[handler])
        await asyncio.gather(model.ainvoke("a"), model.ainvoke("b"))
        async for _ in model.astream("c"):
            pass

    asyncio.run(run())
    assert meter.flush(5)
    totals: dict[str, int] = {}
    for _, _, token_type, value in event_tuples(fake_stripe):
        totals[token_type] = totals.get(token_type, 0) + value
    assert totals == {"cache_write": 900, "cached_input": 600, "input": 150, "output": 90}
    assert len(fake_stripe.identifiers()) == 12


def test_a_message_delta_without_input_counts(
    make_meter: MeterFactory, fake_stripe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """langchain-anthropic takes a stream's usage from `message_delta` alone. Against a
    server that puts only the output count there, LangChain reports 0 input tokens: the
    call still bills exactly, the stream bills its output and the meter says why."""
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    with cached_claude(cumulative_delta=False) as srv:
        _model(srv).invoke("hi", config={"callbacks": [handler]})
        assert meter.flush(5)
        assert event_tuples(fake_stripe) == sorted(BASIC)
        for _ in _model(srv).stream("hi", config={"callbacks": [handler]}):
            pass
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted([*BASIC, (CUS, MODEL, "output", 30)])
    assert "reports output tokens but no input tokens" in caplog.text
