"""`Settings.from_env`: every STRIPE_* variable read in one place, errors naming their source,
and the key never in repr() or str()."""

from __future__ import annotations

from pathlib import Path

import pytest
from stripe_token_meter.errors import ConfigurationError
from stripe_token_meter.settings import ENV_VARS, Settings, SettingsError

KEY = "rk_live_" + "x" * 24


def test_nothing_set_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.api_key, s.event_name, s.api, s.api_base, s.token_types) == (
        None,
        "token-billing-tokens",
        "v2",
        None,
        "basic",
    )
    assert s.outbox() == Path("/data/stripe-token-meter/outbox.sqlite3")
    assert dict(s.sources) == {}


def test_every_variable_is_read() -> None:
    env = {
        "STRIPE_API_KEY": f" {KEY} ",
        "STRIPE_METER_EVENT_NAME": "my-meter",
        "STRIPE_METER_API": "V1",
        "STRIPE_API_BASE": "http://127.0.0.1:12111/",
        "STRIPE_TOKEN_METER_OUTBOX": "/var/lib/app/outbox.sqlite3",
        "STRIPE_TOKEN_TYPES": "detailed",
        "STRIPE_DEFAULT_CUSTOMER_ID": "cus_123",
    }
    assert set(env) == set(ENV_VARS)
    s = Settings.from_env(env)
    assert s.api_key == KEY and s.key_kind == "rk_live" and s.live
    assert (s.event_name, s.api, s.api_base) == ("my-meter", "v1", "http://127.0.0.1:12111")
    assert s.outbox() == Path("/var/lib/app/outbox.sqlite3")
    url = Settings.from_env({"STRIPE_TOKEN_METER_OUTBOX": "postgresql://u@127.0.0.1:5/db"})
    assert url.outbox() == "postgresql://u@127.0.0.1:5/db"  # a URL stays text
    assert (s.token_types, s.default_customer_id) == ("detailed", "cus_123")
    assert s.sources["api_key"] == "STRIPE_API_KEY"


def test_blank_values_are_unset() -> None:
    s = Settings.from_env({"STRIPE_API_KEY": "  ", "STRIPE_METER_EVENT_NAME": ""})
    assert s.api_key is None and s.event_name == "token-billing-tokens"


def test_given_values_replace_the_environment_and_name_themselves() -> None:
    env = {"STRIPE_API_KEY": "sk_test_env", "STRIPE_TOKEN_METER_OUTBOX": "/env.sqlite3"}
    s = Settings.from_env(
        env, given={"api_key": ("--api-key", "sk_test_flag"), "outbox_path": ("--outbox", None)}
    )
    assert s.api_key == "sk_test_flag" and s.sources["api_key"] == "--api-key"
    assert s.outbox_path == "/env.sqlite3"
    assert s.sources["outbox_path"] == "STRIPE_TOKEN_METER_OUTBOX"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("STRIPE_API_KEY", "pk_test_123", "publishable key"),
        ("STRIPE_API_KEY", "whsec_abc", "expected a Stripe secret"),
        ("STRIPE_METER_API", "v3", "expected v2 or v1"),
        ("STRIPE_API_BASE", "ftp://x", "expected an http(s) URL"),
        ("STRIPE_TOKEN_TYPES", "detail", "expected basic or detailed"),
        ("STRIPE_DEFAULT_CUSTOMER_ID", "acme", "Stripe customer id"),
        ("STRIPE_METER_EVENT_NAME", "a\nb", "control or invisible"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    err = info.value
    assert isinstance(err, ConfigurationError) and isinstance(err, ValueError)
    assert err.source == name and reason in err.reason
    assert str(err).startswith(f"{name}: ")
    assert value not in str(err) or name != "STRIPE_API_KEY"


def test_a_bad_given_value_names_the_flag() -> None:
    with pytest.raises(SettingsError, match=r"^--api-base: expected an http\(s\) URL"):
        Settings.from_env({}, given={"api_base": ("--api-base", "nope")})


def test_the_key_is_never_shown() -> None:
    s = Settings.from_env({"STRIPE_API_KEY": KEY, "STRIPE_METER_EVENT_NAME": "m"})
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert KEY not in text and "x" * 8 not in text
        assert "rk_live" in text and "event_name='m'" in text
    assert "api_key=None" in repr(Settings())
