"""Who pays: metadata > customer_resolver > meter.customer() scope > handler > meter default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import TokenMeter
from support.events import event_tuples

MeterFactory = Callable[..., TokenMeter]
M = "fakeai/fake-chat-1"


def _resolver(metadata: Mapping[str, Any]) -> str | None:
    """An app's own user ids mapped to Stripe customers."""
    return {"u1": "cus_resolved"}.get(metadata.get("user_id", ""))


def _inputs(fake: Any) -> list[tuple[str, int]]:
    """(customer, input tokens) per call; each call uses its own input token count."""
    return sorted((c, v) for c, _, t, v in event_tuples(fake) if t == "input")


def test_precedence(make_meter: MeterFactory, fake_stripe: Any, chat: Any) -> None:
    meter = make_meter(default_customer_id="cus_default")
    handler = StripeCallbackHandler(meter, customer_id="cus_handler", customer_resolver=_resolver)
    bare = StripeCallbackHandler(meter)

    def call(n: int, h: StripeCallbackHandler = handler, **metadata: Any) -> None:
        chat(input_tokens=n).invoke("hi", config={"callbacks": [h], "metadata": metadata})

    with meter.customer("cus_scope"):
        call(1, stripe_customer_id="cus_meta", user_id="u1")  # metadata beats everything
        call(2, user_id="u1")  # resolver beats the scope
        call(3, user_id="someone-else")  # resolver says None: the scope
    call(4, user_id="someone-else")  # no scope: the handler's customer
    call(5, bare)  # nothing else: the meter's default
    assert meter.flush(5)
    assert _inputs(fake_stripe) == sorted(
        [
            ("cus_meta", 1),
            ("cus_resolved", 2),
            ("cus_scope", 3),
            ("cus_handler", 4),
            ("cus_default", 5),
        ]
    )


def test_missing_customer_is_dead_lettered_not_sent(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    assert chat().invoke("hi", config={"callbacks": [handler]}).content  # the call itself succeeds
    assert meter.flush(5)
    assert fake_stripe.events() == []
    stats = meter.stats()
    assert stats["invalid"] == 1
    assert stats["adapter_errors"] == 0


def test_scope_under_ainvoke(make_meter: MeterFactory, fake_stripe: Any, chat: Any) -> None:
    meter = make_meter()

    class ExecutorHandler(StripeCallbackHandler):
        run_inline = False  # LangChain runs it in a thread pool under ainvoke

    handlers = [StripeCallbackHandler(meter), ExecutorHandler(meter)]

    async def run() -> None:
        for i, h in enumerate(handlers):
            with meter.customer(f"cus_s{i}"):
                await chat(input_tokens=i + 1).ainvoke("hi", config={"callbacks": [h]})

    asyncio.run(run())
    assert meter.flush(5)
    assert _inputs(fake_stripe) == [("cus_s0", 1), ("cus_s1", 2)]


def test_scope_is_read_when_the_llm_run_starts(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    """A stream started inside the scope and finished outside it bills the scope's customer."""
    meter = make_meter(default_customer_id="cus_default")
    handler = StripeCallbackHandler(meter)
    stream = chat(input_tokens=1).stream("hi", config={"callbacks": [handler]})
    with meter.customer("cus_started"):
        next(stream)  # on_chat_model_start runs here
    assert len(list(stream)) >= 2  # on_llm_end runs here, outside the scope

    async def run() -> None:
        agen = chat(input_tokens=2).astream("hi", config={"callbacks": [handler]})
        with meter.customer("cus_astarted"):
            await agen.__anext__()
        async for _ in agen:
            pass

    asyncio.run(run())
    assert meter.flush(5)
    assert _inputs(fake_stripe) == [("cus_astarted", 2), ("cus_started", 1)]


def test_concurrent_tasks_keep_their_own_customer(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)

    async def one(i: int) -> None:
        with meter.customer(f"cus_t{i}"):
            await asyncio.sleep(0)
            async for _ in chat(input_tokens=i + 1).astream("hi", config={"callbacks": [handler]}):
                await asyncio.sleep(0)

    async def run() -> None:
        await asyncio.gather(*(one(i) for i in range(8)))

    asyncio.run(run())
    assert meter.flush(5)
    assert _inputs(fake_stripe) == sorted((f"cus_t{i}", i + 1) for i in range(8))


def test_dimensions_merge_handler_and_call(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(
        meter, customer_id="cus_a", dimensions={"app": "web", "tier": "free"}
    )
    chat(input_tokens=1).invoke("hi", config={"callbacks": [handler]})
    chat(input_tokens=2).invoke(
        "hi",
        config={
            "callbacks": [handler],
            "metadata": {"stripe_dimensions": {"tier": "pro", "feature": "chat"}},
        },
    )
    assert meter.flush(5)
    got = sorted(
        (
            e.payload["value"],
            {k: v for k, v in e.payload.items() if k in ("app", "tier", "feature")},
        )
        for e in fake_stripe.events()
        if e.payload["token_type"] == "input"
    )
    assert got == [
        ("1", {"app": "web", "tier": "free"}),
        ("2", {"app": "web", "tier": "pro", "feature": "chat"}),
    ]
    assert {e.payload["model"] for e in fake_stripe.events()} == {M}


def test_bad_call_dimensions_are_dead_lettered(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    chat().invoke(
        "hi", config={"callbacks": [handler], "metadata": {"stripe_dimensions": "not-a-dict"}}
    )
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["invalid"] == 1


def test_a_failing_resolver_never_breaks_the_call(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()

    def broken(metadata: Mapping[str, Any]) -> str | None:
        raise KeyError("user table unavailable")

    handler = StripeCallbackHandler(meter, customer_id="cus_fallback", customer_resolver=broken)
    assert chat().invoke("hi", config={"callbacks": [handler]}).content
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_fallback", M, "input", 10),
        ("cus_fallback", M, "output", 5),
    ]
    assert meter.stats()["adapter_errors"] == 1


def test_handler_rejects_a_bad_customer_id_up_front(local_meter: MeterFactory) -> None:
    with pytest.raises(ValueError, match="customer_id"):
        StripeCallbackHandler(local_meter(), customer_id="user-42")


def test_async_plain_llm_next_to_another_inline_handler(
    make_meter: MeterFactory, fake_stripe: Any, llm: Any
) -> None:
    """langchain-core's async on_llm_start skips non-inline handlers when an inline one (e.g.
    LangSmith's tracer) is attached; the run's metadata customer must still be seen."""
    from langchain_core.callbacks import BaseCallbackHandler

    class InlineTracer(BaseCallbackHandler):
        run_inline = True

    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    cfg: Any = {"callbacks": [InlineTracer(), handler], "metadata": {"stripe_customer_id": "cus_x"}}
    asyncio.run(llm().ainvoke("hi", config=cfg))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_x", "fake-llm-1", "input", 7),
        ("cus_x", "fake-llm-1", "output", 3),
    ]
