"""A guarded meter refuses LangChain calls in the start callback: no provider request is made.

The real `ChatOpenAI` talks to a local OpenAI-compatible server, so the request count is
what the provider saw. The guard is a small real ledger (a dict of remaining budget).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import CreditExhausted, TokenMeter
from support.events import event_tuples
from support.guards import Budget
from support.providers import OpenAIServer

MeterFactory = Callable[..., TokenMeter]
MODEL = "openai/gpt-4o"
RICH, BROKE = "cus_rich", "cus_broke"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(model="gpt-4o-2024-08-06", prompt_tokens=100, completion_tokens=20) as srv:
        yield srv


@pytest.fixture
def guard() -> Budget:
    return Budget({RICH: Decimal("5"), BROKE: Decimal("0")})


def _model(srv: OpenAIServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o", base_url=srv.base_url, api_key="sk-test", max_retries=0, **kwargs
    )


def _billed(customer: str) -> list[tuple[str, str, str, int]]:
    return [(customer, MODEL, "input", 100), (customer, MODEL, "output", 20)]


def _cfg(handler: StripeCallbackHandler, customer: str) -> Any:
    return {"callbacks": [handler], "metadata": {"stripe_customer_id": customer}}


def test_refused_invoke_makes_no_request_and_bills_nothing(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter)
    with pytest.raises(CreditExhausted) as err:
        _model(server).invoke("hi", config=_cfg(handler, BROKE))
    assert err.value.customer_id == BROKE
    assert server.requests == []
    assert guard.asked == [(BROKE, MODEL)]
    assert handler.open_runs == 0 and handler.open_holds == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []


def test_allowed_calls_bill_and_release_their_holds(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter, customer_id=RICH)  # the handler's own customer
    model = _model(server, stream_usage=True)
    model.invoke("hi", config={"callbacks": [handler]})
    assert "".join(str(c.content) for c in model.stream("hi", config={"callbacks": [handler]}))

    async def run() -> None:
        await model.ainvoke("hi", config={"callbacks": [handler]})
        async for _ in model.astream("hi", config={"callbacks": [handler]}):
            pass

    asyncio.run(run())
    assert len(server.requests) == 4
    assert guard.asked == [(RICH, MODEL)] * 4
    assert guard.released == 4 and handler.open_holds == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(RICH) * 4)


def test_refused_stream_and_async_calls(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter = make_meter(guard=guard, default_customer_id=BROKE)  # the meter's default pays
    handler = StripeCallbackHandler(meter)
    model = _model(server, stream_usage=True)
    with pytest.raises(CreditExhausted):
        list(model.stream("hi", config={"callbacks": [handler]}))

    async def run() -> None:
        with pytest.raises(CreditExhausted):
            await model.ainvoke("hi", config={"callbacks": [handler]})
        with pytest.raises(CreditExhausted):
            async for _ in model.astream("hi", config={"callbacks": [handler]}):
                pass

    asyncio.run(run())
    with meter.customer(RICH):  # a scope outranks the meter's default
        model.invoke("hi", config={"callbacks": [handler]})
    assert guard.asked == [(BROKE, MODEL)] * 3 + [(RICH, MODEL)]
    assert len(server.requests) == 1
    assert guard.released == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(RICH))


def test_hold_released_when_the_provider_fails(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter)
    server.fail_next = 1
    with pytest.raises(Exception, match="boom") as err:
        _model(server).invoke("hi", config=_cfg(handler, RICH))
    assert not isinstance(err.value, CreditExhausted)
    assert len(server.requests) == 1
    assert guard.released == 1 and handler.open_holds == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []


def test_abandoned_stream_releases_its_hold(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter)
    stream = _model(server, stream_usage=True).stream("hi", config=_cfg(handler, RICH))
    next(stream)
    stream.close()  # the app stops reading mid-stream
    assert guard.released == 1 and handler.open_holds == 0


def test_other_guard_errors_are_contained(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer
) -> None:
    class Broken:
        def reserve(self, customer_id: str, model: str | None) -> None:
            raise RuntimeError("ledger down")

    meter = make_meter(guard=Broken())
    handler = StripeCallbackHandler(meter, customer_id=RICH)
    _model(server).invoke("hi", config={"callbacks": [handler]})
    assert len(server.requests) == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(RICH))
    assert meter.stats()["adapter_errors"] == 1


def test_no_guard_is_unchanged(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    assert handler.raise_error is False
    _model(server).invoke("hi", config=_cfg(handler, BROKE))
    assert handler.open_holds == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(BROKE))


def test_lost_end_events_cannot_leak_holds(
    make_meter: MeterFactory, guard: Budget, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from langchain_stripe import handler as module

    monkeypatch.setattr(module, "MAX_OPEN_RUNS", 3)
    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter, customer_id=RICH)
    for _ in range(5):  # started, never ended
        handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=uuid.uuid4())
    assert handler.open_holds == 3
    assert guard.released == 2


def test_langgraph_agent_refused_before_the_model_call(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    meter = make_meter(guard=guard)
    handler = StripeCallbackHandler(meter)
    model = _model(server)

    def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("llm", call)
    g.add_edge(START, "llm")
    app = g.compile()
    with pytest.raises(CreditExhausted) as err:
        app.invoke({"messages": [HumanMessage("hi")]}, config=_cfg(handler, BROKE))
    assert err.value.customer_id == BROKE
    assert server.requests == []
    out = app.invoke({"messages": [HumanMessage("hi")]}, config=_cfg(handler, RICH))
    assert out["messages"][-1].content == server.text
    assert len(server.requests) == 1 and guard.released == 1

    from langgraph.prebuilt import create_react_agent

    agent = create_react_agent(model, [])
    with pytest.raises(CreditExhausted):
        asyncio.run(agent.ainvoke({"messages": [HumanMessage("hi")]}, config=_cfg(handler, BROKE)))
    assert len(server.requests) == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(RICH))


def test_global_handler_refuses(
    make_meter: MeterFactory, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    import langchain_stripe

    meter = make_meter(guard=guard)
    langchain_stripe.enable(meter)
    try:
        with meter.customer(BROKE), pytest.raises(CreditExhausted):
            _model(server).invoke("hi")
        with meter.customer(RICH):
            _model(server).invoke("hi")
    finally:
        langchain_stripe.disable()
    assert len(server.requests) == 1
    assert guard.asked == [(BROKE, MODEL), (RICH, MODEL)] and guard.released == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_billed(RICH))
