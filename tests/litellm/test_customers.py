"""Who pays: metadata, `meter.customer()` scope, resolvers, defaults; what is not billed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger
from litellm_stripe import CallIdentity, StripeLogger, customer_from
from litellm_testkit import MESSAGES, drain_litellm, model_response, wait_stat, wait_until
from stripe_token_meter import ConfigurationError, InvalidCustomer, MissingCustomer
from support.events import event_tuples


def _call(**kw: Any) -> Any:
    return litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        mock_response=model_response(prompt=5, completion=1),
        **kw,
    )


def _customers(fake: Any) -> list[str]:
    return sorted({c for c, *_ in event_tuples(fake)})


# -- precedence ---------------------------------------------------------------------------


def _by(identity: CallIdentity) -> str | None:
    return "cus_RESOLVED" if identity.user == "alice" else None


@pytest.mark.parametrize(
    ("metadata", "scope", "user", "handler", "default", "expected"),
    [
        (
            {"stripe_customer_id": "cus_META"},
            "cus_SCOPE",
            "alice",
            "cus_HANDLER",
            "cus_DEFAULT",
            "cus_META",
        ),
        (None, "cus_SCOPE", "alice", "cus_HANDLER", "cus_DEFAULT", "cus_RESOLVED"),
        (None, "cus_SCOPE", "bob", "cus_HANDLER", "cus_DEFAULT", "cus_SCOPE"),
        (None, None, "alice", "cus_HANDLER", "cus_DEFAULT", "cus_RESOLVED"),
        (None, None, "bob", "cus_HANDLER", "cus_DEFAULT", "cus_HANDLER"),
        (None, None, "bob", None, "cus_DEFAULT", "cus_DEFAULT"),
    ],
)
def test_precedence(
    stripe_logger: Any,
    fake_stripe: Any,
    metadata: Any,
    scope: Any,
    user: str,
    handler: Any,
    default: Any,
    expected: str,
) -> None:
    meter, logger = stripe_logger(
        default_customer_id=default, logger={"customer_id": handler, "customer_resolver": _by}
    )
    kw: dict[str, Any] = {"user": user}
    if metadata is not None:
        kw["metadata"] = metadata
    if scope is None:
        _call(**kw)
    else:
        with meter.customer(scope):
            _call(**kw)
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert _customers(fake_stripe) == [expected]


def test_no_customer_is_dead_lettered(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger()
    _call()
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert meter.stats()["invalid"] == 1
    (code,) = meter._outbox._query("SELECT code FROM rejected")[0]
    assert code == MissingCustomer.code


def test_bad_metadata_customer_is_dead_lettered_not_rerouted(
    stripe_logger: Any, fake_stripe: Any
) -> None:
    """A malformed id in metadata never silently bills the scope's or default customer."""
    meter, logger = stripe_logger(default_customer_id="cus_DEFAULT")
    _call(metadata={"stripe_customer_id": "bob@example.com"})
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    (code,) = meter._outbox._query("SELECT code FROM rejected")[0]
    assert code == InvalidCustomer.code


def test_metadata_key_none_ignores_call_metadata(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(logger={"customer_id": "cus_HANDLER", "metadata_key": None})
    _call(metadata={"stripe_customer_id": "cus_FORGED"})
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_HANDLER"]


# -- meter.customer() scope across LiteLLM's threads and tasks -----------------------------


def test_scope_reaches_every_call_style(stripe_logger: Any, fake_stripe: Any) -> None:
    """Sync streams run their success callback on a pool thread without the caller's context:
    the scope is captured in `log_pre_api_call` (on the caller) and used there."""
    meter, logger = stripe_logger()
    with meter.customer("cus_SYNC"):
        _call()
    with meter.customer("cus_STREAM"):
        for _ in litellm.completion(
            model="openai/gpt-4o", messages=MESSAGES, mock_response=model_response(), stream=True
        ):
            pass

    async def main() -> None:
        with meter.customer("cus_ASYNC"):
            await litellm.acompletion(
                model="openai/gpt-4o", messages=MESSAGES, mock_response=model_response()
            )
        with meter.customer("cus_ASTREAM"):
            stream = await litellm.acompletion(
                model="openai/gpt-4o",
                messages=MESSAGES,
                mock_response=model_response(),
                stream=True,
            )
            async for _ in stream:
                pass
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 4)
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_ASTREAM", "cus_ASYNC", "cus_STREAM", "cus_SYNC"]
    assert logger.stats()["in_flight"] == 0


def test_concurrent_scopes_do_not_leak(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger()

    async def one(i: int) -> None:
        with meter.customer(f"cus_T{i}"):
            stream = await litellm.acompletion(
                model="openai/gpt-4o",
                messages=MESSAGES,
                mock_response=model_response(prompt=100 + i, completion=1),
                stream=True,
            )
            async for _ in stream:
                pass

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(10)))
        await drain_litellm()

    asyncio.run(main())
    wait_stat(logger, "recorded", 10)
    assert meter.flush(5)
    inputs = {c: v for c, _, t, v in event_tuples(fake_stripe) if t == "input"}
    assert inputs == {f"cus_T{i}": 100 + i for i in range(10)}


def test_scope_captured_when_success_runs_without_context(
    stripe_logger: Any, fake_stripe: Any
) -> None:
    """Replays what LiteLLM's atexit flush does: the success hook runs with no context."""
    meter, logger = stripe_logger(logger={"thread_fallback": False})
    seen: list[Any] = []

    class Capture(CustomLogger):
        def log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            seen.append((kwargs, response_obj, start_time, end_time))

    litellm.callbacks = [Capture()]
    with meter.customer("cus_CAPTURED"):
        logger.log_pre_api_call("gpt-4o", MESSAGES, {"litellm_call_id": "call-x"})
        _call()
    wait_until(lambda: len(seen) == 1)
    kwargs, response_obj, start, end = seen[0]
    kwargs = dict(kwargs, litellm_call_id="call-x")
    thread = threading.Thread(
        target=logger.log_success_event, args=(kwargs, response_obj, start, end)
    )
    thread.start()
    thread.join()
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_CAPTURED"]
    assert logger.stats()["in_flight"] == 0


# -- identity and ready-made resolvers ---------------------------------------------------------

PROXY_METADATA = {
    # what the LiteLLM proxy puts in a call's metadata from the authenticated virtual key
    "user_api_key_user_id": "internal-user-7",
    "user_api_key_team_id": "team-blue",
    "user_api_key_alias": "acme-prod",
    "user_api_key_metadata": {"stripe_customer_id": "cus_KEY"},
    "user_api_key_team_metadata": {"stripe_customer_id": "cus_TEAM"},
    "stripe_customer_id": "cus_CLIENT",  # the request's own metadata: client-controlled
}


def test_resolver_receives_the_call_identity(stripe_logger: Any, fake_stripe: Any) -> None:
    seen: list[CallIdentity] = []

    def resolver(identity: CallIdentity) -> str:
        seen.append(identity)
        return "cus_FROMRESOLVER"

    meter, logger = stripe_logger(logger={"customer_resolver": resolver, "metadata_key": None})
    _call(user="end-user-1", metadata=PROXY_METADATA)
    wait_stat(logger, "recorded", 1)
    (identity,) = seen
    assert identity.user == "end-user-1"
    assert identity.user_api_key_user_id == "internal-user-7"
    assert identity.user_api_key_team_id == "team-blue"
    assert identity.user_api_key_alias == "acme-prod"
    assert identity.key_metadata == {"stripe_customer_id": "cus_KEY"}
    assert identity.team_metadata == {"stripe_customer_id": "cus_TEAM"}
    assert identity.metadata["stripe_customer_id"] == "cus_CLIENT"
    assert identity.call_id
    with pytest.raises(AttributeError):
        identity.user = "mallory"  # type: ignore[misc]
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_FROMRESOLVER"]


@pytest.mark.parametrize(
    ("sources", "mapping", "expected"),
    [
        (("key_metadata",), None, "cus_KEY"),
        (("team_metadata",), None, "cus_TEAM"),
        (("team",), {"team-blue": "cus_BLUE"}, "cus_BLUE"),
        (("key_alias",), {"acme-prod": "cus_ACME"}, "cus_ACME"),
        (("user_api_key_user_id", "team"), {"team-blue": "cus_BLUE"}, "cus_BLUE"),  # first unmapped
        (("metadata",), None, "cus_CLIENT"),
        (("user",), {"end-user-1": "cus_END"}, "cus_END"),
    ],
)
def test_customer_from(
    stripe_logger: Any, fake_stripe: Any, sources: tuple[str, ...], mapping: Any, expected: str
) -> None:
    resolver = customer_from(*sources, customer_map=mapping, trust_client_fields=True)
    meter, logger = stripe_logger(logger={"customer_resolver": resolver, "metadata_key": None})
    _call(user="end-user-1", metadata=PROXY_METADATA)
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert _customers(fake_stripe) == [expected]


def test_customer_from_makes_trust_explicit() -> None:
    for source in ("metadata", "end_user", "user"):
        with pytest.raises(ConfigurationError, match="supplied by the caller"):
            customer_from("key_metadata", source)
    with pytest.raises(ConfigurationError, match="unknown source"):
        customer_from("team_idd")
    with pytest.raises(ConfigurationError):
        customer_from()
    resolve = customer_from("key_alias", customer_map={"acme-prod": "cus_ACME"})
    assert resolve(CallIdentity(user_api_key_alias="acme-prod")) == "cus_ACME"
    assert resolve(CallIdentity(user_api_key_alias="unknown")) is None
    assert resolve(CallIdentity()) is None


def test_resolver_error_is_counted_and_falls_back(stripe_logger: Any, fake_stripe: Any) -> None:
    def broken(identity: CallIdentity) -> str:
        raise RuntimeError("directory down")

    meter, logger = stripe_logger(
        logger={"customer_id": "cus_HANDLER", "customer_resolver": broken}
    )
    _call()
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert _customers(fake_stripe) == ["cus_HANDLER"]
    assert meter.stats()["adapter_errors"] == 1


# -- what is not billed ------------------------------------------------------------------------


def _captured_call(
    meter: Any, logger: StripeLogger, **kw: Any
) -> tuple[dict[str, Any], Any, Any, Any]:
    """A real success callback's arguments, with our logger not installed."""
    seen: list[Any] = []

    class Capture(CustomLogger):
        def log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            seen.append((kwargs, response_obj, start_time, end_time))

    litellm.callbacks = [Capture()]
    _call(**kw)
    wait_until(lambda: len(seen) == 1)
    litellm.callbacks = []
    result: tuple[dict[str, Any], Any, Any, Any] = seen[0]
    return result


def _as_cache_hit(kwargs: dict[str, Any]) -> dict[str, Any]:
    slo = dict(kwargs["standard_logging_object"], cache_hit=True)
    slo["id"] = f"{slo['id']}_cache_hit1700000000.0"  # as LiteLLM stamps a cache hit's id
    return dict(kwargs, cache_hit=True, standard_logging_object=slo)


@pytest.mark.parametrize("bill", [False, True])
def test_cache_hits(stripe_logger: Any, fake_stripe: Any, bill: bool) -> None:
    meter, logger = stripe_logger(logger={"bill_cache_hits": bill})
    kwargs, response_obj, start, end = _captured_call(
        meter, logger, metadata={"stripe_customer_id": "cus_H"}
    )
    logger.log_success_event(_as_cache_hit(kwargs), response_obj, start, end)
    asyncio.run(logger.async_log_success_event(_as_cache_hit(kwargs), response_obj, start, end))
    assert meter.flush(5)
    if bill:
        assert event_tuples(fake_stripe) == [
            ("cus_H", "openai/gpt-4o", "input", 5),
            ("cus_H", "openai/gpt-4o", "output", 1),
        ]
    else:
        assert fake_stripe.events() == []
        assert logger.stats()["cache_hits"] == 2


def test_reads_of_stored_objects_are_not_billed(stripe_logger: Any, fake_stripe: Any) -> None:
    """`get_responses` returns the usage of the call that created the response: never rebill."""
    meter, logger = stripe_logger()
    kwargs, response_obj, start, end = _captured_call(
        meter, logger, metadata={"stripe_customer_id": "cus_H"}
    )
    slo = dict(kwargs["standard_logging_object"], call_type="aget_responses")
    logger.log_success_event(
        dict(kwargs, call_type="aget_responses", standard_logging_object=slo),
        response_obj,
        start,
        end,
    )
    assert meter.flush(5)
    assert fake_stripe.events() == []
    assert logger.stats()["skipped"] == 1


# -- never raises, bounded memory, dimensions -----------------------------------------------------


class _Exploding:
    @property
    def usage(self) -> Any:
        raise RuntimeError("boom")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("boom")


def test_never_raises_into_litellm(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(default_customer_id="cus_D")
    weird: list[tuple[Any, Any]] = [
        (None, None),
        ("not a dict", object()),
        ({"standard_logging_object": 5, "litellm_params": "x"}, _Exploding()),
        (
            {"standard_logging_object": {"id": "x1"}, "litellm_call_id": 3},
            {"usage": {"prompt_tokens": "many"}},
        ),
        (
            {"standard_logging_object": {"id": "x2", "model": "m"}, "litellm_call_id": "c2"},
            {"usage": {"prompt_tokens": -5}},
        ),
    ]
    for kwargs, resp in weird:
        logger.log_success_event(kwargs, resp, None, None)
        asyncio.run(logger.async_log_success_event(kwargs, resp, None, None))
        logger.log_failure_event(kwargs, resp, None, None)
        logger.log_pre_api_call(None, None, kwargs)
    assert meter.flush(5)
    assert fake_stripe.events() == []
    stats = meter.stats()
    assert stats["adapter_errors"] >= 1
    assert stats["invalid"] == 2  # bad counts are dead-lettered with their reason


def test_strict_meter_raises(stripe_logger: Any) -> None:
    _meter, logger = stripe_logger(strict=True)
    with pytest.raises(TypeError):
        logger.log_success_event(None, None, None, None)
    with pytest.raises(MissingCustomer):
        logger.log_success_event(
            {"standard_logging_object": {"id": "s1", "model": "gpt-4o"}},
            {"usage": {"prompt_tokens": 1, "completion_tokens": 1}},
            None,
            None,
        )


def test_dedupe_and_scope_memory_is_bounded(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(default_customer_id="cus_D", logger={"max_tracked": 3})
    for i in range(10):
        with meter.customer("cus_S"):
            logger.log_pre_api_call("m", [], {"litellm_call_id": f"never-finished-{i}"})
        kwargs = {
            "litellm_call_id": f"call-{i}",
            "standard_logging_object": {
                "id": f"r{i}",
                "model": "gpt-4o",
                "custom_llm_provider": "openai",
            },
        }
        logger.log_success_event(
            kwargs, {"usage": {"prompt_tokens": 1, "completion_tokens": 0}}, None, None
        )
    assert logger.stats()["in_flight"] == 3
    assert len(logger._billed) == 3
    assert meter.flush(5)
    assert len(fake_stripe.events()) == 10


def test_dimensions(stripe_logger: Any, fake_stripe: Any) -> None:
    meter, logger = stripe_logger(logger={"dimensions": {"region": "eu"}})
    _call(metadata={"stripe_customer_id": "cus_DIM", "stripe_dimensions": {"feature": "chat"}})
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    payloads = [e.payload for e in fake_stripe.events()]
    assert {(p["region"], p["feature"]) for p in payloads} == {("eu", "chat")}
    with pytest.raises(ValueError):
        StripeLogger(meter, dimensions={"model": "x"})
    with pytest.raises(ValueError):
        StripeLogger(meter, customer_id="not-a-customer")
