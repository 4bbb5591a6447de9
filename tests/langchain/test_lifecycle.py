"""Failures, per-run state, strict mode and the global `enable()` hook."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import langchain_stripe
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import MissingCustomer, TokenMeter
from support.events import event_tuples

MeterFactory = Callable[..., TokenMeter]
M = "fakeai/fake-chat-1"


def _call(customer: str, inp: int = 10, out: int = 5) -> list[tuple[str, str, str, int]]:
    return [(customer, M, "input", inp), (customer, M, "output", out)]


# -- failed LLM calls ------------------------------------------------------------------


def test_failed_calls_bill_nothing_and_drop_their_state(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any, llm: Any, boom: type[Exception]
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    cfg: Any = {"callbacks": [handler]}
    with pytest.raises(boom):
        chat(fail=True).invoke("hi", config=cfg)
    with pytest.raises(boom):
        list(chat(fail=True).stream("hi", config=cfg))
    with pytest.raises(boom):
        asyncio.run(chat(fail=True).ainvoke("hi", config=cfg))
    with pytest.raises(boom):
        llm(fail=True).invoke("hi", config=cfg)
    assert handler.open_runs == 0
    assert meter.flush(5)
    assert fake_stripe.events() == []
    stats = meter.stats()
    assert (stats["no_usage"], stats["adapter_errors"], stats["invalid"]) == (0, 0, 0)


def test_usage_the_provider_reported_before_failing_is_billed(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any, boom: type[Exception]
) -> None:
    """Anthropic-style streams report input tokens first; a stream cut after that still cost them."""
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    with pytest.raises(boom):
        list(
            chat(split_usage=True, fail_mid_stream=True, input_tokens=33).stream(
                "hi", config={"callbacks": [handler]}
            )
        )
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [("cus_a", M, "input", 33)]
    assert handler.open_runs == 0


def test_usage_in_the_error_response_is_billed(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    class Response:
        status_code = 400
        headers: ClassVar[dict[str, str]] = {}

        def json(self) -> dict[str, Any]:
            return {
                "error": {"message": "refused"},
                "usage": {"prompt_tokens": 12, "completion_tokens": 0},
            }

    class RefusedError(RuntimeError):
        response = Response()

    class RefusingChat(chat):  # type: ignore[misc, valid-type]
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise RefusedError("refused")

    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    with pytest.raises(RefusedError):
        RefusingChat().invoke("hi", config={"callbacks": [handler]})
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [("cus_a", M, "input", 12)]


def test_call_without_usage_is_counted_not_guessed(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    chat(report_usage=False).invoke("hi", config={"callbacks": [handler]})
    list(chat(report_usage=False).stream("hi", config={"callbacks": [handler]}))
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 2


# -- per-run state ------------------------------------------------------------------------


def test_no_state_growth_after_10000_runs(
    local_meter: MeterFactory, chat: Any, boom: type[Exception]
) -> None:
    meter = local_meter()
    handler = StripeCallbackHandler(meter, customer_id="cus_a")
    model = chat()
    batch = [[HumanMessage("hi")]] * 2_500
    for _ in range(3):  # 7,500 runs, all started before any ends
        model.generate(batch, callbacks=[handler])
        assert handler.open_runs == 0
    for _ in range(2_000):
        model.invoke("hi", config={"callbacks": [handler]})
    failing = chat(fail=True)
    for _ in range(500):
        with pytest.raises(boom):
            failing.invoke("hi", config={"callbacks": [handler]})
    assert handler.open_runs == 0
    assert handler._runs == {}
    assert meter.flush(10)
    stats = meter.stats()
    assert (stats["recorded"], stats["local"]) == (9_500, 19_000)


# -- strict mode -------------------------------------------------------------------------


def test_strict_mode_raises_into_the_chain(make_meter: MeterFactory, chat: Any) -> None:
    meter = make_meter(strict=True)
    handler = StripeCallbackHandler(meter)  # no customer anywhere
    assert handler.raise_error is True
    with pytest.raises(MissingCustomer):
        chat().invoke("hi", config={"callbacks": [handler]})


def test_non_strict_never_raises(make_meter: MeterFactory, chat: Any) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    assert handler.raise_error is False
    assert chat().invoke("hi", config={"callbacks": [handler]}).content


# -- enable() / disable() ------------------------------------------------------------------


def test_enable_bills_every_run_without_wiring(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    handler = langchain_stripe.enable(meter, customer_id="cus_g")
    assert langchain_stripe.enabled_handler() is handler
    model = chat()
    model.invoke("a")
    asyncio.run(model.ainvoke("b"))
    list(model.stream("c"))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()
    chain.invoke({"q": "d"}, config={"metadata": {"stripe_customer_id": "cus_meta"}})
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_call("cus_g") * 3 + _call("cus_meta"))


def test_enable_reaches_threads_started_later(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    """A request thread of a web server starts with an empty context, yet is billed."""
    meter = make_meter()
    langchain_stripe.enable(meter, customer_id="cus_thread")
    t = threading.Thread(target=lambda: chat().invoke("hi"))
    t.start()
    t.join()
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _call("cus_thread")


def test_enable_twice_and_explicit_handlers_never_double_count(
    make_meter: MeterFactory, fake_stripe: Any, chat: Any
) -> None:
    meter = make_meter()
    langchain_stripe.enable(meter, customer_id="cus_a")
    handler = langchain_stripe.enable(meter, customer_id="cus_a")
    model = chat()
    model.invoke("1")
    model.invoke("2", config={"callbacks": [handler]})  # the same handler, also passed
    model.invoke(
        "3", config={"callbacks": [StripeCallbackHandler(meter, customer_id="cus_a")]}
    )  # another one
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(_call("cus_a") * 3)
    assert len(fake_stripe.identifiers()) == 6


def test_disable_stops_new_runs(make_meter: MeterFactory, fake_stripe: Any, chat: Any) -> None:
    meter = make_meter()
    langchain_stripe.enable(meter, customer_id="cus_a")
    chat().invoke("billed")
    langchain_stripe.disable()
    assert langchain_stripe.enabled_handler() is None
    chat().invoke("not billed")
    asyncio.run(chat().ainvoke("not billed"))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _call("cus_a")


def test_runs_that_never_end_are_bounded(
    local_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a framework start runs and never end them, the oldest are forgotten."""
    import uuid

    from langchain_stripe import handler as handler_module

    monkeypatch.setattr(handler_module, "MAX_OPEN_RUNS", 100)
    handler = StripeCallbackHandler(local_meter(), customer_id="cus_a")
    ids = [uuid.uuid4() for _ in range(250)]
    for rid in ids:
        handler.on_llm_start({}, ["hi"], run_id=rid, metadata={})
    assert handler.open_runs == 100
    assert list(handler._runs) == ids[-100:]
