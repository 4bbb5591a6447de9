"""Global configuration: flags first, then the environment TokenMeter reads.

Why: the command must see exactly what the application's `TokenMeter()` sees (same key,
event name, outbox, API base), or `status` and `flush` would look at the wrong outbox.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import stripe

from ..errors import ConfigurationError, InvalidUsage
from ..meter import check_api_key
from ..storage.base import default_outbox_path, redact_url
from ..usage import check_text
from ._errors import CliError

STRIPE_API: str = "https://api.stripe.com"
DEFAULT_EVENT_NAME = "token-billing-tokens"
_KINDS = ("sk_test", "sk_live", "rk_test", "rk_live")


def add_global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The flags every command accepts, before or after the subcommand's name.

    Subparsers get `suppress=True` so a flag given before the subcommand is not reset to
    its default by the subparser.
    """
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="Stripe secret (sk_) or restricted (rk_, recommended) key; default $STRIPE_API_KEY",
    )
    group.add_argument(
        "--api-base",
        default=default,
        metavar="URL",
        help="base URL for both the API and meter events (e.g. a FakeStripe); "
        "default $STRIPE_API_BASE, else Stripe",
    )
    group.add_argument(
        "--event-name",
        default=default,
        metavar="NAME",
        help=f"the meter's event_name; default $STRIPE_METER_EVENT_NAME, else {DEFAULT_EVENT_NAME}",
    )
    group.add_argument(
        "--outbox",
        default=default,
        metavar="PATH",
        help="outbox/ledger: a SQLite file or a postgresql:// URL; default $STRIPE_TOKEN_METER_OUTBOX, "
        "else a SQLite file in the per-user data dir",
    )
    group.add_argument(
        "--api",
        default=argparse.SUPPRESS if suppress else "v2",
        choices=("v1", "v2"),
        help="v2: meter event stream (default); v1: /v1/billing/meter_events",
    )


def key_kind(key: str | None) -> str | None:
    """`sk_test`, `rk_live`, ...: the only part of a key we ever show."""
    if key is None:
        return None
    for kind in _KINDS:
        if key.startswith(kind + "_"):
            return kind
    return key[:2] if key[:3] in ("sk_", "rk_", "pk_") else "unknown"


@dataclass(frozen=True)
class Config:
    """Resolved settings; `api_key` is never part of repr()."""

    api_key: str | None = field(repr=False)
    key_source: str | None
    api_base: str | None
    event_name: str
    outbox_path: Path | str
    """A SQLite file's path, or a PostgreSQL URL (a `str`)."""
    outbox_source: str
    api: Literal["v1", "v2"]

    @property
    def outbox_label(self) -> str:
        """The outbox for messages: a URL's password is not shown."""
        return redact_url(self.outbox_path)

    @property
    def key_kind(self) -> str | None:
        return key_kind(self.api_key)

    @property
    def live(self) -> bool:
        return self.key_kind in ("sk_live", "rk_live")

    @property
    def url(self) -> str:
        """Where API calls go (for messages)."""
        return self.api_base or STRIPE_API

    @property
    def base_addresses(self) -> dict[str, str] | None:
        if self.api_base is None:
            return None
        return {"api": self.api_base, "meter_events": self.api_base}

    def require_key(self, why: str) -> str:
        """The key, or a one-line error saying how to give one."""
        if self.api_key is None:
            raise CliError(
                f"{why} needs a Stripe key: pass --api-key or set STRIPE_API_KEY (a restricted "
                "rk_ key is recommended; any sk_test_ key works with FakeStripe)"
            )
        return self.api_key

    def client(self, why: str) -> stripe.StripeClient:
        """A synchronous SDK client for one-off API calls (setup, cancel, demo)."""
        return stripe.StripeClient(
            self.require_key(why),
            base_addresses=self.base_addresses,  # type: ignore[arg-type]
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
            max_network_retries=0,
        )


def _check_api_base(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) < len("http://x"):
        raise CliError(
            f"--api-base: expected an http(s) URL like http://127.0.0.1:12111, got {url!r}"
        )
    return url


def load_config(args: argparse.Namespace) -> Config:
    """Flags, then environment, then defaults; every problem is a one-line `CliError`."""
    key: str | None = getattr(args, "api_key", None)
    source = "--api-key" if key else None
    if not key:
        key = os.environ.get("STRIPE_API_KEY") or None
        source = "STRIPE_API_KEY" if key else None
    if key is not None:
        key = key.strip()
        try:
            check_api_key(key)
        except ConfigurationError as exc:
            raise CliError(f"{source}: {str(exc).removeprefix('api_key: ')}") from None
    base = getattr(args, "api_base", None) or os.environ.get("STRIPE_API_BASE") or None
    event_name = (
        getattr(args, "event_name", None)
        or os.environ.get("STRIPE_METER_EVENT_NAME")
        or DEFAULT_EVENT_NAME
    )
    try:
        event_name = check_text("event_name", event_name, 100)
    except InvalidUsage as exc:
        raise CliError(f"--event-name: {exc.message}") from None
    outbox = getattr(args, "outbox", None)
    if outbox:
        # A URL stays text: a PostgreSQL outbox, or another scheme `open_outbox` refuses.
        path: Path | str = outbox if "://" in outbox else Path(outbox).expanduser()
        outbox_source = "--outbox"
    else:
        path = default_outbox_path()
        env = os.environ.get("STRIPE_TOKEN_METER_OUTBOX")
        outbox_source = "STRIPE_TOKEN_METER_OUTBOX" if env else "default"
    api: Literal["v1", "v2"] = "v1" if getattr(args, "api", None) == "v1" else "v2"
    return Config(
        api_key=key,
        key_source=source,
        api_base=_check_api_base(base) if base else None,
        event_name=event_name,
        outbox_path=path,
        outbox_source=outbox_source,
        api=api,
    )
