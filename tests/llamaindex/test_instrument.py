"""instrument() / uninstrument(): idempotent per meter, several meters, clean removal, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage
from llamaindex_stripe import StripeEventHandler, StripeSpanHandler, instrument, uninstrument
from stripe_token_meter.testing import FakeStripe
from support.events import event_tuples

CUS = "cus_inst"
MSGS = [ChatMessage(role="user", content="hi")]
ONE_CALL = [(CUS, "openai/gpt-4o", "input", 100), (CUS, "openai/gpt-4o", "output", 20)]


def _ours() -> tuple[list[Any], list[Any]]:
    root = get_dispatcher()
    return (
        [h for h in root.event_handlers if isinstance(h, StripeEventHandler)],
        [h for h in root.span_handlers if isinstance(h, StripeSpanHandler)],
    )


def test_instrument_adds_handler_and_span_handler_once(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    first = instrument(meter)
    second = instrument(meter)
    assert first is second
    events, spans = _ours()
    assert events == [first] and len(spans) == 1 and spans[0] is first.span_handler
    usage_llm().chat(MSGS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(ONE_CALL)


def test_uninstrument_one_handler(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    uninstrument(handler)
    assert _ours() == ([], [])
    usage_llm().chat(MSGS)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert instrument(meter) is not handler  # a fresh one after removal


def test_uninstrument_all(make_meter: Callable[..., Any], usage_llm: Any) -> None:
    a, b = make_meter(default_customer_id=CUS), make_meter(default_customer_id=CUS)
    instrument(a)
    instrument(b)
    manual = StripeEventHandler(a)  # added by hand, without instrument()
    get_dispatcher().add_event_handler(manual)
    assert len(_ours()[0]) == 3
    uninstrument()
    assert _ours() == ([], [])


def test_several_meters_each_bill_every_call(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    with FakeStripe() as other:
        other.create_meter("token-billing-tokens")
        other.auto_customers = True
        a = make_meter(default_customer_id=CUS)
        b = make_meter(default_customer_id=CUS, api_key="sk_test_fake", api_base=other.url)
        ha, hb = instrument(a), instrument(b)
        assert ha is not hb
        assert instrument(a) is ha and instrument(b) is hb
        usage_llm().chat(MSGS)
        assert a.flush(5) and b.flush(5)
        assert event_tuples(fake_stripe) == sorted(ONE_CALL)
        assert event_tuples(other) == sorted(ONE_CALL)
        uninstrument(ha)
        usage_llm().chat(MSGS)
        assert a.flush(5) and b.flush(5)
        assert len(fake_stripe.events()) == 2
        assert len(other.events()) == 4


def test_custom_dispatcher(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """Instrumenting a named dispatcher sees what propagates through it (here: every LLM event)."""
    meter = make_meter(default_customer_id=CUS)
    dispatcher = get_dispatcher("llama_index.core.llms.callbacks")
    handler = instrument(meter, dispatcher=dispatcher)
    try:
        assert handler.dispatcher is dispatcher
        assert _ours() == ([], [])
        usage_llm(shape="openai").complete("q")  # one LLM span: no nesting to see
        assert meter.flush(5)
        assert event_tuples(fake_stripe) == sorted(ONE_CALL)
    finally:
        uninstrument(handler)
    assert not any(isinstance(h, StripeEventHandler) for h in dispatcher.event_handlers)
    assert not any(isinstance(h, StripeSpanHandler) for h in dispatcher.span_handlers)


def test_handler_errors_are_counted_not_raised(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)

    def broken(*_: Any) -> None:
        raise RuntimeError("adapter bug")

    handler._tracker.end = broken
    answer = usage_llm().complete("q")  # the app's call is never disturbed
    assert answer.text
    stats = meter.stats()
    assert stats["adapter_errors"] == 1
    assert "adapter bug" in stats["last_error"]


def test_strict_mode_reraises_but_dispatcher_swallows(
    make_meter: Callable[..., Any], usage_llm: Any
) -> None:
    """Strict: an invalid record raises in the handler; LlamaIndex's dispatcher swallows it,
    so the error shows in stats()['adapter_errors'] and the log, never in the LLM call."""
    meter = make_meter(strict=True)
    handler = instrument(meter)
    with instrument_tags({"stripe_customer_id": "user_42"}):
        usage_llm().chat(MSGS)  # does not raise
    assert meter.stats()["adapter_errors"] == 1
    assert "InvalidCustomer" in meter.stats()["last_error"]
    assert meter.stats()["recorded"] == 0
    # and the handler itself, called directly, does raise
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
    from llama_index.core.llms import ChatResponse

    end = LLMChatEndEvent(
        messages=MSGS,
        response=ChatResponse(message=MSGS[0], raw={"model": "m", "usage": {"prompt_tokens": 1}}),
    )
    end.span_id = None
    with pytest.raises(Exception, match="customer"):
        handler.handle(end)


def test_handler_is_cheap_for_unrelated_events(make_meter: Callable[..., Any]) -> None:
    from llama_index.core.instrumentation.events.retrieval import RetrievalStartEvent

    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    assert handler.handle(RetrievalStartEvent(str_or_query_bundle="q")) is None
    assert meter.stats()["adapter_errors"] == 0


def test_concurrent_threads(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    meter = make_meter()
    handler = instrument(meter)
    llm = usage_llm(prompt_tokens=3, completion_tokens=1)

    def call(i: int) -> None:
        with meter.customer(f"cus_t{i % 4}"):
            if i % 3 == 0:
                for _ in llm.stream_chat(MSGS):
                    pass
            elif i % 3 == 1:
                llm.chat(MSGS)
            else:
                asyncio.run(llm.achat(MSGS))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(60)))
    assert meter.flush(10)
    totals = fake_stripe.totals()
    assert sum(v for (_, _, t), v in totals.items() if t == "input") == 180
    assert sum(v for (_, _, t), v in totals.items() if t == "output") == 60
    assert handler.tracked_spans == 0
