"""A guarded meter refuses LlamaIndex LLM calls before the provider is called.

The real `llama_index.llms.openai.OpenAI` talks to a local OpenAI-compatible server, so
its request count is what the provider saw. The guard is a small real ledger (a dict of
remaining budget). The refusal comes from the LLM's legacy CallbackManager (see the
handler module's doc): the instrumentation dispatcher swallows handler errors.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from llamaindex_stripe import instrument, uninstrument
from stripe_token_meter import CreditExhausted
from support.events import event_tuples
from support.guards import Budget
from support.llama_calls import METHODS, run_llm
from support.providers import OpenAIServer

RICH, BROKE = "cus_rich", "cus_broke"
MODEL = "openai/gpt-4o"
MSGS = [ChatMessage(role="user", content="hello")]
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    with OpenAIServer(model="gpt-4o-2024-08-06", prompt_tokens=100, completion_tokens=20) as s:
        yield s


@pytest.fixture
def guard() -> Budget:
    return Budget({RICH: Decimal("5"), BROKE: Decimal("0")})


def _llm(srv: OpenAIServer) -> OpenAI:
    return OpenAI(
        api_base=srv.base_url,
        api_key="sk-test",
        model="gpt-4o",
        max_retries=0,
        additional_kwargs=INCLUDE_USAGE,
    )


def _billed(customer: str, n: int = 1) -> list[tuple[str, str, str, int]]:
    return sorted([(customer, MODEL, "input", 100), (customer, MODEL, "output", 20)] * n)


@pytest.mark.parametrize("method", METHODS)
def test_refused_call_never_reaches_the_provider(
    method: str, srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    handler = instrument(meter)
    llm = _llm(srv)  # made after instrument() or before: either is guarded
    with instrument_tags({"stripe_customer_id": BROKE}), pytest.raises(CreditExhausted) as err:
        run_llm(llm, method, MSGS)
    assert err.value.customer_id == BROKE
    assert srv.requests == []
    assert guard.asked == [(BROKE, MODEL)]
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []
    assert meter.stats()["no_usage"] == 0 and meter.stats()["adapter_errors"] == 0
    gc.collect()
    assert handler.tracked_spans == 0 and handler.open_holds == 0


def test_allowed_calls_bill_and_release_every_hold(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    # made before instrument(): still guarded; one each (an async client keeps its loop)
    llms = [_llm(srv) for _ in METHODS]
    meter = make_meter(guard=guard, default_customer_id=BROKE)
    handler = instrument(meter, customer_id=RICH)  # the handler's customer outranks the default
    for llm, method in zip(llms, METHODS, strict=True):
        run_llm(llm, method, MSGS)
    assert len(srv.requests) == len(METHODS)
    assert guard.asked == [(RICH, MODEL)] * len(METHODS)
    assert guard.released == len(METHODS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH, len(METHODS))
    gc.collect()
    assert handler.open_holds == 0


def test_scope_and_tags_pick_the_customer(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    instrument(meter)
    llm = _llm(srv)
    with meter.customer(BROKE), pytest.raises(CreditExhausted):
        llm.chat(MSGS)
    with meter.customer(BROKE), instrument_tags({"stripe_customer_id": RICH}):
        llm.chat(MSGS)  # per-call tags outrank the scope
    assert guard.asked == [(BROKE, MODEL), (RICH, MODEL)]
    assert len(srv.requests) == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH)


def test_hold_released_when_the_provider_fails(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    meter = make_meter(guard=guard, default_customer_id=RICH)
    handler = instrument(meter)
    srv.fail_next = 1
    with pytest.raises(Exception, match="boom") as err:
        _llm(srv).chat(MSGS)
    assert not isinstance(err.value, CreditExhausted)
    assert len(srv.requests) == 1
    assert guard.released == 1 and handler.open_holds == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []


def test_abandoned_streams_release_their_holds(
    srv: OpenAIServer, make_meter: Callable[..., Any], guard: Budget
) -> None:
    meter = make_meter(guard=guard, default_customer_id=RICH)
    handler = instrument(meter)
    llm = _llm(srv)
    stream = llm.stream_chat(MSGS)
    next(stream)
    stream.close()

    async def go() -> None:
        astream = await llm.astream_chat(MSGS)
        await astream.__anext__()
        await astream.aclose()

    asyncio.run(go())
    assert guard.released == 2 and handler.open_holds == 0


def test_uninstrument_releases_the_holds_of_calls_in_flight(
    srv: OpenAIServer, make_meter: Callable[..., Any], guard: Budget
) -> None:
    """Once detached, the callback never sees those calls end: their holds go at once."""
    meter = make_meter(guard=guard, default_customer_id=RICH)
    handler = instrument(meter)
    stream = _llm(srv).stream_chat(MSGS)
    next(stream)
    assert handler.open_holds == 1 and guard.released == 0
    uninstrument(handler)
    assert guard.released == 1 and handler.open_holds == 0
    stream.close()
    assert guard.released == 1


def test_nested_llm_calls_ask_once(
    make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget, usage_llm: Any
) -> None:
    meter = make_meter(guard=guard, default_customer_id=RICH)
    instrument(meter)
    usage_llm().chat(MSGS)  # a CustomLLM: chat() runs complete() inside
    assert len(guard.asked) == 1 and guard.released == 1


def test_other_guard_errors_are_contained(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    class Broken:
        def reserve(self, customer_id: str, model: str | None) -> None:
            raise RuntimeError("ledger down")

    meter = make_meter(guard=Broken(), default_customer_id=RICH)
    instrument(meter)
    _llm(srv).chat(MSGS)
    assert len(srv.requests) == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH)
    assert meter.stats()["adapter_errors"] == 1


def test_no_guard_is_unchanged_and_uninstrument_detaches(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    llm = _llm(srv)
    handlers_before = list(llm.callback_manager.handlers)
    plain = make_meter(default_customer_id=BROKE)
    instrument(plain)
    llm.chat(MSGS)
    assert llm.callback_manager.handlers == handlers_before  # nothing attached
    uninstrument()
    guarded = make_meter(guard=guard, default_customer_id=BROKE)
    instrument(guarded)
    with pytest.raises(CreditExhausted):
        llm.chat(MSGS)
    assert len(llm.callback_manager.handlers) == len(handlers_before) + 1
    uninstrument()
    assert llm.callback_manager.handlers == handlers_before
    llm.chat(MSGS)  # no longer guarded
    assert len(srv.requests) == 2


def test_query_engine_and_agent_are_refused_before_the_llm_call(
    srv: OpenAIServer, make_meter: Callable[..., Any], fake_stripe: Any, guard: Budget
) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.agent.workflow import ReActAgent
    from llama_index.core.embeddings import MockEmbedding

    meter = make_meter(guard=guard, default_customer_id=BROKE)
    instrument(meter)
    index = VectorStoreIndex.from_documents(
        [Document(text="Stripe meters aggregate usage events per customer.")],
        embed_model=MockEmbedding(embed_dim=8),
    )
    with pytest.raises(CreditExhausted) as err:
        index.as_query_engine(llm=_llm(srv)).query("What do meters do?")
    assert err.value.customer_id == BROKE

    async def run_agent() -> None:
        agent = ReActAgent(tools=[], llm=_llm(srv))
        await agent.run("hi")

    with pytest.raises(CreditExhausted):
        asyncio.run(run_agent())
    assert srv.requests == []
    assert guard.asked == [(BROKE, MODEL)] * 2
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []
