"""Calls are told apart by LiteLLM's own `litellm_call_id`, never by the provider's response id.

Ollama's OpenAI-compatible server answers `chatcmpl-<0..999>`, and servers and proxies
repeat ids: a local server here answers the same id to every call, which must still bill
every call once, each to its own customer with its own counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest
from litellm_testkit import MESSAGES, drain_litellm, wait_stat
from support.events import event_tuples
from support.providers import OpenAIServer

SAME_ID = "chatcmpl-7"


@pytest.fixture
def same_id_server() -> Any:
    with OpenAIServer(response_id=SAME_ID, completion_tokens=5) as srv:
        yield srv


def test_same_response_id_every_call_billed_once(
    stripe_logger: Any, fake_stripe: Any, same_id_server: Any
) -> None:
    meter, logger = stripe_logger()
    srv = same_id_server
    kw: dict[str, Any] = {
        "model": "openai/gpt-4o",
        "messages": MESSAGES,
        "api_base": srv.base_url,
        "api_key": "sk-test",
    }
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    # (prompt tokens, customer, how): each call its own count, two customers
    plan = [
        (11, "cus_A", "sync"),
        (12, "cus_B", "sync"),
        (13, "cus_A", "async"),
        (14, "cus_B", "async"),
        (15, "cus_A", "sync-stream"),
        (16, "cus_B", "async-stream"),
        (17, "cus_B", "sync"),
    ]
    ids: list[str] = []

    async def acall(how: str, meta: dict[str, str]) -> None:
        if how == "async":
            r = await litellm.acompletion(**kw, metadata=meta)
            ids.append(r.id)
        else:
            async for chunk in await litellm.acompletion(**kw, metadata=meta, **stream):
                ids.append(chunk.id)
        await drain_litellm()

    for n, (prompt, customer, how) in enumerate(plan, start=1):
        srv.prompt_tokens = prompt
        meta = {"stripe_customer_id": customer}
        if how == "sync":
            ids.append(litellm.completion(**kw, metadata=meta).id)
        elif how == "sync-stream":
            ids.extend(c.id for c in litellm.completion(**kw, metadata=meta, **stream))
        else:
            asyncio.run(acall(how, meta))
        wait_stat(logger, "recorded", n)  # in order: each call's count is the server's now

    assert set(ids) == {SAME_ID}
    assert len(srv.requests) == len(plan)
    assert logger.flush(10)
    assert event_tuples(fake_stripe) == sorted(
        [(c, "openai/gpt-4o", "input", p) for p, c, _ in plan]
        + [(c, "openai/gpt-4o", "output", 5) for _, c, _ in plan]
    )
    assert len(set(fake_stripe.identifiers())) == 2 * len(plan)
    assert not any(SAME_ID in i for i in fake_stripe.identifiers())
    stats = logger.stats()
    assert (stats["recorded"], stats["duplicates"], stats["failures"]) == (len(plan), 0, 0)
    # LiteLLM reports sync calls twice (to the logger and its thread path): billed once
    assert stats["repeat_callbacks"] >= 3
    assert meter.stats()["duplicates"] == 0


def test_reused_call_id_is_still_billed(
    stripe_logger: Any, fake_stripe: Any, same_id_server: Any
) -> None:
    """The proxy takes `litellm_call_id` from the client's `x-litellm-call-id`: a client
    resending one must not get its later calls for free."""
    meter, logger = stripe_logger()
    srv = same_id_server
    for n, prompt in enumerate((21, 22), start=1):
        srv.prompt_tokens = prompt
        litellm.completion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            api_base=srv.base_url,
            api_key="sk-test",
            metadata={"stripe_customer_id": "cus_R"},
            litellm_call_id="client-chosen-id",
        )
        wait_stat(logger, "recorded", n)
    assert logger.flush(10)
    assert event_tuples(fake_stripe) == [
        ("cus_R", "openai/gpt-4o", "input", 21),
        ("cus_R", "openai/gpt-4o", "input", 22),
        ("cus_R", "openai/gpt-4o", "output", 5),
        ("cus_R", "openai/gpt-4o", "output", 5),
    ]
    firsts = {i for i in fake_stripe.identifiers() if i.startswith("client-chosen-id:")}
    assert firsts == {
        "client-chosen-id:input:token-billing-tokens",
        "client-chosen-id:output:token-billing-tokens",
    }
    assert len(set(fake_stripe.identifiers())) == 4
    assert (logger.stats()["recorded"], logger.stats()["duplicates"]) == (2, 1)
    assert meter.stats()["duplicates"] == 0
