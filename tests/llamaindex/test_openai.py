"""llama-index-llms-openai's `OpenAI` against a local OpenAI-compatible server: real HTTP.

llama-index-llms-openai does not ask for usage when streaming (no
`stream_options.include_usage`); with it passed in `additional_kwargs` the usage comes
on the last, choice-less chunk, which LlamaIndex yields: its End event carries it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from llamaindex_stripe import instrument
from support.events import event_tuples
from support.llama_calls import METHODS, run_llm
from support.providers import OpenAIServer

CUS = "cus_openai"
MSGS = [ChatMessage(role="user", content="hello")]
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    with OpenAIServer(
        model="gpt-4o-2024-08-06",
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=30,
        reasoning_tokens=5,
    ) as server:
        yield server


def _llm(srv: OpenAIServer, **kwargs: Any) -> OpenAI:
    return OpenAI(api_base=srv.base_url, api_key="sk-test", model="gpt-4o", max_retries=0, **kwargs)


def _run(llm: OpenAI, method: str) -> None:
    run_llm(llm, method, MSGS)


BASIC = [(CUS, "openai/gpt-4o", "input", 100), (CUS, "openai/gpt-4o", "output", 20)]
DETAILED = [
    (CUS, "openai/gpt-4o", "input", 70),
    (CUS, "openai/gpt-4o", "cached_input", 30),
    (CUS, "openai/gpt-4o", "output", 15),
    (CUS, "openai/gpt-4o", "reasoning", 5),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("token_types", ["basic", "detailed"])
def test_openai_exact_values(
    method: str,
    token_types: str,
    srv: OpenAIServer,
    make_meter: Callable[..., Any],
    fake_stripe: Any,
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types=token_types)
    handler = instrument(meter)
    _run(_llm(srv, additional_kwargs=INCLUDE_USAGE), method)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(BASIC if token_types == "basic" else DETAILED)
    assert len({i.rsplit(":", 2)[0] for i in fake_stripe.identifiers()}) == 1
    if "stream" in method:
        assert srv.requests[-1][1]["stream_options"] == {"include_usage": True}
    gc.collect()
    assert handler.tracked_spans == 0
    assert meter.stats()["no_usage"] == 0


@pytest.mark.parametrize("method", ["stream_chat", "astream_chat"])
def test_openai_stream_without_include_usage_is_reported(
    method: str,
    srv: OpenAIServer,
    make_meter: Callable[..., Any],
    fake_stripe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    _run(_llm(srv), method)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 1
    assert "LlamaIndex OpenAI reported no token usage" in caplog.text
    assert "include_usage" in caplog.text


def test_openai_server_error_bills_nothing(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    srv.fail_next = 1
    with pytest.raises(Exception, match="boom"):
        _llm(srv).chat(MSGS)
    _llm(srv).chat(MSGS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(BASIC)
    assert handler.tracked_spans == 0


def test_openai_model_is_what_answered(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    """Asked for gpt-4o, answered by a dated snapshot: the answer's model is billed, normalised."""
    srv.model = "gpt-4o-mini-2024-07-18"
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    _llm(srv).chat(MSGS)
    assert meter.flush(5)
    assert {e.payload["model"] for e in fake_stripe.events()} == {"openai/gpt-4o-mini"}
