"""`stripe-token-meter fake-stripe`: run FakeStripe standalone for local development.

Why: point an app (or `setup`, `flush`, `demo --api-base`) at a Stripe look-alike with
no account and no network. This only translates flags; the server and what it prints
come from `python -m stripe_token_meter.testing`.
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
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="EVENT_NAME",
        help="create an active meter (repeatable; default: the configured event name)",
    )
    p.add_argument(
        "--customer", action="append", default=[], metavar="CUS_ID", help="create this customer"
    )
    p.add_argument(
        "--auto-customers",
        action="store_true",
        help="treat any cus_ id as an existing customer",
    )
    _options.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..testing.__main__ import main as serve

    problem = _options.check(args)
    if problem is not None:
        raise CliError(problem)
    cfg = load_config(args)
    argv = ["--host", args.host, "--port", str(args.port), *_options.to_argv(args)]
    for name in args.meter or [cfg.event_name]:
        argv += ["--meter", name]
    for customer in args.customer:
        argv += ["--customer", customer]
    if args.auto_customers:
        argv.append("--auto-customers")
    print(
        "Use it with: stripe-token-meter --api-key sk_test_fake --api-base <url> ... "
        "(or STRIPE_API_BASE=<url>)",
        flush=True,
    )
    try:
        return serve(argv)
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
