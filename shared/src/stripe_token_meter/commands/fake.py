"""`stripe-token-meter fake-stripe`: run FakeStripe standalone for local development.

Why: point an app (or `setup`, `flush`, `demo --api-base`) at a Stripe look-alike with
no account and no network. The one fake-server command: `python -m stripe_token_meter.testing`
runs the same `serve` with the same flags (`testing/_options.py`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..testing import _options
from ._config import load_config
from ._errors import CliError


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-stripe",
        parents=parents,
        help="run FakeStripe on 127.0.0.1 until Ctrl-C, printing the base_addresses to use",
        description="Serve a Stripe-compatible fake billing API (meters, customers, prices, "
        "v1 and v2 meter events, adjustments) until Ctrl-C or SIGTERM, optionally with "
        "injected faults and latency. While it runs, GET <url>/_fake/identifiers lists the "
        "accepted meter event identifiers as JSON.",
    )
    _options.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..testing.__main__ import serve

    problem = _options.check(args)
    if problem is not None:
        raise CliError(problem)
    if not args.meter:
        args.meter = [load_config(args).event_name]
    print(
        "Use it with: stripe-token-meter --api-key sk_test_fake --api-base <url> ... "
        "(or STRIPE_API_BASE=<url>)",
        flush=True,
    )
    try:
        return serve(args)
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
