"""The real `ChatOpenAI` against a local OpenAI-compatible server: what users actually run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import TokenMeter
from support.events import event_tuples
from support.providers import OpenAIServer

MeterFactory = Callable[..., TokenMeter]
MODEL = "openai/gpt-4o"
CUS = "cus_oa"

BASIC = [(CUS, MODEL, "input", 100), (CUS, MODEL, "output", 20)]
# detailed: input = prompt - cached, output = completion - reasoning
DETAILED = [
    (CUS, MODEL, "cached_input", 30),
    (CUS, MODEL, "input", 70),
    (CUS, MODEL, "output", 15),
    (CUS, MODEL, "reasoning", 5),
]


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(
        model="gpt-4o-2024-08-06",
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=30,
        reasoning_tokens=5,
    ) as srv:
        yield srv


def _model(srv: OpenAIServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o", base_url=srv.base_url, api_key="sk-test", max_retries=0, **kwargs
    )


@pytest.mark.parametrize(("token_types", "expected"), [("basic", BASIC), ("detailed", DETAILED)])
def test_invoke(
    make_meter: MeterFactory,
    fake_stripe: Any,
    server: OpenAIServer,
    token_types: str,
    expected: list[Any],
) -> None:
    meter = make_meter(token_types=token_types)
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    reply = _model(server).invoke("hi", config={"callbacks": [handler]})
    assert reply.response_metadata["model_name"] == "gpt-4o-2024-08-06"
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(expected)


@pytest.mark.parametrize(("token_types", "expected"), [("basic", BASIC), ("detailed", DETAILED)])
def test_stream_with_stream_usage(
    make_meter: MeterFactory,
    fake_stripe: Any,
    server: OpenAIServer,
    token_types: str,
    expected: list[Any],
) -> None:
    meter = make_meter(token_types=token_types)
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    model = _model(server, stream_usage=True, callbacks=[handler])  # constructor callbacks
    assert "".join(str(c.content) for c in model.stream("hi")).strip() == server.text
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(expected)


def test_astream_and_ainvoke(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)

    async def run() -> None:
        model = _model(server, stream_usage=True)
        async for _ in model.astream("hi", config={"callbacks": [handler]}):
            pass
        await model.ainvoke("hi", config={"callbacks": [handler]})

    asyncio.run(run())
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(BASIC * 2)


def test_stream_without_stream_usage_bills_nothing_and_says_why(
    make_meter: MeterFactory,
    fake_stripe: Any,
    server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    chunks = list(_model(server).stream("hi", config={"callbacks": [handler]}))
    assert len(chunks) > 3
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 1
    assert "stream_usage=True" in caplog.text
    assert "LangChain gpt-4o-2024-08-06" in caplog.text


def test_http_error_is_not_billed(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    server.fail_next = 1
    with pytest.raises(Exception, match="boom"):
        _model(server).invoke("hi", config={"callbacks": [handler]})
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["adapter_errors"] == 0
    assert handler.open_runs == 0


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_a_prompt_repeated_in_one_batch_with_a_cache_bills_the_call_made(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, stream: bool
) -> None:
    """LangChain marks the first run's own generation as a cache hit when the second prompt
    hits it; the message carries the first run's id, so that run is still billed, once."""
    from langchain_core.caches import InMemoryCache
    from langchain_core.messages import HumanMessage

    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    model = _model(server, cache=InMemoryCache(), streaming=stream, stream_usage=stream)
    prompt = [HumanMessage("same")]
    model.generate([prompt, prompt], callbacks=[handler])
    model.generate([prompt], callbacks=[handler])  # a hit from a later call: not billed
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == BASIC
