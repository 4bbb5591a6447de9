"""The SDK with `mock_response`: sync, async, streaming, Router; exact events at FakeStripe."""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger
from litellm_stripe import StripeLogger
from litellm_testkit import MESSAGES, drain_litellm, model_response, wait_stat, wait_until
from support.events import event_tuples

CUS = "cus_A1"
META = {"stripe_customer_id": CUS}


def _usage_response() -> Any:
    return model_response(prompt=100, completion=20, cached=30, reasoning=5)


BASIC = [
    (CUS, "openai/gpt-4o", "input", 100),
    (CUS, "openai/gpt-4o", "output", 20),
]
DETAILED = [
    (CUS, "openai/gpt-4o", "cached_input", 30),
    (CUS, "openai/gpt-4o", "input", 70),
    (CUS, "openai/gpt-4o", "output", 15),
    (CUS, "openai/gpt-4o", "reasoning", 5),
]


@pytest.mark.parametrize(("token_types", "expected"), [("basic", BASIC), ("detailed", DETAILED)])
def test_completion(stripe_logger: Any, fake_stripe: Any, token_types: str, expected: Any) -> None:
    meter, logger = stripe_logger(token_types=token_types)
    resp = litellm.completion(
        model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
    )
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == expected
    # identifiers come from LiteLLM's own call id (never the provider's response id): a
    # replay can never bill twice
    call_id = resp._hidden_params["litellm_call_id"]
    assert {e.identifier for e in fake_stripe.events()} == {
        f"{call_id}:{t}:token-billing-tokens" for _, _, t, _ in expected
    }


def test_acompletion(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(token_types="detailed")

    async def main() -> None:
        await litellm.acompletion(
            model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
        )
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == DETAILED


def test_stream_sync(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    stream = litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        mock_response=_usage_response(),
        stream=True,
        metadata=META,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello there friend"
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == DETAILED
    assert logger.stats()["recorded"] == 1


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_async(stripe_logger: Any, fake_stripe: Any, include_usage: bool) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}

    async def main() -> None:
        stream = await litellm.acompletion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            mock_response=_usage_response(),
            stream=True,
            metadata=META,
            **extra,
        )
        async for _ in stream:
            pass
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == DETAILED
    assert logger.stats()["recorded"] == 1


def test_router_sync_and_async(stripe_logger: Any, fake_stripe: Any) -> None:
    """The Router's model carries its provider prefix (openai/gpt-4o): never doubled."""
    meter, logger = stripe_logger()
    router = litellm.Router(
        model_list=[{"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o"}}]
    )
    router.completion(
        model="chat",
        messages=MESSAGES,
        mock_response=model_response(prompt=11, completion=3),
        metadata={"stripe_customer_id": "cus_R1"},
    )

    async def main() -> None:
        await router.acompletion(
            model="chat",
            messages=MESSAGES,
            mock_response=model_response(prompt=7, completion=2),
            metadata={"stripe_customer_id": "cus_R2"},
        )
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 2)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_R1", "openai/gpt-4o", "input", 11),
        ("cus_R1", "openai/gpt-4o", "output", 3),
        ("cus_R2", "openai/gpt-4o", "input", 7),
        ("cus_R2", "openai/gpt-4o", "output", 2),
    ]


def test_hook_fired_twice_bills_once(stripe_logger: Any, fake_stripe: Any) -> None:
    """LiteLLM fires success callbacks more than once for one call: dedupe on its call id,
    counted as repeat callbacks, not as duplicates."""
    meter, logger = stripe_logger()
    seen: list[tuple[dict[str, Any], Any, Any, Any]] = []

    class Capture(CustomLogger):
        def log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            seen.append((kwargs, response_obj, start_time, end_time))

    litellm.callbacks = [logger, Capture()]
    litellm.completion(
        model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
    )
    wait_stat(logger, "recorded", 1)
    wait_until(lambda: len(seen) == 1, what="the capturing logger")
    kwargs, response_obj, start, end = seen[0]
    logger.log_success_event(kwargs, response_obj, start, end)  # sync again
    asyncio.run(logger.async_log_success_event(kwargs, response_obj, start, end))  # and async
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == BASIC
    stats = logger.stats()
    # (LiteLLM itself reports a sync call twice: to the logger and to its thread path)
    assert stats["recorded"] == 1
    assert stats["repeat_callbacks"] >= 2
    assert stats["duplicates"] == 0
    assert meter.stats()["duplicates"] == 0  # never reached the meter


def test_many_concurrent_calls_each_billed_once(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger()

    async def one(i: int) -> None:
        await litellm.acompletion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            mock_response=model_response(prompt=10 + i, completion=1),
            metadata={"stripe_customer_id": f"cus_C{i}"},
        )

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 20)
    assert meter.flush(5)
    events = event_tuples(fake_stripe)
    assert len(events) == 40
    assert sorted(v for c, _, t, v in events if t == "input") == [10 + i for i in range(20)]
    assert len(set(fake_stripe.identifiers())) == 40


def test_failure_is_not_billed(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger()
    with pytest.raises(Exception, match="provider down"):
        litellm.completion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            mock_response=Exception("provider down"),
            metadata=META,
        )
    wait_stat(logger, "failures", 1)

    async def afail() -> None:
        with pytest.raises(Exception, match="provider down"):
            await litellm.acompletion(
                model="openai/gpt-4o",
                messages=MESSAGES,
                mock_response=Exception("provider down"),
                metadata=META,
            )
        await drain_litellm()

    asyncio.run(afail())
    wait_stat(logger, "failures", 2)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert logger.stats()["recorded"] == 0
    assert logger.stats()["in_flight"] == 0


def test_missing_usage_is_counted(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger()
    kwargs = {
        "litellm_call_id": "call-1",
        "call_type": "completion",
        "standard_logging_object": {"id": "chatcmpl-nousage", "model": "gpt-4o"},
        "litellm_params": {"metadata": META},
    }
    logger.log_success_event(kwargs, {"id": "chatcmpl-nousage", "model": "gpt-4o"}, None, None)
    assert logger.stats()["no_usage"] == 1
    assert meter.stats()["no_usage"] == 1
    assert meter.flush(5)
    assert fake_stripe.events() == []


def test_two_loggers_each_bill_their_meter(make_meter: Any, fake_stripe: Any) -> None:
    """LiteLLM keeps one logger per class and public attributes: both must still run."""
    fake_stripe.create_meter("second-meter")
    first, second = make_meter(), make_meter(event_name="second-meter")
    one, two = StripeLogger(first), StripeLogger(second)
    litellm.callbacks = [one, two]
    litellm.completion(
        model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
    )
    assert one.flush(10) and two.flush(10)
    assert one.stats()["recorded"] == two.stats()["recorded"] == 1
    assert first.stats()["events"] == second.stats()["events"] == 2


def test_two_meters_in_one_account_both_reach_stripe(make_meter: Any, fake_stripe: Any) -> None:
    fake_stripe.create_meter("second-meter")
    first, second = make_meter(), make_meter(event_name="second-meter")
    litellm.callbacks = [StripeLogger(first), StripeLogger(second)]
    litellm.completion(
        model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
    )
    for logger in litellm.callbacks:
        assert logger.flush(10)
    assert sorted(e.event_name for e in fake_stripe.events()) == [
        "second-meter",
        "second-meter",
        "token-billing-tokens",
        "token-billing-tokens",
    ]


def test_logger_flush_waits_for_litellm(stripe_logger: Any, fake_stripe: Any) -> None:
    _meter, logger = stripe_logger()
    for _ in range(5):
        litellm.completion(
            model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
        )
    assert logger.flush(10)
    assert logger.stats()["in_flight"] == 0
    assert len(fake_stripe.events()) == 10

    async def main() -> bool:
        await litellm.acompletion(
            model="openai/gpt-4o", messages=MESSAGES, mock_response=_usage_response(), metadata=META
        )
        return await logger.aflush(10)

    assert asyncio.run(main())
    assert len(fake_stripe.events()) == 12


@pytest.mark.parametrize(
    ("response", "slo_extra", "expected"),
    [
        (  # a raw Anthropic usage block: input_tokens exclude cache reads and writes
            {
                "usage": {
                    "input_tokens": 50,
                    "output_tokens": 30,
                    "cache_read_input_tokens": 200,
                    "cache_creation_input_tokens": 300,
                }
            },
            {},
            {"input": 50, "cached_input": 200, "cache_write": 300, "output": 30},
        ),
        (  # the Responses API's usage: inclusive, named input/output
            {
                "usage": {
                    "input_tokens": 550,
                    "output_tokens": 30,
                    "input_tokens_details": {"cached_tokens": 200},
                    "output_tokens_details": {"reasoning_tokens": 10},
                }
            },
            {},
            {"input": 350, "cached_input": 200, "output": 20, "reasoning": 10},
        ),
        (  # no usage on the response: LiteLLM's standard logging payload has it
            {"id": "x"},
            {
                "metadata": {
                    "usage_object": {
                        "prompt_tokens": 9,
                        "completion_tokens": 4,
                        "prompt_tokens_details": {"cached_tokens": 2},
                    }
                }
            },
            {"input": 7, "cached_input": 2, "output": 4},
        ),
    ],
)
def test_usage_shapes(
    stripe_logger: Any, fake_stripe: Any, response: Any, slo_extra: Any, expected: Any
) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    slo = {"id": "req-1", "model": "claude-3-5-sonnet-20241022", "custom_llm_provider": "anthropic"}
    kwargs = {"standard_logging_object": {**slo, **slo_extra}, "litellm_params": {"metadata": META}}
    logger.log_success_event(kwargs, response, None, None)
    assert meter.flush(5)
    assert {t: v for _, _, t, v in event_tuples(fake_stripe)} == expected
    assert {m for _, m, _, _ in event_tuples(fake_stripe)} == {"anthropic/claude-3.5-sonnet"}


def test_inconsistent_usage_is_dead_lettered_with_its_reason(
    stripe_logger: Any, fake_stripe: Any
) -> None:
    """Cache reads above prompt_tokens cannot be inclusive totals: never guess, keep it."""
    meter, logger = stripe_logger()
    kwargs = {
        "standard_logging_object": {"id": "req-2", "model": "gpt-4o"},
        "litellm_params": {"metadata": META},
    }
    response = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 50},
        }
    }
    logger.log_success_event(kwargs, response, None, None)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    (code, message) = meter._outbox._query("SELECT code, message FROM rejected")[0]
    assert code == "invalid_token_count" and "not inclusive" in message
