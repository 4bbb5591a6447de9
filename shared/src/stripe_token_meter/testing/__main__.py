"""Run FakeStripe standalone: ``python -m stripe_token_meter.testing [--port 12111]``
(``stripe-token-meter fake-stripe`` is the same command; its flags live in ``_options``).

Why: demos and benchmarks in other processes (or other languages) need a Stripe to talk to,
with the faults and latency tests inject (``--fail-every``, ``--latency``, ...) and a way to
see what it accepted (``GET /_fake/identifiers``, ``--dump-identifiers PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType

from stripe_token_meter.testing import _options
from stripe_token_meter.testing._wire import TEST_ONLY_PREFIX
from stripe_token_meter.testing.fake_stripe import FakeStripe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_token_meter.testing",
        description="Serve a Stripe-compatible fake billing API until Ctrl-C or SIGTERM "
        "(the same server and flags as `stripe-token-meter fake-stripe`).",
    )
    _options.add_options(parser)
    return parser


def dump_identifiers(fake: FakeStripe, path: str) -> None:
    """Write ``fake.identifier_counts()`` to ``path`` atomically (readers never see half)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fake.identifier_counts(), f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Start the server, print how to reach it, block until a stop signal."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = _options.check(args)
    if problem is not None:
        parser.error(problem)
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Serve as `args` say until SIGINT/SIGTERM; both CLIs end here."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    fake = FakeStripe(host=args.host, port=args.port, limits=not args.no_limits)
    fake.auto_customers = args.auto_customers
    faults = _options.apply(fake, args)
    fake.start()
    try:
        for customer in args.customer:
            fake.create_customer(customer)
        meters = [fake.create_meter(name) for name in args.meter]
        print(f"FakeStripe listening on {fake.url}", flush=True)
        print(f"url={fake.url}", flush=True)
        print(f"base_addresses={json.dumps(fake.base_addresses)}", flush=True)
        print(
            "stripe.StripeClient('sk_test_fake', "
            f"base_addresses={json.dumps(fake.base_addresses)})",
            flush=True,
        )
        for meter in meters:
            print(f"meter {meter['id']} event_name={meter['event_name']}", flush=True)
        for customer in args.customer:
            print(f"customer {customer}", flush=True)
        for line in faults:
            print(f"fault {line}", flush=True)
        print(f"identifiers_url={fake.url}{TEST_ONLY_PREFIX}identifiers", flush=True)
        while not stop.wait(0.1):
            pass
    finally:
        fake.stop()
        events = fake.events()
        print(
            f"FakeStripe stopped: {len(events)} events accepted, "
            f"{len(fake.error_reports)} error reports",
            file=sys.stderr,
            flush=True,
        )
    if args.dump_identifiers is not None:
        try:
            dump_identifiers(fake, args.dump_identifiers)
        except OSError as exc:
            print(
                f"cannot write identifiers to {args.dump_identifiers}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(f"identifiers written to {args.dump_identifiers}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
