"""The LiteLLM proxy's logger, configured from environment variables.

`litellm_settings: {callbacks: litellm_stripe.proxy_logger}` makes the proxy import
`litellm_stripe` and read its `proxy_logger` attribute
(`litellm/proxy/types_utils/utils.py`, `get_instance_fn`: `getattr(module, name)`), which
must be a `CustomLogger` instance. The attribute is built on first access (module
`__getattr__`), so importing `litellm_stripe` never creates a meter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Final

from stripe_token_meter import ConfigurationError, TokenMeter

from ._identity import CLIENT_SOURCES, CUSTOMER_KEY, SOURCES, customer_from
from ._logger import StripeLogger

log = logging.getLogger("litellm_stripe")

DEFAULT_SOURCES: Final = ("key_metadata", "team_metadata")

# Where the proxy takes each customer source from, for the `missing_customer` warning.
_SOURCE_FIXES: Final[dict[str, str]] = {
    "key_metadata": "the virtual key's metadata: POST /key/generate or /key/update with "
    f'"metadata": {{"{CUSTOMER_KEY}": "cus_..."}}',
    "team_metadata": "the key's team metadata: POST /team/new or /team/update with "
    f'"metadata": {{"{CUSTOMER_KEY}": "cus_..."}}',
    "user_api_key_user_id": "the key's user_id (through STRIPE_CUSTOMER_MAP unless it is a cus_ id)",
    "team": "the key's team_id (through STRIPE_CUSTOMER_MAP unless it is a cus_ id)",
    "key_alias": "the key's key_alias (through STRIPE_CUSTOMER_MAP unless it is a cus_ id)",
    "metadata": f'the request\'s metadata {{"{CUSTOMER_KEY}": "cus_..."}}',
    "end_user": "the request's end user (user field or end-user header)",
    "user": "the request's user field",
}

ENV_VARS: Final[dict[str, str]] = {
    "STRIPE_API_KEY": "Stripe secret or restricted key (rk_ recommended); unset: local ledger only",
    "STRIPE_METER_EVENT_NAME": "the meter's event name (default token-billing-tokens)",
    "STRIPE_TOKEN_TYPES": "basic (input/output, default) or detailed",
    "STRIPE_TOKEN_METER_OUTBOX": "path of the SQLite outbox (share it between proxy workers)",
    "STRIPE_METER_API": "v2 (meter event stream, default) or v1",
    "STRIPE_CUSTOMER_SOURCE": "comma-separated sources tried in order (default key_metadata,team_metadata)",
    "STRIPE_CUSTOMER_MAP": "JSON object mapping source values (user/team ids...) to cus_ ids",
    "STRIPE_TRUST_CLIENT_FIELDS": "true to allow the client-supplied sources metadata, end_user, user",
    "STRIPE_DEFAULT_CUSTOMER_ID": "customer billed when no source names one",
    "STRIPE_BILL_CACHE_HITS": "true to bill responses served from LiteLLM's cache",
    "STRIPE_API_BASE": "a Stripe-compatible API address (tests, stripe-mock); default Stripe's",
}


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{name}: expected true or false, got {raw!r}")


def _customer_map(env: Mapping[str, str]) -> dict[str, str] | None:
    raw = (env.get("STRIPE_CUSTOMER_MAP") or "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"STRIPE_CUSTOMER_MAP: not valid JSON ({exc})") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigurationError(
            'STRIPE_CUSTOMER_MAP: expected a JSON object of strings, e.g. {"team-a": "cus_123"}'
        )
    return value


def logger_from_env(env: Mapping[str, str] | None = None) -> StripeLogger:
    """A `StripeLogger` (and its `TokenMeter`) configured from `env` (default `os.environ`).

    The request's own metadata is never read unless `STRIPE_CUSTOMER_SOURCE` names
    `metadata` and `STRIPE_TRUST_CLIENT_FIELDS=true`: through the proxy, any key holder
    can name any customer there (under `CUSTOMER_KEY`).
    """
    env = os.environ if env is None else env
    key = (env.get("STRIPE_API_KEY") or "").strip() or None
    token_types = (env.get("STRIPE_TOKEN_TYPES") or "basic").strip().lower()
    api = (env.get("STRIPE_METER_API") or "v2").strip().lower()
    if token_types not in ("basic", "detailed"):
        raise ConfigurationError(
            f"STRIPE_TOKEN_TYPES: expected basic or detailed, got {token_types!r}"
        )
    if api not in ("v2", "v1"):
        raise ConfigurationError(f"STRIPE_METER_API: expected v2 or v1, got {api!r}")
    raw_sources = env.get("STRIPE_CUSTOMER_SOURCE") or ",".join(DEFAULT_SOURCES)
    sources = tuple(s.strip().lower() for s in raw_sources.split(",") if s.strip())
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ConfigurationError(
            f"STRIPE_CUSTOMER_SOURCE: unknown source(s) {unknown}; choose from {list(SOURCES)}"
        )
    trust = _flag(env, "STRIPE_TRUST_CLIENT_FIELDS")
    if not trust and any(s in CLIENT_SOURCES for s in sources):
        bad = [s for s in sources if s in CLIENT_SOURCES]
        raise ConfigurationError(
            f"STRIPE_CUSTOMER_SOURCE: {bad} come from the request, so any key holder could bill another "
            "customer; set STRIPE_TRUST_CLIENT_FIELDS=true only if every caller is your own backend, or use "
            "key_metadata, team_metadata, user_api_key_user_id, team or key_alias"
        )
    resolver = (
        customer_from(*sources, customer_map=_customer_map(env), trust_client_fields=trust)
        if sources
        else None
    )
    meter = TokenMeter(
        api_key=key,
        event_name=(env.get("STRIPE_METER_EVENT_NAME") or "").strip() or None,
        api="v1" if api == "v1" else "v2",
        token_types="detailed" if token_types == "detailed" else "basic",
        outbox_path=(env.get("STRIPE_TOKEN_METER_OUTBOX") or "").strip() or None,
        default_customer_id=(env.get("STRIPE_DEFAULT_CUSTOMER_ID") or "").strip() or None,
        api_base=(env.get("STRIPE_API_BASE") or "").strip() or None,
    )
    logger = StripeLogger(
        meter,
        customer_resolver=resolver,
        bill_cache_hits=_flag(env, "STRIPE_BILL_CACHE_HITS"),
        metadata_key=None,
        missing_customer_hint=_missing_customer_hint(sources),
    )
    _log_destination(meter, key, api_base=(env.get("STRIPE_API_BASE") or "").strip() or None)
    return logger


def _missing_customer_hint(sources: tuple[str, ...]) -> str:
    """The proxy's own customer sources: the core's advice (call metadata, a
    `meter.customer()` scope) does not apply to proxy callers."""
    tried = "; ".join(f"{s}: {_SOURCE_FIXES[s]}" for s in sources) or "none"
    return (
        f"The proxy logger reads {CUSTOMER_KEY} from STRIPE_CUSTOMER_SOURCE, in order: {tried}. "
        "Set it there, or STRIPE_DEFAULT_CUSTOMER_ID; the request's own metadata is ignored "
        "unless STRIPE_CUSTOMER_SOURCE names metadata and STRIPE_TRUST_CLIENT_FIELDS=true. "
        "The usage record is kept in the outbox (stripe-token-meter status)."
    )


def _key_mode(key: str) -> str:
    """`live` or `test` from the key's prefix (`rk_live_...`); the key itself is never shown."""
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[1] in ("live", "test") else "unknown"


def _log_destination(meter: TokenMeter, key: str | None, api_base: str | None) -> None:
    """One start-up line saying where this proxy's meter events go, so an operator sees a
    missing STRIPE_API_KEY (local ledger only) before the first invoice does."""
    outbox = meter.stats()["outbox"]
    if meter.local:
        log.warning(
            "litellm-stripe: no STRIPE_API_KEY set: LiteLLM token usage goes to the local "
            "ledger only, nothing is sent to Stripe (event name %r, outbox %s). Set "
            "STRIPE_API_KEY and restart to bill.",
            meter.event_name,
            outbox,
        )
        return
    log.warning(
        "litellm-stripe: billing LiteLLM token usage to Stripe (%s mode key, meter event "
        "API %s, event name %r%s, outbox %s)",
        _key_mode(key or ""),
        meter.api,
        meter.event_name,
        f", API base {api_base}" if api_base else "",
        outbox,
    )


_lock: Final = threading.Lock()
_instance: StripeLogger | None = None


def proxy_logger() -> StripeLogger:
    """The process's proxy logger, built from `os.environ` on first use."""
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                _instance = logger_from_env()
    return _instance
