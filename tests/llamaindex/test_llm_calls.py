"""Every LLM entry point, every usage shape: exact events at FakeStripe, one record per call."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage, MockLLM
from llamaindex_stripe import instrument
from support.events import event_tuples
from support.llama_calls import METHODS, run_llm

CUS = "cus_llama"
MSGS = [ChatMessage(role="user", content="hi there")]


def _sync(llm: Any, method: str) -> None:
    run_llm(llm, method, MSGS, prompt="hi there")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("as_objects", [False, True], ids=["dict", "object"])
def test_openai_shape_every_method(
    method: str, as_objects: bool, make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types="detailed")
    handler = instrument(meter)
    llm = usage_llm(
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=30,
        reasoning_tokens=5,
        as_objects=as_objects,
    )
    _sync(llm, method)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        [
            (CUS, "openai/gpt-4o", "input", 70),
            (CUS, "openai/gpt-4o", "cached_input", 30),
            (CUS, "openai/gpt-4o", "output", 15),
            (CUS, "openai/gpt-4o", "reasoning", 5),
        ]
    )
    # one request id per call: the outermost LLM span (chat runs complete inside)
    request_ids = {i.rsplit(":", 2)[0] for i in fake_stripe.identifiers()}
    assert len(request_ids) == 1
    assert request_ids.pop().startswith(f"UsageLLM.{method}-")
    gc.collect()
    assert handler.tracked_spans == 0
    assert meter.stats()["adapter_errors"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_anthropic_shape_every_method(
    method: str, make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types="detailed")
    instrument(meter)
    llm = usage_llm(
        shape="anthropic",
        model_name="anthropic/claude-3-5-sonnet-latest",
        response_model="claude-3-5-sonnet-20241022",
        prompt_tokens=50,
        completion_tokens=30,
        cached_tokens=200,
        cache_write_tokens=40,
    )
    _sync(llm, method)
    assert meter.flush(5)
    model = "anthropic/claude-3.5-sonnet"
    # streams split usage (input on message_start, output on message_delta): merged, once
    assert event_tuples(fake_stripe) == sorted(
        [
            (CUS, model, "input", 50),
            (CUS, model, "cached_input", 200),
            (CUS, model, "cache_write", 40),
            (CUS, model, "output", 30),
        ]
    )


@pytest.mark.parametrize("method", ["chat", "stream_chat", "acomplete", "astream_chat"])
def test_gemini_shape(
    method: str, make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types="detailed")
    instrument(meter)
    llm = usage_llm(
        shape="gemini",
        model_name="google/gemini-2.5-flash",
        response_model="gemini-2.5-flash",
        prompt_tokens=120,  # includes the 20 cached
        cached_tokens=20,
        completion_tokens=40,  # candidates; thoughts come on top
        reasoning_tokens=12,
    )
    _sync(llm, method)
    assert meter.flush(5)
    model = "google/gemini-2.5-flash"
    assert event_tuples(fake_stripe) == sorted(
        [
            (CUS, model, "input", 100),
            (CUS, model, "cached_input", 20),
            (CUS, model, "output", 40),
            (CUS, model, "reasoning", 12),
        ]
    )


@pytest.mark.parametrize("method", METHODS)
def test_bedrock_converse_shape(
    method: str, make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS, token_types="detailed")
    instrument(meter)
    llm = usage_llm(
        shape="bedrock",
        model_name="bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        prompt_tokens=50,  # uncached input, as Anthropic's
        completion_tokens=30,
        cached_tokens=200,
        cache_write_tokens=40,
    )
    _sync(llm, method)
    assert meter.flush(5)
    model = "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"
    assert event_tuples(fake_stripe) == sorted(
        [
            (CUS, model, "input", 50),
            (CUS, model, "cached_input", 200),
            (CUS, model, "cache_write", 40),
            (CUS, model, "output", 30),
        ]
    )
    assert meter.stats()["no_usage"] == 0


def test_gemini_basic_mode_sums(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    llm = usage_llm(
        shape="gemini",
        model_name="google/gemini-2.5-flash",
        response_model="gemini-2.5-flash",
        prompt_tokens=120,
        cached_tokens=20,
        completion_tokens=40,
        reasoning_tokens=12,
    )
    llm.chat(MSGS)
    assert meter.flush(5)
    model = "google/gemini-2.5-flash"
    assert event_tuples(fake_stripe) == [(CUS, model, "input", 120), (CUS, model, "output", 52)]


@pytest.mark.parametrize("method", ["chat", "stream_complete", "astream_chat"])
def test_additional_kwargs_usage(
    method: str, make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    _sync(
        usage_llm(shape="kwargs", response_model=None, prompt_tokens=11, completion_tokens=7),
        method,
    )
    assert meter.flush(5)
    # no model in the response: the LLM's metadata.model_name
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 11),
        (CUS, "openai/gpt-4o", "output", 7),
    ]


def test_raw_usage_wins_over_additional_kwargs(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """One source, never both: raw['usage'] (with details) over additional_kwargs."""
    from llama_index.core.base.llms.types import CompletionResponse
    from llama_index.core.llms.callbacks import llm_completion_callback

    class Both(usage_llm):  # type: ignore[misc,valid-type]
        @llm_completion_callback()
        def complete(
            self, prompt: str, formatted: bool = False, **kwargs: Any
        ) -> CompletionResponse:
            return CompletionResponse(
                text="x",
                raw=self.usage_raw(),
                additional_kwargs={"prompt_tokens": 999, "completion_tokens": 999},
            )

    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    Both(prompt_tokens=10, completion_tokens=4).complete("q")
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 10),
        (CUS, "openai/gpt-4o", "output", 4),
    ]


def test_response_model_wins_over_metadata(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    usage_llm(model_name="openai/gpt-4o", response_model="gpt-4o-mini-2024-07-18").chat(MSGS)
    usage_llm(model_name="openai/gpt-4o", response_model=None).chat(MSGS)
    assert meter.flush(5)
    assert {e.payload["model"] for e in fake_stripe.events()} == {
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
    }


def test_provider_from_llm_class(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """A class LlamaIndex ships (here by name) gives the provider; no prefix needed."""
    Anthropic = type("Anthropic", (usage_llm,), {"__module__": "llama_index.llms.anthropic.base"})
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    Anthropic(
        shape="anthropic",
        model_name="claude-3-5-haiku-20241022",
        response_model=None,
        prompt_tokens=5,
        completion_tokens=6,
    ).chat(MSGS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "anthropic/claude-3.5-haiku", "input", 5),
        (CUS, "anthropic/claude-3.5-haiku", "output", 6),
    ]


def test_metadata_is_read_only_when_it_can_matter(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """The adapter does not read the LLM's `metadata` (a property that builds an object)
    when the response names the model and the class its provider, nor when the Start
    event's model_dict names the configured model; the billing is the same."""
    reads: list[str] = []

    def metadata(self: Any) -> Any:
        reads.append(self.model_name)
        return usage_llm.metadata.fget(self)

    OpenAI = type(
        "OpenAI",
        (usage_llm,),
        {"__module__": "llama_index.llms.openai.base", "metadata": property(metadata)},
    )
    OpenAI(model_name="gpt-4o").chat(MSGS)
    by_llamaindex = len(reads)  # LlamaIndex reads it too
    reads.clear()
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    OpenAI(model_name="gpt-4o", response_model="gpt-4o-mini-2024-07-18").chat(MSGS)
    assert len(reads) == by_llamaindex
    reads.clear()
    OpenAI(model_name="gpt-4o", response_model=None, prompt_tokens=7).chat(MSGS)
    assert len(reads) == by_llamaindex  # the Start event's model_dict names the model
    assert meter.flush(5)
    assert sorted(event_tuples(fake_stripe)) == sorted(
        [
            (CUS, "openai/gpt-4o-mini", "input", 100),
            (CUS, "openai/gpt-4o-mini", "output", 20),
            (CUS, "openai/gpt-4o", "input", 7),
            (CUS, "openai/gpt-4o", "output", 20),
        ]
    )
    assert meter.stats()["adapter_errors"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_mock_llm_reports_no_usage(
    method: str, make_meter: Callable[..., Any], fake_stripe: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    _sync(MockLLM(max_tokens=4), method)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 1  # once per call, not per nested span
    gc.collect()
    assert handler.tracked_spans == 0


def test_missing_usage_names_the_llm_and_fix(
    make_meter: Callable[..., Any], usage_llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    usage_llm(shape="none").chat(MSGS)
    assert meter.stats()["no_usage"] == 1
    assert "LlamaIndex UsageLLM reported no token usage" in caplog.text
    assert "raw['usage']" in caplog.text


def test_nested_chat_complete_counted_once(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """CustomLLM.chat runs complete(): two Start/End pairs, one bill, chat's span id."""
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    llm = usage_llm(prompt_tokens=8, completion_tokens=2)
    for _ in range(3):
        llm.chat(MSGS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        [(CUS, "openai/gpt-4o", "input", 8), (CUS, "openai/gpt-4o", "output", 2)] * 3
    )
    assert all(i.startswith("UsageLLM.chat-") for i in fake_stripe.identifiers())


def test_wrapper_llm_without_usage_bills_its_inner_calls(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any, wrapper_llm: Any
) -> None:
    """An outer LLM reporting nothing bills what the LLM calls it made reported."""
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    inner = usage_llm(prompt_tokens=10, completion_tokens=3)
    wrapper_llm(inner=inner).chat(MSGS)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        [(CUS, "openai/gpt-4o", "input", 10), (CUS, "openai/gpt-4o", "output", 3)] * 2
    )
    ids = fake_stripe.identifiers()
    assert len(set(ids)) == 4
    assert all(i.startswith("WrapperLLM.chat-") for i in ids)
    assert meter.stats()["no_usage"] == 0


def test_wrapper_llm_stream(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any, wrapper_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    inner = usage_llm(prompt_tokens=10, completion_tokens=3)
    for _ in wrapper_llm(inner=inner).stream_chat(MSGS):
        pass
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 10),
        (CUS, "openai/gpt-4o", "output", 3),
    ]
    gc.collect()
    assert handler.tracked_spans == 0


def test_structured_llm_bills_the_inner_llm(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """`as_structured_llm()` wraps the LLM; its response carries the parsed object, not usage."""
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str

    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    llm = usage_llm(answers=['{"name": "Ada"}'], prompt_tokens=12, completion_tokens=4)
    out = llm.as_structured_llm(Person).chat(MSGS)
    assert "Ada" in out.message.content
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 12),
        (CUS, "openai/gpt-4o", "output", 4),
    ]
    assert all(i.startswith("StructuredLLM.chat-") for i in fake_stripe.identifiers())


def test_failed_call_bills_nothing(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any, boom: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    llm = usage_llm(fail=True)
    with pytest.raises(boom):
        llm.chat(MSGS)
    with pytest.raises(boom):
        asyncio.run(llm.achat(MSGS))
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["no_usage"] == 0
    assert handler.tracked_spans == 0


def test_stream_failing_midway_bills_what_was_reported(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any, boom: Any
) -> None:
    """Anthropic reports input (and one output token) on its first event: that is billed."""
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    llm = usage_llm(
        shape="anthropic",
        model_name="anthropic/claude-3-5-sonnet-20241022",
        response_model=None,
        prompt_tokens=50,
        completion_tokens=30,
        fail_mid_stream=True,
        answers=["a b c"],
    )
    with pytest.raises(boom):
        for _ in llm.stream_chat(MSGS):
            pass
    assert meter.flush(5)
    model = "anthropic/claude-3.5-sonnet"
    assert event_tuples(fake_stripe) == [(CUS, model, "input", 50), (CUS, model, "output", 1)]
    gc.collect()
    assert handler.tracked_spans == 0


def test_abandoned_stream_bills_reported_usage_once(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    llm = usage_llm(
        shape="anthropic",
        model_name="anthropic/claude-3-5-sonnet-20241022",
        response_model=None,
        prompt_tokens=50,
        completion_tokens=30,
        answers=["one two three four"],
    )
    stream = llm.stream_chat(MSGS)
    next(stream)
    next(stream)
    stream.close()  # the consumer stops early
    del stream

    async def partial() -> None:
        agen = await llm.astream_chat(MSGS)
        await agen.__anext__()
        await agen.aclose()

    asyncio.run(partial())
    gc.collect()
    assert meter.flush(5)
    model = "anthropic/claude-3.5-sonnet"
    assert event_tuples(fake_stripe) == sorted(
        [(CUS, model, "input", 50), (CUS, model, "output", 1)] * 2
    )
    assert len(fake_stripe.events()) == 4  # never per chunk
    assert handler.tracked_spans == 0


def test_abandoned_stream_without_usage_is_counted(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    llm = usage_llm(answers=["one two three"])  # OpenAI shape: usage only on the last chunk
    stream = llm.stream_complete("q")
    next(stream)
    del stream  # dropped without close(): garbage collection closes it
    gc.collect()
    never_started = llm.stream_chat(MSGS)
    del never_started
    gc.collect()
    llm.complete("q")  # any later event also reaps collected streams
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 100),
        (CUS, "openai/gpt-4o", "output", 20),
    ]
    assert meter.stats()["no_usage"] == 1  # the abandoned one; the never-started one made no call
    assert handler.tracked_spans == 0


def test_state_does_not_grow(make_meter: Callable[..., Any], usage_llm: Any, boom: Any) -> None:
    meter = make_meter(default_customer_id=CUS, outbox_path=":memory:")
    handler = instrument(meter)
    llm = usage_llm(answers=["a b"])
    bad = usage_llm(fail=True)

    async def many() -> None:
        for _ in range(50):
            await llm.achat(MSGS)
            async for _ in await llm.astream_chat(MSGS):
                pass
            agen = await llm.astream_complete("q")
            await agen.__anext__()
            await agen.aclose()

    for i in range(200):
        llm.chat(MSGS)
        for _ in llm.stream_chat(MSGS):
            pass
        partial = llm.stream_complete("q")
        next(partial)
        if i % 2:
            partial.close()
        del partial
        with pytest.raises(boom):
            bad.complete("q")
    asyncio.run(many())
    gc.collect()
    llm.complete("q")
    assert handler.tracked_spans == 0
    tracker = handler._tracker
    assert not tracker.streams and not tracker.dead
    assert meter.stats()["adapter_errors"] == 0


def test_tracked_spans_are_bounded(
    make_meter: Callable[..., Any],
    usage_llm: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Streams opened and kept but never consumed cannot grow the state without bound."""
    import llamaindex_stripe.handler as handler_module

    monkeypatch.setattr(handler_module, "MAX_TRACKED_SPANS", 20)
    meter = make_meter(default_customer_id=CUS, outbox_path=":memory:")
    handler = instrument(meter)
    llm = usage_llm()
    kept = [llm.stream_complete("q") for _ in range(50)]
    assert handler.tracked_spans <= 20
    assert "spans open" in caplog.text
    del kept
    gc.collect()
    llm.complete("q")
    assert handler.tracked_spans == 0
