"""LiteLLM's real provider clients against local OpenAI and Anthropic servers.

The billed totals must equal what the provider's server reported, exactly, in both token
modes, streaming included; for Anthropic that is input + cache reads + cache writes +
output (LiteLLM folds the cache counts into its inclusive `prompt_tokens`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest
from litellm_testkit import MESSAGES, drain_litellm, wait_stat
from support.events import event_tuples
from support.providers import OpenAIServer, cached_claude

CUS = "cus_P1"
META = {"stripe_customer_id": CUS}
CLAUDE = "anthropic/claude-3-5-sonnet-20241022"


@pytest.fixture(scope="module")
def openai_server() -> Any:
    with OpenAIServer(
        prompt_tokens=120, completion_tokens=40, cached_tokens=20, reasoning_tokens=8
    ) as srv:
        yield srv


@pytest.fixture(scope="module", params=[False, True], ids=["delta-output", "delta-cumulative"])
def anthropic_server(request: pytest.FixtureRequest) -> Any:
    with cached_claude(cumulative_delta=request.param) as srv:
        yield srv


def _openai(srv: Any, **kw: Any) -> Any:
    return litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        api_base=srv.base_url,
        api_key="sk-test",
        metadata=META,
        **kw,
    )


def _claude(srv: Any, **kw: Any) -> Any:
    return litellm.completion(
        model=CLAUDE,
        messages=MESSAGES,
        api_base=srv.base_url,
        api_key="sk-ant-test",
        metadata=META,
        **kw,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_openai_basic(
    stripe_logger: Any, fake_stripe: Any, openai_server: Any, stream: bool
) -> None:
    meter, logger = stripe_logger()
    if stream:
        for _ in _openai(openai_server, stream=True, stream_options={"include_usage": True}):
            pass
    else:
        resp = _openai(openai_server)
        assert resp.model == "gpt-4o-2024-08-06"
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    # the provider's dated model name is normalised as Stripe's token meter does it
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 120),
        (CUS, "openai/gpt-4o", "output", 40),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_detailed(
    stripe_logger: Any, fake_stripe: Any, openai_server: Any, stream: bool
) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    if stream:
        for _ in _openai(openai_server, stream=True, stream_options={"include_usage": True}):
            pass
    else:
        _openai(openai_server)
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "cached_input", 20),
        (CUS, "openai/gpt-4o", "input", 100),
        (CUS, "openai/gpt-4o", "output", 32),
        (CUS, "openai/gpt-4o", "reasoning", 8),
    ]


def test_openai_stream_without_usage_option(
    stripe_logger: Any, fake_stripe: Any, openai_server: Any
) -> None:
    """Without `include_usage` the server sends no usage; LiteLLM's own count is billed, once."""
    meter, logger = stripe_logger()
    stream = _openai(openai_server, stream=True)
    for _ in stream:
        pass
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    events = event_tuples(fake_stripe)
    assert [(c, m, t) for c, m, t, _ in events] == [
        (CUS, "openai/gpt-4o", "input"),
        (CUS, "openai/gpt-4o", "output"),
    ]
    assert all(v > 0 for *_, v in events)
    assert logger.stats()["recorded"] == 1


def test_openai_async_stream(stripe_logger: Any, fake_stripe: Any, openai_server: Any) -> None:
    meter, logger = stripe_logger(token_types="detailed")

    async def main() -> None:
        stream = await litellm.acompletion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            api_base=openai_server.base_url,
            api_key="sk-test",
            stream=True,
            stream_options={"include_usage": True},
            metadata=META,
        )
        async for _ in stream:
            pass
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert sum(v for *_, v in event_tuples(fake_stripe)) == 160
    assert len(event_tuples(fake_stripe)) == 4


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_cache_tokens_basic(
    stripe_logger: Any, fake_stripe: Any, anthropic_server: Any, stream: bool
) -> None:
    meter, logger = stripe_logger()
    if stream:
        for _ in _claude(anthropic_server, stream=True):
            pass
    else:
        resp = _claude(anthropic_server)
        # what LiteLLM reports: prompt_tokens include cache reads and writes
        assert resp.usage.prompt_tokens == 50 + 200 + 300
        assert resp.usage.prompt_tokens_details.cached_tokens == 200
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    events = event_tuples(fake_stripe)
    assert events == [
        (CUS, "anthropic/claude-3.5-sonnet", "input", 550),
        (CUS, "anthropic/claude-3.5-sonnet", "output", 30),
    ]
    srv = anthropic_server
    assert sum(v for *_, v in events) == (
        srv.input_tokens
        + srv.cache_read_input_tokens
        + srv.cache_creation_input_tokens
        + srv.output_tokens
    )


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_cache_tokens_detailed(
    stripe_logger: Any, fake_stripe: Any, anthropic_server: Any, stream: bool
) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    if stream:
        for _ in _claude(anthropic_server, stream=True):
            pass
    else:
        _claude(anthropic_server)
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        (CUS, "anthropic/claude-3.5-sonnet", "cache_write", 300),
        (CUS, "anthropic/claude-3.5-sonnet", "cached_input", 200),
        (CUS, "anthropic/claude-3.5-sonnet", "input", 50),
        (CUS, "anthropic/claude-3.5-sonnet", "output", 30),
    ]


def test_anthropic_messages_api(
    stripe_logger: Any, fake_stripe: Any, anthropic_server: Any
) -> None:
    """`litellm.anthropic_messages` returns Anthropic's raw (exclusive) usage to the caller."""
    meter, logger = stripe_logger(token_types="detailed")

    async def main() -> None:
        resp = await litellm.anthropic_messages(
            model=CLAUDE,
            messages=MESSAGES,
            max_tokens=10,
            api_base=anthropic_server.base_url,
            api_key="sk-ant-test",
            metadata=META,
        )
        assert resp["usage"]["input_tokens"] == 50
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert sum(v for *_, v in event_tuples(fake_stripe)) == 50 + 200 + 300 + 30
    assert {t: v for _, _, t, v in event_tuples(fake_stripe)} == {
        "input": 50,
        "cached_input": 200,
        "cache_write": 300,
        "output": 30,
    }


def test_responses_api(stripe_logger: Any, fake_stripe: Any, anthropic_server: Any) -> None:
    """`litellm.responses()` (bridged to Anthropic's messages API) bills the same tokens.

    The Responses API's own `metadata` goes to the provider: LiteLLM's metadata (and so
    the customer) is `litellm_metadata=`, or a `meter.customer()` scope.
    """
    meter, logger = stripe_logger(token_types="detailed")
    resp = litellm.responses(
        model=CLAUDE,
        input="Say hello",
        api_base=anthropic_server.base_url,
        api_key="sk-ant-test",
        litellm_metadata=META,
    )
    assert resp.usage.input_tokens == 550
    with meter.customer("cus_P2"):
        litellm.responses(
            model=CLAUDE,
            input="Say hello",
            api_base=anthropic_server.base_url,
            api_key="sk-ant-test",
        )
    wait_stat(logger, "recorded", 2)
    assert meter.flush(5)
    model = "anthropic/claude-3.5-sonnet"
    assert event_tuples(fake_stripe) == [
        (cus, model, t, v)
        for cus in (CUS, "cus_P2")
        for t, v in (("cache_write", 300), ("cached_input", 200), ("input", 50), ("output", 30))
    ]


def test_embedding_bills_input_only(
    stripe_logger: Any, fake_stripe: Any, openai_server: Any
) -> None:
    meter, logger = stripe_logger(token_types="detailed")
    litellm.embedding(
        model="openai/text-embedding-3-small",
        input=["a", "b"],
        api_base=openai_server.base_url,
        api_key="sk-test",
        metadata=META,
    )
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    # the fake server names its own model in every response, as it would be billed
    assert [(c, t, v) for c, _, t, v in event_tuples(fake_stripe)] == [(CUS, "input", 120)]


def test_text_completion(stripe_logger: Any, fake_stripe: Any, openai_server: Any) -> None:
    meter, logger = stripe_logger()
    litellm.text_completion(
        model="openai/gpt-3.5-turbo-instruct",
        prompt="Say hello",
        api_base=openai_server.base_url,
        api_key="sk-test",
        metadata=META,
    )
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    # provider "text-completion-openai" is openai; the model is the one the server named
    assert event_tuples(fake_stripe) == [
        (CUS, "openai/gpt-4o", "input", 120),
        (CUS, "openai/gpt-4o", "output", 40),
    ]


def test_provider_error_is_not_billed(
    stripe_logger: Any, fake_stripe: Any, openai_server: Any
) -> None:
    meter, logger = stripe_logger()
    openai_server.fail_next = 10
    try:
        with pytest.raises(litellm.exceptions.InternalServerError):
            _openai(openai_server, num_retries=0, max_retries=0)
    finally:
        openai_server.fail_next = 0
    wait_stat(logger, "failures", 1)
    assert meter.flush(5)
    assert fake_stripe.events() == []


def test_router_retries_and_fallbacks_bill_only_the_answer(
    stripe_logger: Any, fake_stripe: Any
) -> None:
    """A Router over real HTTP: a failed attempt bills nothing, the answer bills once.

    Retried on the same deployment, or fallen back to another model (billed as the model
    that answered), sync and async, plain and streamed.
    """
    meter, logger = stripe_logger()
    with (
        OpenAIServer(prompt_tokens=100, completion_tokens=20) as main,
        OpenAIServer(
            model="gpt-4o-mini-2024-07-18", prompt_tokens=50, completion_tokens=5
        ) as spare,
    ):
        router = litellm.Router(
            model_list=[
                {
                    "model_name": "main",
                    "litellm_params": {
                        "model": "openai/gpt-4o",
                        "api_base": main.base_url,
                        "api_key": "sk-test",
                        "max_retries": 0,  # the Router retries, not the openai client
                    },
                },
                {
                    "model_name": "spare",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_base": spare.base_url,
                        "api_key": "sk-test",
                    },
                },
            ],
            fallbacks=[{"main": ["spare"]}],
            num_retries=1,
            retry_after=0,
        )
        usage_option = {"include_usage": True}

        def call(customer: str, fail: int, stream: bool = False) -> None:
            main.fail_next = fail
            resp = router.completion(
                model="main",
                messages=MESSAGES,
                metadata={"stripe_customer_id": customer},
                stream=stream,
                **({"stream_options": usage_option} if stream else {}),
            )
            if stream:
                for _ in resp:
                    pass

        async def acall(customer: str, fail: int, stream: bool = False) -> None:
            main.fail_next = fail
            resp = await router.acompletion(
                model="main",
                messages=MESSAGES,
                metadata={"stripe_customer_id": customer},
                stream=stream,
                **({"stream_options": usage_option} if stream else {}),
            )
            if stream:
                async for _ in resp:
                    pass

        call("cus_RA", fail=1)  # retried on main
        call("cus_RB", fail=10)  # main keeps failing: the spare answers
        call("cus_RC", fail=0, stream=True)

        async def main_() -> None:
            await acall("cus_RD", fail=1)
            await acall("cus_RE", fail=10)
            await acall("cus_RF", fail=1, stream=True)
            await drain_litellm()

        asyncio.run(main_())
        main.fail_next = 0
        wait_stat(logger, "recorded", 6)
    assert meter.flush(5)
    big = [("openai/gpt-4o", "input", 100), ("openai/gpt-4o", "output", 20)]
    small = [("openai/gpt-4o-mini", "input", 50), ("openai/gpt-4o-mini", "output", 5)]
    expected = {"cus_RA": big, "cus_RB": small, "cus_RC": big, "cus_RD": big}
    expected |= {"cus_RE": small, "cus_RF": big}
    assert event_tuples(fake_stripe) == sorted(
        (cus, *event) for cus, events in expected.items() for event in events
    )
    assert logger.stats()["recorded"] == 6
