"""Query engines, chat engines and agents: their LLM calls are billed, once each.

An engine or agent span is not an LLM call: the LLM calls made inside it are billed; only
an LLM call inside another LLM call is folded into the outer one.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llamaindex_stripe import instrument
from support.events import event_tuples

CUS = "cus_engine"
ONE_CALL = [(CUS, "openai/gpt-4o", "input", 40), (CUS, "openai/gpt-4o", "output", 9)]


@pytest.fixture
def index() -> VectorStoreIndex:
    docs = [
        Document(text="Stripe meters aggregate usage events per customer."),
        Document(text="LlamaIndex builds retrieval pipelines over your documents."),
    ]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture
def llm(usage_llm: Any) -> Any:
    return usage_llm(
        prompt_tokens=40, completion_tokens=9, answers=["Meters sum usage per customer."]
    )


def test_query_engine(
    index: VectorStoreIndex, llm: Any, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    answer = engine.query("What do meters do?")
    assert "Meters" in str(answer)
    assert meter.flush(5)
    assert llm.calls == 1
    assert event_tuples(fake_stripe) == sorted(ONE_CALL)
    assert meter.stats()["no_usage"] == 0  # MockEmbedding's calls are not LLM calls
    assert handler.tracked_spans == 0


def test_query_engine_async_and_streaming(
    index: VectorStoreIndex, llm: Any, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    asyncio.run(index.as_query_engine(llm=llm).aquery("What do meters do?"))
    streaming = index.as_query_engine(llm=llm, streaming=True).query("What do meters do?")
    text = "".join(streaming.response_gen)  # type: ignore[union-attr]
    assert "Meters" in text
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(ONE_CALL * 2)
    gc.collect()
    assert handler.tracked_spans == 0


def test_query_engine_with_settings_llm(
    index: VectorStoreIndex, llm: Any, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter()
    instrument(meter)
    previous = Settings._llm
    Settings.llm = llm
    try:
        with instrument_tags({"stripe_customer_id": CUS}):
            index.as_query_engine().query("What do meters do?")
    finally:
        Settings._llm = previous
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(ONE_CALL)


@pytest.mark.parametrize("method", ["chat", "stream_chat", "achat", "astream_chat"])
def test_chat_engine(
    method: str, llm: Any, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter()
    handler = instrument(meter, customer_id=CUS)
    engine = SimpleChatEngine.from_defaults(llm=llm)
    if method == "chat":
        engine.chat("hi")
        engine.chat("again")
    elif method == "stream_chat":
        for _ in range(2):
            engine.stream_chat("hi").print_response_stream()
    elif method == "achat":

        async def go() -> None:
            await engine.achat("hi")
            await engine.achat("again")

        asyncio.run(go())
    else:

        async def go() -> None:
            for _ in range(2):
                response = await engine.astream_chat("hi")
                async for _ in response.async_response_gen():
                    pass

        asyncio.run(go())
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(ONE_CALL * 2)
    gc.collect()
    assert handler.tracked_spans == 0


def test_react_agent(usage_llm: Any, make_meter: Callable[..., Any], fake_stripe: Any) -> None:
    """Two reasoning steps (tool call, then answer): two LLM calls, each billed once."""
    from llama_index.core.agent.workflow import ReActAgent
    from llama_index.core.tools import FunctionTool

    def double(x: int) -> int:
        """Double a number."""
        return 2 * x

    llm = usage_llm(
        prompt_tokens=30,
        completion_tokens=6,
        answers=[
            'Thought: I need to use a tool to help me answer the question.\nAction: double\nAction Input: {"x": 2}',
            "Thought: I can answer without using any more tools. I'll use the user's language to answer\nAnswer: 4",
        ],
    )
    meter = make_meter()
    handler = instrument(meter)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(double)], llm=llm)

    async def go() -> Any:
        with meter.customer(CUS):
            return await agent.run("double 2")

    assert "4" in str(asyncio.run(go()))
    assert meter.flush(5)
    assert llm.calls == 2
    assert event_tuples(fake_stripe) == sorted(
        [(CUS, "openai/gpt-4o", "input", 30), (CUS, "openai/gpt-4o", "output", 6)] * 2
    )
    assert len({i.rsplit(":", 2)[0] for i in fake_stripe.identifiers()}) == 2
    gc.collect()
    assert handler.tracked_spans == 0
