"""Global configuration: flags first, then the environment, read by `Settings.from_env`.

Why: the command must see exactly what the application's `TokenMeter()` sees (same key,
event name, outbox, API base, API), or `status` and `flush` would look at the wrong
outbox; `settings.py` is the one reader of those variables.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import stripe

from ..settings import DEFAULT_EVENT_NAME, Settings, SettingsError, key_kind
from ..storage.base import redact_url
from ._errors import CliError

STRIPE_API: str = "https://api.stripe.com"


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
        default=default,
        choices=("v1", "v2"),
        help="v2: meter event stream; v1: /v1/billing/meter_events; "
        "default $STRIPE_METER_API, else v2",
    )


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


_FLAGS = {  # Settings field: (argparse dest, flag)
    "api_key": ("api_key", "--api-key"),
    "api_base": ("api_base", "--api-base"),
    "event_name": ("event_name", "--event-name"),
    "outbox_path": ("outbox", "--outbox"),
    "api": ("api", "--api"),
}


def load_config(args: argparse.Namespace) -> Config:
    """Flags, then the environment (`Settings.from_env`), then defaults; every problem is a
    one-line `CliError` naming the flag or variable it came from."""
    given = {name: (flag, getattr(args, dest, None)) for name, (dest, flag) in _FLAGS.items()}
    try:
        settings = Settings.from_env(given=given)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    return Config(
        api_key=settings.api_key,
        key_source=settings.sources.get("api_key"),
        api_base=settings.api_base,
        event_name=settings.event_name,
        outbox_path=settings.outbox(),
        outbox_source=settings.sources.get("outbox_path", "default"),
        api=settings.api,
    )
