"""One set of events per LLM run, for every way LangChain runs a chat model or a plain LLM."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import TokenMeter
from support.events import event_tuples

MeterFactory = Callable[..., TokenMeter]
CHAT = "fakeai/fake-chat-1"


def _cfg(
    handler: StripeCallbackHandler, customer: str | None = None, **extra: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"callbacks": [handler], **extra}
    if customer:
        cfg["metadata"] = {"stripe_customer_id": customer}
    return cfg


def _one_call(
    customer: str, model: str = CHAT, inp: int = 10, out: int = 5
) -> list[tuple[str, str, str, int]]:
    return [(customer, model, "input", inp), (customer, model, "output", out)]


@pytest.fixture
def meter(make_meter: MeterFactory) -> TokenMeter:
    return make_meter()


@pytest.fixture
def handler(meter: TokenMeter) -> StripeCallbackHandler:
    return StripeCallbackHandler(meter)


def test_invoke_bills_once_with_run_id_identifiers(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    run_id = uuid.uuid4()
    chat().invoke("hi", config=_cfg(handler, "cus_a", run_id=run_id))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")
    assert sorted(fake_stripe.identifiers()) == [
        f"{run_id}:input:token-billing-tokens",
        f"{run_id}:output:token-billing-tokens",
    ]
    assert handler.open_runs == 0


def test_ainvoke(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    asyncio.run(chat().ainvoke("hi", config=_cfg(handler, "cus_a")))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")


def test_batch_and_abatch_bill_each_input_to_its_customer(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    model = chat()
    model.batch(["a", "b", "c"], config=[_cfg(handler, c) for c in ("cus_a", "cus_b", "cus_c")])
    asyncio.run(model.abatch(["d", "e"], config=[_cfg(handler, c) for c in ("cus_d", "cus_a")]))
    assert meter.flush(5)
    expected = sorted(
        _one_call("cus_a") * 2 + _one_call("cus_b") + _one_call("cus_c") + _one_call("cus_d")
    )
    assert event_tuples(fake_stripe) == expected
    assert len(set(fake_stripe.identifiers())) == 10


@pytest.mark.parametrize(
    "split", [False, True], ids=["usage-on-last-chunk", "usage-split-across-chunks"]
)
def test_stream_and_astream(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any, split: bool
) -> None:
    model = chat(split_usage=split, input_tokens=40, output_tokens=9)
    chunks = list(model.stream("hi", config=_cfg(handler, "cus_a")))
    assert len(chunks) >= 3

    async def consume() -> int:
        return len([c async for c in model.astream("hi", config=_cfg(handler, "cus_b"))])

    assert asyncio.run(consume()) >= 3
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        _one_call("cus_a", inp=40, out=9) + _one_call("cus_b", inp=40, out=9)
    )


def test_astream_events_on_a_chain(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat() | StrOutputParser()

    async def consume() -> list[str]:
        return [
            e["event"]
            async for e in chain.astream_events(
                {"q": "x"}, config=_cfg(handler, "cus_a"), version="v2"
            )
        ]

    kinds = asyncio.run(consume())
    assert kinds.count("on_chat_model_stream") >= 3  # it really streamed
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")


def test_parallel_and_nested_chains_bill_each_llm_once_and_never_the_chain(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    left = prompt | chat(model_name="model-a", input_tokens=11, output_tokens=2) | StrOutputParser()
    inner = (
        prompt | chat(model_name="model-b", input_tokens=13, output_tokens=3) | StrOutputParser()
    )
    nested = RunnablePassthrough.assign(q=lambda d: d["q"] + "!") | inner
    chain = (
        {"q": RunnablePassthrough()}
        | RunnableParallel(left=left, right=nested)
        | RunnableLambda(lambda d: d["left"] + d["right"])
    )
    chain.invoke("hello", config=_cfg(handler, "cus_a"))
    asyncio.run(chain.ainvoke("hello", config=_cfg(handler, "cus_b")))
    assert meter.flush(5)
    expected = []
    for c in ("cus_a", "cus_b"):
        expected += _one_call(c, "fakeai/model-a", 11, 2) + _one_call(c, "fakeai/model-b", 13, 3)
    assert event_tuples(fake_stripe) == sorted(expected)
    assert handler.open_runs == 0


def test_response_model_wins_over_requested_model(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    chat(
        provider="anthropic", model_name="claude-x", response_model="claude-3-5-sonnet-20241022"
    ).invoke("hi", config=_cfg(handler, "cus_a"))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a", "anthropic/claude-3.5-sonnet")


def test_detailed_token_types_from_usage_metadata_details(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter(token_types="detailed")
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    # LangChain's usage_metadata is inclusive: 100 input = 50 fresh + 30 cache read + 20 cache write.
    model = chat(input_tokens=100, output_tokens=40, cache_read=30, cache_creation=20, reasoning=15)
    model.invoke("hi", config={"callbacks": [handler]})
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        [
            ("cus_a", CHAT, "input", 50),
            ("cus_a", CHAT, "cached_input", 30),
            ("cus_a", CHAT, "cache_write", 20),
            ("cus_a", CHAT, "output", 25),
            ("cus_a", CHAT, "reasoning", 15),
        ]
    )


def test_candidates_sharing_the_request_usage_count_once(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    chat(candidates=3).generate(
        [[HumanMessage("hi")]], callbacks=[handler], metadata={"stripe_customer_id": "cus_a"}
    )
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")


def test_cache_hits_are_not_billed(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    model = chat(cache=InMemoryCache())
    model.invoke("same", config=_cfg(handler, "cus_a"))
    model.invoke("same", config=_cfg(handler, "cus_a"))  # served by LangChain's cache
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")
    assert meter.stats()["no_usage"] == 0


def test_a_cache_hit_right_after_a_call_leaves_that_call_billed(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, chat: Any
) -> None:
    """On a hit LangChain swaps the cached generation's message for a copy marked as a hit.

    That generation is the first call's own: its usage, read later on the meter's worker,
    must still be what the provider reported, not the hit's mark.
    """
    model = chat(cache=InMemoryCache())
    with meter._intake._drain_lock:  # the worker reads nothing until both calls have returned
        model.invoke("same", config=_cfg(handler, "cus_a"))
        model.invoke("same", config=_cfg(handler, "cus_a"))  # served by LangChain's cache
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")
    assert meter.stats()["recorded"] == 1


@pytest.mark.parametrize("candidates", [1, 3])
def test_two_same_prompts_in_one_generate_with_a_cache_bill_the_call_made(
    meter: TokenMeter,
    handler: StripeCallbackHandler,
    fake_stripe: Any,
    chat: Any,
    candidates: int,
) -> None:
    """The second prompt hits the cache the first filled, and LangChain marks the first run's
    own generation as a hit before either run ends: the first run still bills (its message
    carries its run id), the second does not. Several candidates (n > 1) take the path that
    reads the result in place; the rule is the same."""
    model = chat(cache=InMemoryCache(), candidates=candidates)
    model.generate(
        [[HumanMessage("same")], [HumanMessage("same")]],
        callbacks=[handler],
        metadata={"stripe_customer_id": "cus_a"},
    )
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")


def test_the_handler_customer_is_the_one_set_when_the_call_ended(
    meter: TokenMeter, fake_stripe: Any, chat: Any
) -> None:
    """An app re-pointing one handler per request: calls still queued keep their customer."""
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    model = chat()
    with meter._intake._drain_lock:  # the worker reads nothing until both calls have returned
        model.invoke("x", config={"callbacks": [handler]})
        handler.customer_id = "cus_b"
        model.invoke("y", config={"callbacks": [handler]})
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_one_call("cus_a") + _one_call("cus_b"))


# -- plain (completion) LLMs: llm_output usage -------------------------------------------


def test_plain_llm_invoke_ainvoke_in_a_chain(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, llm: Any
) -> None:
    chain = PromptTemplate.from_template("Say {x}") | llm(cache_read=2) | StrOutputParser()
    chain.invoke({"x": "a"}, config=_cfg(handler, "cus_a"))
    asyncio.run(chain.ainvoke({"x": "b"}, config=_cfg(handler, "cus_b")))
    assert meter.flush(5)
    # OpenAI-style token_usage is inclusive: basic input is prompt_tokens (cached included).
    # LangChain's ls_provider for UsageLLM is "usage", made up from the class name: not a
    # provider. Nothing else names one, so the model is billed under its name alone.
    m = "fake-llm-1"
    assert event_tuples(fake_stripe) == sorted(
        _one_call("cus_a", m, 7, 3) + _one_call("cus_b", m, 7, 3)
    )


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_plain_llm_batch_bills_the_batch_usage_once(
    make_meter: MeterFactory, fake_stripe: Any, llm: Any, style: str
) -> None:
    meter = make_meter(token_types="detailed")
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    model = llm(style=style, cache_read=1)
    assert model.batch(["a", "b", "c"], config={"callbacks": [handler]}) == [
        "answer to a",
        "answer to b",
        "answer to c",
    ]
    assert meter.flush(5)
    m = "fake-llm-1"
    if style == "openai":  # inclusive: 21 prompt tokens of which 3 cached
        expected = [
            ("cus_a", m, "input", 18),
            ("cus_a", m, "cached_input", 3),
            ("cus_a", m, "output", 9),
        ]
    else:  # Anthropic raw: input excludes the 3 cache reads
        expected = [
            ("cus_a", m, "input", 21),
            ("cus_a", m, "cached_input", 3),
            ("cus_a", m, "output", 9),
        ]
    assert event_tuples(fake_stripe) == sorted(expected)
    assert meter.stats()["no_usage"] == 0
    assert handler.open_runs == 0


def test_plain_llm_stream_without_usage_is_reported_not_guessed(
    meter: TokenMeter, handler: StripeCallbackHandler, fake_stripe: Any, llm: Any
) -> None:
    assert "".join(llm().stream("x", config=_cfg(handler, "cus_a"))) == "ab"
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 1


def test_no_prompt_or_completion_text_reaches_the_journal_or_outbox(
    meter: TokenMeter, handler: StripeCallbackHandler, chat: Any, fake_stripe: Any
) -> None:
    """The journal is on disk: only counts, ids and names may go there, as in the outbox."""
    prompt, answer = "PROMPT-secret-4711", "ANSWER-secret-0815"
    with meter._intake._drain_lock:  # the record stays in the journal while we look
        chat(text=answer).invoke(prompt, config=_cfg(handler, "cus_a"))
        journal = Path(meter._outbox.path + ".journal")
        data = b"".join(p.read_bytes() for p in journal.glob("*.jnl"))
        assert data  # the call is there ...
        assert prompt.encode() not in data and answer.encode() not in data  # ... its text not
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _one_call("cus_a")
    stored = b"".join(
        p.read_bytes() for p in Path(meter._outbox.path).parent.glob("*.sqlite3*") if p.is_file()
    )
    assert prompt.encode() not in stored and answer.encode() not in stored
