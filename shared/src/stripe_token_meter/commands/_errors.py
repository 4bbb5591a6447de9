"""One-line errors for the command line, and key redaction for everything we print.

Why: a CLI error must say what broke and what to do in one line (exit code 2), and no
message we relay from Stripe or the outbox may reveal an API key, not even its last four.
"""

from __future__ import annotations

import re
from typing import Final

import stripe

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_KEY_RE: Final = re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9*]+")
_BARE_KEY_RE: Final = re.compile(r"\b(sk|rk|pk)_[A-Za-z0-9*]{8,}")


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2 unless told otherwise."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def redact(text: str) -> str:
    """Replace anything that looks like a Stripe key by its kind (`sk_test_***`)."""
    text = _KEY_RE.sub(lambda m: f"{m.group(1)}_{m.group(2)}_***", text)
    return _BARE_KEY_RE.sub(lambda m: f"{m.group(1)}_***", text)


def one_line(text: str) -> str:
    """Collapse whitespace so a relayed message stays on one line."""
    return " ".join(text.split())


def stripe_error_message(exc: BaseException, url: str, doing: str) -> str:
    """What went wrong talking to Stripe at `url` while `doing`, and what to do about it."""
    if isinstance(exc, stripe.APIConnectionError):
        return (
            f"cannot reach Stripe at {url} while {doing} (connection refused, DNS or no "
            "network): check --api-base / STRIPE_API_BASE and that the server is running"
        )
    message = redact(
        one_line(str(exc.user_message or exc) if isinstance(exc, stripe.StripeError) else str(exc))
    )
    if isinstance(exc, stripe.AuthenticationError):
        return (
            f"Stripe at {url} refused the API key while {doing}: {message}. Check --api-key / "
            "STRIPE_API_KEY (and that --api-base points where the key is valid)"
        )
    if isinstance(exc, stripe.PermissionError):
        return (
            f"the API key may not do this ({doing}): {message}. Give the restricted key "
            "the permission named above in the Dashboard (Developers > API keys)"
        )
    if isinstance(exc, stripe.StripeError):
        code = exc.code or "error"
        return f"Stripe at {url} answered {exc.http_status or '?'} {code} while {doing}: {message}"
    return f"unexpected error while {doing}: {type(exc).__name__}: {redact(one_line(str(exc)))}"
