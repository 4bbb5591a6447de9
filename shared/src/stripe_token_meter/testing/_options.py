"""The flags of the one fake-server command, ``stripe-token-meter fake-stripe``, also
run as ``python -m stripe_token_meter.testing``.

Why one place: both commands serve the same FakeStripe, so the flags, their help text and
their checks are defined once; each flag maps onto a ``FakeStripe`` attribute or method.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stripe_token_meter.testing.fake_stripe import FakeStripe


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (e.g. 0.05), got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _retry_after(text: str) -> float | None:
    return None if text.strip().lower() == "none" else _seconds(text)


def _statuses(text: str) -> tuple[int, ...]:
    try:
        statuses = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HTTP statuses like 429 or 429,500, got {text!r}"
        ) from None
    if not all(400 <= s <= 599 for s in statuses):
        raise argparse.ArgumentTypeError(f"statuses must be 400-599, got {text!r}")
    return statuses


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add every flag: where to listen, what to create, limits, faults, inspection."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="EVENT_NAME",
        help="create an active sum meter for EVENT_NAME (repeatable)",
    )
    parser.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="CUS_ID",
        help="create a customer with this id (repeatable)",
    )
    parser.add_argument(
        "--auto-customers",
        action="store_true",
        help="accept any cus_ id as an existing customer",
    )
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="do not enforce Stripe's request limits (by default: test keys 25 requests/s "
        "over all endpoints; live keys 1,000/s v1 meter events with one call in flight per "
        "customer and meter, 10,000/s on the v2 stream, 100/s elsewhere), for throughput "
        "experiments",
    )
    faults = parser.add_argument_group(
        "faults and latency",
        "Injected on every matching request while the server runs. Requests are counted "
        "from start-up, per rule; GET /_fake/... is never faulted, delayed or counted.",
    )
    faults.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long before answering each request (e.g. 0.05; default 0)",
    )
    faults.add_argument(
        "--rate-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="allow N requests per wall-clock second per path; beyond that answer 429 "
        "with Retry-After: 1 (default: no cap)",
    )
    faults.add_argument(
        "--fail-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="answer the Nth, 2Nth, 3Nth... matching request with --fail-status instead "
        "of processing it",
    )
    faults.add_argument(
        "--fail-status",
        type=_statuses,
        default=(429,),
        metavar="STATUS[,STATUS...]",
        help="status for --fail-every (default 429: rate_limit; 5xx: api_error); "
        "several are used in turn, so 429,500 fails the Nth with 429, the 2Nth with 500, "
        "the 3Nth with 429...",
    )
    faults.add_argument(
        "--retry-after",
        type=_retry_after,
        default=1.0,
        metavar="SECONDS",
        help="Retry-After header sent with --fail-every's 429 and 503 answers "
        "(default 1; 'none' sends no header)",
    )
    faults.add_argument(
        "--drop-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="close the connection of the Nth, 2Nth... matching request without answering "
        "(the client sees a connection error); counted separately from --fail-every, "
        "which wins when both pick the same request",
    )
    faults.add_argument(
        "--drop-after-processing",
        action="store_true",
        help="with --drop-every: process the request first, so only the answer is lost "
        "(the event is accepted; a retry with the same identifier is a duplicate)",
    )
    faults.add_argument(
        "--fault-path",
        default=None,
        metavar="PREFIX",
        help="apply --fail-every and --drop-every only to paths starting with PREFIX, "
        "e.g. /v2/billing/meter_event_stream (default: every path)",
    )
    faults.add_argument(
        "--session-ttl",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="lifetime of v2 meter-event session tokens (default 900)",
    )
    inspect = parser.add_argument_group("inspection")
    inspect.add_argument(
        "--dump-identifiers",
        default=None,
        metavar="PATH",
        help="on exit write JSON to PATH: every accepted meter event identifier with how "
        "many times it was accepted and refused as a duplicate (the same JSON "
        "GET <url>/_fake/identifiers answers while running)",
    )


def check(args: argparse.Namespace) -> str | None:
    """A message for flags that need another flag, or None when the combination is valid."""
    if args.drop_after_processing and args.drop_every is None:
        return "--drop-after-processing needs --drop-every N"
    if args.fault_path is not None and args.fail_every is None and args.drop_every is None:
        return "--fault-path needs --fail-every N or --drop-every N"
    return None


def apply(fake: FakeStripe, args: argparse.Namespace) -> list[str]:
    """Configure ``fake`` from the flags; returns one line per active fault, for the log."""
    fake.limits = not args.no_limits
    fake.latency = args.latency
    fake.rate_limit_per_second = args.rate_limit
    fake.session_ttl = args.session_ttl
    where = f" on paths starting with {args.fault_path}" if args.fault_path else ""
    lines: list[str] = [] if fake.limits else ["Stripe's request limits off (--no-limits)"]
    if args.latency:
        lines.append(f"latency {args.latency:g}s before every answer")
    if args.rate_limit is not None:
        lines.append(f"rate limit {args.rate_limit}/s per path (429, Retry-After: 1)")
    if args.fail_every is not None:
        fake.fail_every(args.fail_every, args.fail_status, args.retry_after, args.fault_path)
        statuses = ",".join(str(s) for s in args.fail_status)
        retry = "none" if args.retry_after is None else f"{args.retry_after:g}"
        lines.append(
            f"fail every {args.fail_every} requests{where} with {statuses} "
            f"(Retry-After on 429/503: {retry})"
        )
    if args.drop_every is not None:
        fake.drop_every(
            args.drop_every, args.fault_path, after_processing=args.drop_after_processing
        )
        when = " after processing" if args.drop_after_processing else ""
        lines.append(f"drop every {args.drop_every} requests{where}{when}")
    return lines
