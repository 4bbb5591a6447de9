"""LangGraph graphs and tool-calling loops: exactly one set of events per LLM call."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import langchain_stripe
from langchain_core.messages import HumanMessage
from langchain_stripe import StripeCallbackHandler
from langgraph.graph import END, START, MessagesState, StateGraph
from stripe_token_meter import TokenMeter
from support.events import event_tuples

MeterFactory = Callable[..., TokenMeter]


def _two_llm_graph(chat: Any, *, async_review: bool = False) -> Any:
    draft = chat(model_name="drafter", input_tokens=10, output_tokens=4)
    review = chat(model_name="reviewer", input_tokens=30, output_tokens=6)

    def draft_node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [draft.invoke(state["messages"])]}

    def review_node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [review.invoke(state["messages"])]}

    async def areview_node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await review.ainvoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("draft", draft_node)
    g.add_node("review", areview_node if async_review else review_node)
    g.add_edge(START, "draft")
    g.add_edge("draft", "review")
    g.add_edge("review", END)
    return g.compile()


def _expected(customer: str) -> list[tuple[str, str, str, int]]:
    return [
        (customer, "fakeai/drafter", "input", 10),
        (customer, "fakeai/drafter", "output", 4),
        (customer, "fakeai/reviewer", "input", 30),
        (customer, "fakeai/reviewer", "output", 6),
    ]


def test_state_graph_with_two_llm_nodes(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    graph = _two_llm_graph(chat, async_review=True)
    cfg = {"callbacks": [handler], "metadata": {"stripe_customer_id": "cus_g1"}}

    async def run() -> None:
        await graph.ainvoke({"messages": [HumanMessage("hi")]}, config=cfg)
        # stream_mode="messages" attaches LangGraph's own inline stream handler
        async for _ in graph.astream(
            {"messages": [HumanMessage("hi")]},
            config={**cfg, "metadata": {"stripe_customer_id": "cus_g2"}},
            stream_mode="messages",
        ):
            pass

    asyncio.run(run())
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_expected("cus_g1") + _expected("cus_g2"))
    assert handler.open_runs == 0


def test_graph_with_global_handler_and_a_customer_scope(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = langchain_stripe.enable(meter)
    graph = _two_llm_graph(chat)
    with meter.customer("cus_scoped"):
        graph.invoke({"messages": [HumanMessage("hi")]})
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_expected("cus_scoped"))
    assert handler.open_runs == 0


def test_react_agent_tool_loop_bills_each_model_call(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any, tool_double: Any
) -> None:
    from langgraph.prebuilt import create_react_agent

    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_agent")
    model = chat(tool_name="double", input_tokens=20, output_tokens=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(model, [tool_double])
    result = agent.invoke({"messages": [HumanMessage("double 2")]}, config={"callbacks": [handler]})
    kinds = [m.type for m in result["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]  # model -> tool -> model
    assert result["messages"][2].content == "4"
    assert meter.flush(5)
    call = [
        ("cus_agent", "fakeai/fake-chat-1", "input", 20),
        ("cus_agent", "fakeai/fake-chat-1", "output", 7),
    ]
    assert event_tuples(fake_stripe) == sorted(call * 2)
    assert len(set(fake_stripe.identifiers())) == 4  # two LLM runs, two distinct run ids
