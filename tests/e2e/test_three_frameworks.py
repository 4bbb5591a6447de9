"""All three adapters on one meter, each with its framework's real provider client against a
local provider server, delivering to FakeStripe through the real SDK: exact events, once."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from stripe_token_meter import TokenMeter
from support.events import event_tuples
from support.providers import AnthropicServer, OpenAIServer

pytestmark = pytest.mark.e2e

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_langchain_litellm_llamaindex_on_one_meter(
    make_meter: Callable[..., TokenMeter], fake_stripe: Any, api: str
) -> None:
    import litellm
    from langchain_openai import ChatOpenAI
    from langchain_stripe import StripeCallbackHandler
    from litellm_stripe import StripeLogger
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAI
    from llamaindex_stripe import instrument, uninstrument

    meter = make_meter(api=api, token_types="detailed")
    openai_srv = OpenAIServer(
        prompt_tokens=1000, completion_tokens=200, cached_tokens=600, reasoning_tokens=50
    )
    anthropic_srv = AnthropicServer(
        input_tokens=40,
        output_tokens=25,
        cache_read_input_tokens=300,
        cache_creation_input_tokens=120,
    )
    logger = StripeLogger(meter)
    saved = list(litellm.callbacks)
    litellm.callbacks = [logger]
    handler = instrument(meter)
    try:
        with openai_srv, anthropic_srv:
            # LangChain: ChatOpenAI, streaming with usage, customer from config metadata.
            chat = ChatOpenAI(
                model="gpt-4o", base_url=openai_srv.base_url, api_key="sk-test", stream_usage=True
            )
            cfg: Any = {
                "callbacks": [StripeCallbackHandler(meter)],
                "metadata": {"stripe_customer_id": "cus_lc"},
            }
            "".join(str(c.content) for c in chat.stream("hi", config=cfg))
            chat.invoke("hi", config=cfg)

            # LiteLLM: Anthropic through its real client, sync and async.
            kwargs: Any = {
                "api_base": anthropic_srv.base_url,
                "api_key": "sk-ant-test",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"stripe_customer_id": "cus_ll"},
            }
            litellm.completion(model="anthropic/claude-3-5-sonnet-20241022", **kwargs)

            async def acall() -> None:
                await litellm.acompletion(model="anthropic/claude-3-5-sonnet-20241022", **kwargs)
                from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

                await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), 10)

            asyncio.run(acall())

            # LlamaIndex: its OpenAI LLM, chat and stream_chat, customer from a scope.
            llm = OpenAI(
                model="gpt-4o",
                api_base=openai_srv.base_url,
                api_key="sk-test",
                additional_kwargs={"stream_options": {"include_usage": True}},
            )
            with meter.customer("cus_li"):
                llm.chat([ChatMessage(role="user", content="hi")])
                for _ in llm.stream_chat([ChatMessage(role="user", content="hi")]):
                    pass
            _wait(lambda: meter.stats()["recorded"] >= 6)
            assert meter.flush(15)
    finally:
        litellm.callbacks = saved
        uninstrument(handler)

    gpt = [("input", 400), ("cached_input", 600), ("output", 150), ("reasoning", 50)]
    claude = [("input", 40), ("cached_input", 300), ("cache_write", 120), ("output", 25)]
    expected = sorted(
        [("cus_lc", "openai/gpt-4o", t, v) for t, v in gpt] * 2
        + [("cus_ll", "anthropic/claude-3.5-sonnet", t, v) for t, v in claude] * 2
        + [("cus_li", "openai/gpt-4o", t, v) for t, v in gpt] * 2
    )
    if event_tuples(fake_stripe) != expected:
        pytest.fail(f"got {event_tuples(fake_stripe)}\nexpected {expected}\nstats {meter.stats()}")
    ids = Counter(fake_stripe.identifiers())
    assert len(ids) == 24 and max(ids.values()) == 1
    s = meter.stats()
    assert (
        s["delivered"],
        s["pending"],
        s["dead_lettered"],
        s["no_usage"],
        s["adapter_errors"],
    ) == (24, 0, 0, 0, 0)
