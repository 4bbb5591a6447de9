"""Who pays: instrument_tags > meter.customer() scope > handler customer_id > meter default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage
from llamaindex_stripe import instrument
from stripe_token_meter import InvalidCustomer
from support.events import event_tuples

MSGS = [ChatMessage(role="user", content="hi")]


def _customers(fake: Any) -> list[str]:
    return [c for c, _, t, _ in event_tuples(fake) if t == "input"]


def test_precedence(make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any) -> None:
    meter = make_meter(default_customer_id="cus_default")
    instrument(meter, customer_id="cus_handler")
    llm = usage_llm(prompt_tokens=1, completion_tokens=1)
    llm.chat(MSGS)  # handler
    with meter.customer("cus_scope"):
        llm.chat(MSGS)  # scope over handler
        with instrument_tags({"stripe_customer_id": "cus_tag"}):
            llm.chat(MSGS)  # LlamaIndex tag over scope
    assert meter.flush(5)
    assert sorted(_customers(fake_stripe)) == ["cus_handler", "cus_scope", "cus_tag"]


def test_meter_default(make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any) -> None:
    meter = make_meter(default_customer_id="cus_default")
    instrument(meter)
    usage_llm().complete("q")
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_default"]


def test_missing_customer_is_dead_lettered(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter()
    instrument(meter)
    usage_llm().chat(MSGS)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter._outbox._query("SELECT code, field FROM rejected") == [
        ("missing_customer", "customer_id")
    ]
    assert meter.stats()["dead_lettered"] == 1


def test_customer_follows_async_tasks_and_streams(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter()
    instrument(meter)
    llm = usage_llm(prompt_tokens=1, completion_tokens=1)

    async def one(customer: str) -> None:
        with instrument_tags({"stripe_customer_id": customer}):
            await asyncio.sleep(0)
            async for _ in await llm.astream_chat(MSGS):
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one(f"cus_{i}") for i in range(5)))

    asyncio.run(main())
    assert meter.flush(5)
    assert sorted(_customers(fake_stripe)) == [f"cus_{i}" for i in range(5)]


def test_stream_bills_who_started_it(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """A stream consumed outside the scope it was opened in still bills that customer."""
    meter = make_meter()
    instrument(meter)
    with meter.customer("cus_opener"):
        stream = usage_llm().stream_chat(MSGS)
    for _ in stream:
        pass
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_opener"]


def test_dimensions_from_handler_and_tags(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id="cus_dim")
    instrument(meter, dimensions={"region": "eu", "feature": "base"})
    with instrument_tags({"stripe_dimensions": {"feature": "search"}}):
        usage_llm().chat(MSGS)
    assert meter.flush(5)
    payloads = [e.payload for e in fake_stripe.events()]
    assert len(payloads) == 2
    assert all(p["region"] == "eu" and p["feature"] == "search" for p in payloads)


def test_non_mapping_tag_dimensions_are_dead_lettered(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """The adapter kit's one rule: a bad per-call value is a named error, never dropped."""
    meter = make_meter(default_customer_id="cus_dim")
    instrument(meter)
    with instrument_tags({"stripe_dimensions": "feature=search"}):
        usage_llm().chat(MSGS)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter._outbox._query("SELECT code FROM rejected") == [("invalid_dimension",)]


def test_invalid_handler_customer_fails_at_instrument(make_meter: Callable[..., Any]) -> None:
    with pytest.raises(InvalidCustomer):
        instrument(make_meter(), customer_id="user_42")


def test_invalid_tag_customer_is_dead_lettered(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id="cus_default")
    instrument(meter)
    with instrument_tags({"stripe_customer_id": "user_42"}):
        usage_llm().chat(MSGS)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter._outbox._query("SELECT code FROM rejected") == [("invalid_customer",)]
