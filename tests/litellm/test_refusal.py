"""A guarded meter refuses LiteLLM calls before the HTTP request: async SDK, Router, proxy.

The real OpenAI provider path of LiteLLM talks to a local OpenAI-compatible server, so
its request count is what the provider saw. The guard is a small real ledger (a dict of
remaining budget). LiteLLM has no hook that can refuse a *sync* `completion()`; the last
test pins that, so a LiteLLM that adds one is noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm_stripe import StripeLogger
from litellm_testkit import MESSAGES, drain_litellm, proxy_process, wait_stat, wait_until
from stripe_token_meter import CreditExhausted
from support.events import event_tuples
from support.guards import Budget
from support.providers import OpenAIServer

RICH, BROKE = "cus_rich", "cus_broke"
MODEL = "openai/gpt-4o"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(model="gpt-4o-2024-08-06", prompt_tokens=100, completion_tokens=20) as srv:
        yield srv


@pytest.fixture
def guard() -> Budget:
    return Budget({RICH: Decimal("5"), BROKE: Decimal("0")})


def _kw(srv: OpenAIServer, customer: str | None, **extra: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        model=MODEL, messages=MESSAGES, api_base=srv.base_url, api_key="sk-x", **extra
    )
    if customer is not None:
        kw["metadata"] = {"stripe_customer_id": customer}
    return kw


def _billed(customer: str, n: int = 1) -> list[tuple[str, str, str, int]]:
    return sorted([(customer, MODEL, "input", 100), (customer, MODEL, "output", 20)] * n)


def test_refused_acompletion_and_stream_make_no_request(
    stripe_logger: Any, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter, logger = stripe_logger(guard=guard)

    async def main() -> None:
        with pytest.raises(CreditExhausted) as err:
            await litellm.acompletion(**_kw(server, BROKE))
        assert err.value.customer_id == BROKE
        with pytest.raises(CreditExhausted):
            await litellm.acompletion(**_kw(server, BROKE, stream=True))
        with meter.customer(BROKE), pytest.raises(CreditExhausted):  # a scope, no metadata
            await litellm.acompletion(**_kw(server, None))
        await drain_litellm()

    asyncio.run(main())
    assert server.requests == []
    assert guard.asked == [(BROKE, MODEL)] * 3
    assert logger.stats()["holds"] == 0 and logger.stats()["recorded"] == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []


def test_allowed_calls_bill_and_release_holds(
    stripe_logger: Any, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter, logger = stripe_logger(guard=guard, logger={"customer_id": RICH})

    async def main() -> None:
        await litellm.acompletion(**_kw(server, None))  # the logger's customer
        stream = await litellm.acompletion(
            **_kw(server, RICH, stream=True, stream_options={"include_usage": True})
        )
        async for _ in stream:
            pass
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 2)
    wait_until(lambda: guard.released == 2, what="holds released")
    assert len(server.requests) == 2
    assert guard.asked == [(RICH, MODEL)] * 2
    assert logger.stats()["holds"] == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH, 2)


def test_hold_released_when_the_provider_fails(
    stripe_logger: Any, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter, logger = stripe_logger(guard=guard)
    server.fail_next = 1

    async def main() -> None:
        with pytest.raises(litellm.InternalServerError):
            await litellm.acompletion(**_kw(server, RICH, max_retries=0))
        await drain_litellm()

    asyncio.run(main())
    wait_until(lambda: guard.released == 1, what="hold released")
    assert len(server.requests) == 1
    assert logger.stats()["holds"] == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == []


def test_router_async_refuses_and_bills(
    stripe_logger: Any, fake_stripe: Any, server: OpenAIServer, guard: Budget
) -> None:
    meter, logger = stripe_logger(guard=guard)
    router = litellm.Router(
        model_list=[
            {
                "model_name": "my-gpt",
                "litellm_params": {"model": MODEL, "api_base": server.base_url, "api_key": "sk"},
            }
        ],
    )  # default retries: a refusal is not retried (402)

    async def main() -> None:
        with pytest.raises(CreditExhausted) as err:
            await router.acompletion(
                model="my-gpt", messages=MESSAGES, metadata={"stripe_customer_id": BROKE}
            )
        assert err.value.customer_id == BROKE
        assert getattr(err.value, "status_code", None) == 402
        await router.acompletion(
            model="my-gpt", messages=MESSAGES, metadata={"stripe_customer_id": RICH}
        )
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    wait_until(lambda: guard.released == 1, what="hold released")
    assert len(server.requests) == 1
    assert guard.asked == [(BROKE, MODEL), (RICH, MODEL)]
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH)


def test_other_guard_errors_are_contained(
    stripe_logger: Any, fake_stripe: Any, server: OpenAIServer
) -> None:
    class Broken:
        def reserve(self, customer_id: str, model: str | None) -> None:
            raise RuntimeError("ledger down")

    meter, logger = stripe_logger(guard=Broken())

    async def main() -> None:
        await litellm.acompletion(**_kw(server, RICH))
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert len(server.requests) == 1
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(RICH)
    assert meter.stats()["adapter_errors"] == 1


def test_no_guard_is_unchanged(stripe_logger: Any, fake_stripe: Any, server: OpenAIServer) -> None:
    meter, logger = stripe_logger()
    assert type(logger) is StripeLogger  # no pre-call hook overridden: LiteLLM's usual path

    async def main() -> None:
        await litellm.acompletion(**_kw(server, BROKE))
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 1)
    assert logger.stats()["holds"] == 0
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _billed(BROKE)


def test_lost_ends_cannot_leak_holds(stripe_logger: Any, guard: Budget) -> None:
    _meter, logger = stripe_logger(guard=guard, logger={"max_tracked": 2})

    async def main() -> None:
        for n in range(4):  # reserved, never answered
            await logger.async_pre_call_deployment_hook(
                {
                    "model": MODEL,
                    "litellm_call_id": f"c{n}",
                    "metadata": {"stripe_customer_id": RICH},
                },
                "acompletion",
            )

    asyncio.run(main())
    assert logger.stats()["holds"] == 2
    assert guard.released == 2


def test_sync_completion_cannot_be_refused_by_a_callback(
    stripe_logger: Any, server: OpenAIServer, guard: Budget
) -> None:
    # LiteLLM 1.110 runs no refusing hook for sync calls (log_pre_api_call's errors are
    # swallowed): the call is made. Documented; apps check `meter.before_call()` themselves.
    stripe_logger(guard=guard)
    litellm.completion(**_kw(server, BROKE))
    assert len(server.requests) == 1
    assert guard.asked == []


# -- the real proxy ---------------------------------------------------------------------

PRICES = '{"prices": {"openai/gpt-4o": {"input": "2.50", "output": "10.00"}}, "markup_percent": 20}'


@pytest.mark.timeout(300)
def test_proxy_answers_402_and_never_calls_the_provider(
    fake_stripe: Any, server: OpenAIServer, tmp_path: Path
) -> None:
    """The proxy as operators deploy it: `litellm_stripe.proxy_logger`, configured by env."""
    import openai

    (tmp_path / "prices.json").write_text(PRICES)
    fake_stripe.create_meter("token-billing-cost")
    env = dict(
        STRIPE_API_KEY="sk_test_fake",
        STRIPE_API_BASE=fake_stripe.url,
        STRIPE_TOKEN_METER_OUTBOX=str(tmp_path / "outbox.sqlite3"),
        STRIPE_CUSTOMER_SOURCE="metadata",
        STRIPE_TRUST_CLIENT_FIELDS="true",
        STRIPE_PRICING=str(tmp_path / "prices.json"),
        STRIPE_CREDIT_GUARD=f'{{"{RICH}": "5.00", "{BROKE}": "0"}}',
    )
    with proxy_process(tmp_path, server.base_url, env) as (_proc, client):

        def ask(customer: str) -> Any:
            return client.chat.completions.create(
                model="my-gpt",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"metadata": {"stripe_customer_id": customer}},
            )

        with pytest.raises(openai.APIStatusError) as err:
            ask(BROKE)
        assert err.value.status_code == 402, (tmp_path / "proxy.log").read_text()[-3000:]
        assert f"customer {BROKE} has no credit left" in str(err.value)
        assert server.requests == []
        assert ask(RICH).choices[0].message.content == server.text
        assert len(server.requests) == 1
    from stripe_token_meter import TokenMeter

    meter = TokenMeter(
        api_key="sk_test_fake", api_base=fake_stripe.url, outbox_path=tmp_path / "outbox.sqlite3"
    )
    assert meter.flush(30)
    meter.close()
    tokens = [e for e in fake_stripe.events() if e.event_name == "token-billing-tokens"]
    assert sorted((e.customer, e.payload["model"], e.payload["token_type"], e.value)
                  for e in tokens) == _billed(RICH)  # fmt: skip
    costs = [e for e in fake_stripe.events() if e.event_name == "token-billing-cost"]
    # (100 x 2.50 + 20 x 10.00) micro-dollars, +20 %
    assert [(e.customer, e.payload["model"], e.value) for e in costs] == [(RICH, MODEL, 540)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRIPE_CREDIT_GUARD": "stripe"}, "STRIPE_CREDIT_GUARD: needs STRIPE_PRICING"),
        ({"STRIPE_PRICING": "litellm", "STRIPE_CREDIT_GUARD": "[1]"}, "a JSON object"),
        ({"STRIPE_PRICING": "litellm", "STRIPE_CREDIT_GUARD": "{"}, "STRIPE_CREDIT_GUARD"),
        (
            {"STRIPE_PRICING": "litellm", "STRIPE_CREDIT_GUARD": "stripe",
             "STRIPE_CREDIT_ON_UNAVAILABLE": "maybe"},
            "STRIPE_CREDIT_ON_UNAVAILABLE: expected allow or deny",
        ),
        ({"STRIPE_MARKUP_PERCENT": "20"}, "STRIPE_MARKUP_PERCENT: set STRIPE_PRICING=litellm"),
    ],
)  # fmt: skip
def test_proxy_env_errors_name_the_variable(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    from litellm_stripe._proxy import logger_from_env
    from stripe_token_meter import ConfigurationError

    env = {"STRIPE_TOKEN_METER_OUTBOX": str(tmp_path / "o.sqlite3"), **env}
    with pytest.raises(ConfigurationError, match=message):
        logger_from_env(env)


def test_proxy_env_builds_a_priced_guarded_meter(tmp_path: Path) -> None:
    from litellm_stripe._proxy import logger_from_env

    logger = logger_from_env(
        {
            "STRIPE_TOKEN_METER_OUTBOX": str(tmp_path / "o.sqlite3"),
            "STRIPE_PRICING": "litellm",
            "STRIPE_MARKUP_PERCENT": "20",
            "STRIPE_CREDIT_GUARD": f'{{"{BROKE}": "0"}}',
        }
    )
    meter = logger.meter
    try:
        assert meter.guarded and meter.pricing is not None
        assert meter.pricing.cost_micros(MODEL, input_tokens=1234, output_tokens=567) == 10_506
        with pytest.raises(CreditExhausted):
            meter.before_call(BROKE, model=MODEL)
    finally:
        meter.close()
