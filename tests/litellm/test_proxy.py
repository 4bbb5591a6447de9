"""`litellm_stripe.proxy_logger`, resolved the way the LiteLLM proxy resolves config callbacks."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import litellm_stripe
import pytest
import yaml
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy.common_utils.callback_utils import _loaded_callback_or_raise
from litellm.proxy.types_utils.utils import get_instance_fn
from litellm_stripe import StripeLogger, _proxy, logger_from_env
from litellm_testkit import MESSAGES, model_response, wait_stat
from stripe_token_meter import ConfigurationError
from support.events import event_tuples

README = Path(litellm_stripe.__file__).resolve().parents[2] / "README.md"
ENV_VARS = [
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "STRIPE_METER_EVENT_NAME",
    "STRIPE_TOKEN_TYPES",
    "STRIPE_TOKEN_METER_OUTBOX",
    "STRIPE_METER_API",
    "STRIPE_CUSTOMER_SOURCE",
    "STRIPE_CUSTOMER_MAP",
    "STRIPE_TRUST_CLIENT_FIELDS",
    "STRIPE_DEFAULT_CUSTOMER_ID",
    "STRIPE_BILL_CACHE_HITS",
]


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_stripe: Any) -> Iterator[Any]:
    """A clean environment pointing the proxy logger at FakeStripe; no logger built yet."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    fake_stripe.create_meter("llm-tokens")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_fake")
    monkeypatch.setenv("STRIPE_API_BASE", fake_stripe.url)
    monkeypatch.setenv("STRIPE_METER_EVENT_NAME", "llm-tokens")
    monkeypatch.setenv("STRIPE_TOKEN_TYPES", "detailed")
    monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(tmp_path / "proxy-outbox.sqlite3"))
    monkeypatch.setattr(_proxy, "_instance", None)
    yield monkeypatch
    built = _proxy._instance
    if built is not None:
        built.meter.close(timeout=2.0)


def _config_callbacks() -> list[str]:
    """`litellm_settings.callbacks` of the README's config.yaml."""
    (block,) = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    callbacks = yaml.safe_load(block)["litellm_settings"]["callbacks"]
    return [callbacks] if isinstance(callbacks, str) else list(callbacks)


def _resolve(entry: str, config: Path) -> Any:
    """What `initialize_callbacks_on_proxy` does with a dotted-path callback entry."""
    return _loaded_callback_or_raise(entry=entry, loaded=get_instance_fn(entry, str(config)))


def test_importing_the_package_builds_nothing(proxy_env: Any, tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    exec("from litellm_stripe import *", ns)
    assert "proxy_logger" not in ns
    assert "proxy_logger" not in vars(litellm_stripe)
    assert _proxy._instance is None
    assert not (tmp_path / "proxy-outbox.sqlite3").exists()


def test_config_entry_resolves_to_one_logger_instance(
    proxy_env: Any, fake_stripe: Any, tmp_path: Path
) -> None:
    (entry,) = _config_callbacks()
    assert entry == "litellm_stripe.proxy_logger"
    config = tmp_path / "config.yaml"
    config.write_text("litellm_settings: {}\n")
    logger = _resolve(entry, config)
    assert isinstance(logger, StripeLogger) and isinstance(logger, CustomLogger)
    assert _resolve(entry, config) is logger  # one meter per process
    assert litellm_stripe.proxy_logger is logger
    meter = logger.meter
    assert (meter.event_name, meter.token_types, meter.local) == ("llm-tokens", "detailed", False)

    litellm.callbacks = [logger]
    # what the proxy puts in a call's metadata for a key whose admin-set metadata names
    # the customer; the request's own `stripe_customer_id` is the caller's and is ignored
    metadata = {
        "user_api_key_metadata": {"stripe_customer_id": "cus_KEY"},
        "user_api_key_team_metadata": {},
        "stripe_customer_id": "cus_FORGED",
    }
    litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        mock_response=model_response(prompt=40, completion=10, cached=15),
        metadata=metadata,
    )
    wait_stat(logger, "recorded", 1)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_KEY", "openai/gpt-4o", "cached_input", 15),
        ("cus_KEY", "openai/gpt-4o", "input", 25),
        ("cus_KEY", "openai/gpt-4o", "output", 10),
    ]
    assert {e.event_name for e in fake_stripe.events()} == {"llm-tokens"}


def test_sources_and_map_from_env(proxy_env: Any, fake_stripe: Any) -> None:
    proxy_env.setenv("STRIPE_CUSTOMER_SOURCE", "user_api_key_user_id, team")
    proxy_env.setenv("STRIPE_CUSTOMER_MAP", '{"team-blue": "cus_Blue1"}')
    proxy_env.setenv("STRIPE_DEFAULT_CUSTOMER_ID", "cus_Default1")
    logger = litellm_stripe.proxy_logger
    litellm.callbacks = [logger]
    litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        mock_response=model_response(prompt=3, completion=1),
        metadata={"user_api_key_user_id": "u-1", "user_api_key_team_id": "team-blue"},
    )
    litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        mock_response=model_response(prompt=5, completion=1),
        metadata={"user_api_key_team_id": "team-red"},
    )
    wait_stat(logger, "recorded", 2)
    assert logger.meter.flush(5)
    inputs = {c: v for c, _, t, v in event_tuples(fake_stripe) if t == "input"}
    assert inputs == {"cus_Blue1": 3, "cus_Default1": 5}


def test_client_supplied_sources_need_explicit_trust(proxy_env: Any) -> None:
    proxy_env.setenv("STRIPE_CUSTOMER_SOURCE", "key_metadata,user")
    with pytest.raises(ConfigurationError, match="STRIPE_TRUST_CLIENT_FIELDS"):
        _ = litellm_stripe.proxy_logger
    assert _proxy._instance is None
    proxy_env.setenv("STRIPE_TRUST_CLIENT_FIELDS", "true")
    assert isinstance(litellm_stripe.proxy_logger, StripeLogger)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STRIPE_CUSTOMER_SOURCE", "key_metadata,teams", "unknown source"),
        ("STRIPE_TOKEN_TYPES", "detail", "STRIPE_TOKEN_TYPES"),
        ("STRIPE_METER_API", "v3", "STRIPE_METER_API"),
        ("STRIPE_CUSTOMER_MAP", "{not json", "STRIPE_CUSTOMER_MAP"),
        ("STRIPE_CUSTOMER_MAP", '["cus_1"]', "STRIPE_CUSTOMER_MAP"),
        ("STRIPE_BILL_CACHE_HITS", "maybe", "STRIPE_BILL_CACHE_HITS"),
        ("STRIPE_API_KEY", "pk_test_123", "publishable"),
        ("STRIPE_DEFAULT_CUSTOMER_ID", "acme", "Stripe customer id"),
    ],
)
def test_bad_settings_fail_at_start(proxy_env: Any, name: str, value: str, message: str) -> None:
    proxy_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        _ = litellm_stripe.proxy_logger
    assert _proxy._instance is None


def test_logger_from_env_mapping(tmp_path: Path) -> None:
    logger = logger_from_env(
        {
            "STRIPE_CUSTOMER_SOURCE": "key_alias",
            "STRIPE_CUSTOMER_MAP": '{"acme-prod": "cus_Acme1"}',
            "STRIPE_BILL_CACHE_HITS": "true",
            "STRIPE_TOKEN_METER_OUTBOX": str(tmp_path / "o.sqlite3"),
        }
    )
    try:
        assert logger.bill_cache_hits is True
        assert logger.metadata_key is None  # the request's metadata is never trusted by default
        assert logger.customer_resolver is not None
        assert (
            logger.customer_resolver(litellm_stripe.CallIdentity(user_api_key_alias="acme-prod"))
            == "cus_Acme1"
        )
    finally:
        logger.meter.close(timeout=1.0)


def test_unknown_attribute_still_raises() -> None:
    with pytest.raises(AttributeError):
        _ = litellm_stripe.no_such_thing  # type: ignore[attr-defined]


# -- what the proxy hands the callback ------------------------------------------------------
# The proxy (`litellm --config`) needs litellm[proxy] (fastapi, a database for virtual
# keys), which this workspace does not install. So these tests run what the proxy runs for
# a request: its Router over the config's model_list, the metadata it adds from the
# virtual key (`litellm_pre_call_utils.add_litellm_data_to_request`: user_api_key_metadata,
# user_api_key_team_metadata, user_api_key_alias, user_api_key_team_id), then the rewrite
# of `response.model` to the name the client asked for
# (`common_request_processing._override_openai_response_model`), before LiteLLM's logging
# worker runs the callbacks, as it does in the proxy.


@contextlib.contextmanager
def _servers() -> Iterator[tuple[Any, Any, Any]]:
    """The deployments' providers: chat (answers gpt-4o-2024-08-06), Claude, embeddings."""
    from support.providers import AnthropicServer, OpenAIServer

    with (
        OpenAIServer(prompt_tokens=40, completion_tokens=10) as chat,
        AnthropicServer() as claude,
        OpenAIServer(model="text-embedding-3-small", prompt_tokens=7) as emb,
    ):
        yield chat, claude, emb


def _key_metadata(key: dict[str, str], team: dict[str, str]) -> dict[str, Any]:
    return {
        "user_api_key_metadata": key,
        "user_api_key_team_metadata": team,
        "user_api_key_alias": "acme-prod",
        "user_api_key_team_id": "team-acme",
        "stripe_customer_id": "cus_FORGED",  # the caller's own metadata: ignored
    }


def _proxy_calls(servers: tuple[Any, Any, Any], metadata: dict[str, Any]) -> None:
    from litellm_testkit import drain_litellm

    openai_url, anthropic_url, embedding_url = (s.base_url for s in servers)

    router = litellm.Router(
        model_list=[
            {
                "model_name": "my-gpt",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": openai_url,
                    "api_key": "sk",
                },
            },
            {
                "model_name": "my-claude",
                "litellm_params": {
                    "model": "anthropic/claude-3-5-sonnet-20241022",
                    "api_base": anthropic_url,
                    "api_key": "sk-ant",
                },
            },
            {
                "model_name": "my-emb",
                "litellm_params": {
                    "model": "openai/text-embedding-3-small",
                    "api_base": embedding_url,
                    "api_key": "sk",
                },
            },
        ]
    )

    async def main() -> None:
        for alias in ("my-gpt", "my-claude"):
            resp = await router.acompletion(model=alias, messages=MESSAGES, metadata=dict(metadata))
            resp.model = alias  # the proxy's _override_openai_response_model
        emb = await router.aembedding(model="my-emb", input=["hello"], metadata=dict(metadata))
        emb.model = "my-emb"
        await drain_litellm()

    import asyncio

    asyncio.run(main())


def test_proxy_bills_the_deployment_model_not_the_alias(proxy_env: Any, fake_stripe: Any) -> None:
    logger = litellm_stripe.proxy_logger
    litellm.callbacks = [logger]
    with _servers() as servers:
        _proxy_calls(servers, _key_metadata({"stripe_customer_id": "cus_KEY"}, {}))
    wait_stat(logger, "recorded", 3)
    assert logger.meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_KEY", "anthropic/claude-3.5-sonnet", "input", 50),
        ("cus_KEY", "anthropic/claude-3.5-sonnet", "output", 30),
        ("cus_KEY", "openai/gpt-4o", "input", 40),
        ("cus_KEY", "openai/gpt-4o", "output", 10),
        ("cus_KEY", "openai/text-embedding-3-small", "input", 7),
    ]


def test_proxy_customer_from_team_and_missing_customer_warning(
    proxy_env: Any, fake_stripe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = litellm_stripe.proxy_logger
    litellm.callbacks = [logger]
    with _servers() as servers:
        _proxy_calls(servers, _key_metadata({}, {"stripe_customer_id": "cus_TEAM"}))
        wait_stat(logger, "recorded", 3)
        assert logger.meter.flush(5)
        assert {c for c, _, _, _ in event_tuples(fake_stripe)} == {"cus_TEAM"}
        caplog.clear()
        _proxy_calls(servers, _key_metadata({}, {}))
    wait_stat(logger, "recorded", 6)
    assert logger.meter.flush(5)
    assert logger.meter.stats()["invalid"] == 3  # dead-lettered as missing_customer
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "litellm_stripe"]
    assert "key alias 'acme-prod', team 'team-acme'" in warning
    for source in ("/key/generate", "/team/update", '"stripe_customer_id": "cus_..."'):
        assert source in warning
    assert "STRIPE_DEFAULT_CUSTOMER_ID" in warning


@pytest.mark.parametrize("with_key", [True, False], ids=["stripe", "local-ledger"])
def test_proxy_says_once_where_events_go(
    proxy_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, with_key: bool
) -> None:
    if not with_key:
        proxy_env.delenv("STRIPE_API_KEY")
    caplog.set_level("INFO", logger="litellm_stripe")
    assert litellm_stripe.proxy_logger is litellm_stripe.proxy_logger
    (line,) = [r.getMessage() for r in caplog.records if r.name == "litellm_stripe"]
    outbox = str(tmp_path / "proxy-outbox.sqlite3")
    assert outbox in line and "'llm-tokens'" in line
    assert "sk_test_fake" not in line
    if with_key:
        assert "to Stripe (test mode key, meter event API v2" in line
    else:
        assert "no STRIPE_API_KEY set" in line and "local ledger" in line
