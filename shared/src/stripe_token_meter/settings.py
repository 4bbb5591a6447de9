"""Every `STRIPE_*` environment variable the core reads, in one place: `Settings.from_env()`.

Why: `TokenMeter()`, the `stripe-token-meter` command and the LiteLLM proxy must see the
same configuration (the command looking at another outbox than the app's would report
nothing), so the variables are named, parsed and checked here once. Each problem is a
`SettingsError` naming where the value came from (the variable, or the flag or argument
that replaced it) and what to do. The key is never part of `repr()` or `str()`: only its
kind (`rk_live`, ...) is shown.

Adapter-specific variables (the proxy's `STRIPE_CUSTOMER_SOURCE`, `STRIPE_CUSTOMER_MAP`,
`STRIPE_TRUST_CLIENT_FIELDS`, `STRIPE_BILL_CACHE_HITS`) stay with the adapter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from .errors import ConfigurationError, InvalidUsage
from .storage.base import per_user_outbox_path
from .usage import check_customer, check_text

DEFAULT_EVENT_NAME: Final = "token-billing-tokens"

ENV_VARS: Final[dict[str, str]] = {
    "STRIPE_API_KEY": "Stripe secret or restricted key (rk_ recommended); unset: local ledger only",
    "STRIPE_METER_EVENT_NAME": f"the meter's event name (default {DEFAULT_EVENT_NAME})",
    "STRIPE_METER_API": "v2 (meter event stream, default) or v1",
    "STRIPE_API_BASE": "a Stripe-compatible API address (FakeStripe, stripe-mock); default Stripe's",
    "STRIPE_TOKEN_METER_OUTBOX": "SQLite outbox path or postgresql:// URL; default a per-user data directory",
    "STRIPE_TOKEN_TYPES": "basic (input/output, default) or detailed",
    "STRIPE_DEFAULT_CUSTOMER_ID": "customer billed when a call names none",
}
"""The variables `Settings.from_env` reads, with what each means (for docs and `--help`)."""

_FIELDS: Final[dict[str, str]] = {
    "api_key": "STRIPE_API_KEY",
    "event_name": "STRIPE_METER_EVENT_NAME",
    "api": "STRIPE_METER_API",
    "api_base": "STRIPE_API_BASE",
    "outbox_path": "STRIPE_TOKEN_METER_OUTBOX",
    "token_types": "STRIPE_TOKEN_TYPES",
    "default_customer_id": "STRIPE_DEFAULT_CUSTOMER_ID",
}
_KEY_KINDS: Final = ("sk_test", "sk_live", "rk_test", "rk_live")


class SettingsError(ConfigurationError):
    """One setting cannot work. `source` is where it came from (`STRIPE_API_KEY`,
    `--api-key`, ...), `reason` what is wrong; `str()` is `"<source>: <reason>"`."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


def check_api_key(api_key: str) -> None:
    """Refuse keys that cannot write meter events, naming the kind to use (never the key)."""
    if api_key.startswith("pk_"):
        raise ConfigurationError(
            "api_key: a publishable key (pk_) cannot write meter events; it is meant for browsers. "
            "Create a restricted key (rk_) with write access to 'Billing meter events'."
        )
    if not api_key.startswith(("sk_", "rk_")):
        raise ConfigurationError(
            "api_key: expected a Stripe secret (sk_) or restricted (rk_) key; restricted keys are "
            "recommended for metering"
        )


def key_kind(key: str | None) -> str | None:
    """`sk_test`, `rk_live`, ...: the only part of a key ever shown."""
    if key is None:
        return None
    for kind in _KEY_KINDS:
        if key.startswith(kind + "_"):
            return kind
    return key[:2] if key[:3] in ("sk_", "rk_", "pk_") else "unknown"


def check_api_base(url: str) -> str:
    """An http(s) URL without its trailing slash."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) < len("http://x"):
        raise ValueError(f"expected an http(s) URL like http://127.0.0.1:12111, got {url!r}")
    return url


@dataclass(frozen=True)
class Settings:
    """The configuration the environment gives; `None` where it gives nothing.

    `sources` says where each set value came from (a variable, or the flag or argument
    that replaced it); unset fields are absent from it.
    """

    api_key: str | None = field(default=None, repr=False)
    event_name: str = DEFAULT_EVENT_NAME
    api: Literal["v1", "v2"] = "v2"
    api_base: str | None = None
    outbox_path: str | None = None
    token_types: Literal["basic", "detailed"] = "basic"
    default_customer_id: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        given: Mapping[str, tuple[str, str | None]] | None = None,
    ) -> Settings:
        """Read `env` (default `os.environ`); blank values count as unset.

        `given` maps a field name to `(source, value)` that replaces the variable when
        the value is not None or blank, e.g. `{"api_key": ("--api-key", args.api_key)}`;
        errors then name that source. Raises `SettingsError` for the first bad value.
        """
        env = os.environ if env is None else env
        raw: dict[str, str] = {}
        sources: dict[str, str] = {}
        for name, var in _FIELDS.items():
            source, value = (given or {}).get(name, (var, None))
            if value is None or not value.strip():
                source, value = var, env.get(var)
            if value is not None and value.strip():
                raw[name], sources[name] = value.strip(), source
        return cls(**_parse(raw, sources), sources=sources)  # type: ignore[arg-type]

    @property
    def key_kind(self) -> str | None:
        """`rk_live`, `sk_test`, ...: the key's kind, never the key."""
        return key_kind(self.api_key)

    @property
    def live(self) -> bool:
        return self.key_kind in ("sk_live", "rk_live")

    def outbox(self) -> Path | str:
        """The outbox to use: the path or URL named, else the per-user default file."""
        if self.outbox_path is None:
            return per_user_outbox_path()
        return self.outbox_path if "://" in self.outbox_path else Path(self.outbox_path)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in _FIELDS if name != "api_key"
        )
        return f"Settings(api_key={self.key_kind or None!r}, {shown})"

    __str__ = __repr__


def _parse(raw: Mapping[str, str], sources: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}

    def fail(name: str, reason: str) -> SettingsError:
        return SettingsError(sources[name], reason)

    if "api_key" in raw:
        try:
            check_api_key(raw["api_key"])
        except ConfigurationError as exc:
            raise fail("api_key", str(exc).removeprefix("api_key: ")) from None
        out["api_key"] = raw["api_key"]
    if "event_name" in raw:
        try:
            out["event_name"] = check_text("event_name", raw["event_name"], 100)
        except InvalidUsage as exc:
            raise fail("event_name", exc.message) from None
    if "api" in raw:
        api = raw["api"].lower()
        if api not in ("v1", "v2"):
            raise fail("api", f"expected v2 or v1, got {raw['api']!r}")
        out["api"] = api
    if "api_base" in raw:
        try:
            out["api_base"] = check_api_base(raw["api_base"])
        except ValueError as exc:
            raise fail("api_base", str(exc)) from None
    if "outbox_path" in raw:
        value = raw["outbox_path"]
        out["outbox_path"] = value if "://" in value else os.path.expanduser(value)
    if "token_types" in raw:
        types = raw["token_types"].lower()
        if types not in ("basic", "detailed"):
            raise fail("token_types", f"expected basic or detailed, got {raw['token_types']!r}")
        out["token_types"] = types
    if "default_customer_id" in raw:
        try:
            out["default_customer_id"] = check_customer(
                "default_customer_id", raw["default_customer_id"]
            )
        except InvalidUsage as exc:
            raise fail("default_customer_id", exc.message) from None
    return out
