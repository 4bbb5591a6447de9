"""Pre-aggregation: events and requests per 100,000 calls, with and without it, and the
rate at which one hot customer's calls are billed on v1.

Each run records calls through the real stripe SDK to an in-process FakeStripe and
counts what reached it. Side by side in one run: `aggregate_seconds=2` and per-call
events. FakeStripe answers each request after `--latency` seconds (a round trip), which
is what bounds v1: Stripe allows one concurrent call per customer per meter there. The
key is a live-mode one: a sandbox key is paced at 25 requests/s, which would measure
that limit instead of aggregation.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import Report, Result, header, parser, summarize
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.testing import FakeStripe

EVENT = "token-billing-tokens"
CUSTOMERS = ("cus_a", "cus_b", "cus_c")


def _run(
    api: str, n: int, customers: tuple[str, ...], window: int | None, tmp: Path, latency: float
) -> tuple[int, int, float, bool]:
    """(events at Stripe, requests, seconds from the first record to all delivered, sums exact)."""
    with FakeStripe() as fake:
        fake.create_meter(EVENT)
        fake.auto_customers = True
        fake.latency = latency
        meter = TokenMeter(api_key="sk_live_fake", api_base=fake.url, api=api,  # type: ignore[arg-type]
                           outbox_path=tmp / f"{api}-{window}-{n}-{time.monotonic_ns()}.db",
                           aggregate_seconds=window)  # fmt: skip
        want: dict[tuple[str, str], int] = defaultdict(int)
        t0 = time.perf_counter()
        for i in range(n):
            c = customers[i % len(customers)]
            meter.record(Usage(customer_id=c, model="openai/gpt-4o", input_tokens=10 + i % 7,
                               output_tokens=1 + i % 5, request_id=f"r{i}"))  # fmt: skip
            want[(c, "input")] += 10 + i % 7
            want[(c, "output")] += 1 + i % 5
        assert meter.flush(600)
        elapsed = time.perf_counter() - t0
        meter.close()
        got: dict[tuple[str, str], int] = defaultdict(int)
        for e in fake.events():
            got[(e.customer, e.payload["token_type"])] += e.value
        requests = sum(v for (method, _path), v in fake.requests.items() if method == "POST")
        return len(fake.events()), requests, elapsed, dict(got) == dict(want)


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--latency", type=float, default=0.02, help="FakeStripe seconds per request")
    args = p.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    n = 2_000 if args.quick else 100_000
    hot = 200 if args.quick else 5_000
    header("aggregation: fewer, larger events", args.quick)
    report = Report("aggregation")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for api in ("v2", "v1"):
            for window in (None, 2):
                events: list[float] = []
                requests: list[float] = []
                for _ in range(runs):
                    e, r, _t, exact = _run(api, n, CUSTOMERS, window, Path(tmp), 0.0)
                    events.append(e)
                    requests.append(r)
                    ok = ok and exact
                label = (
                    f"{api}, {'2 s windows' if window else 'per call'}, {n:,} calls of 3 customers"
                )
                report.add(
                    Result(f"events at Stripe, {label}", summarize(events), "events", digits=0)
                )
                report.add(Result(f"requests, {label}", summarize(requests), "requests", digits=0))
        per_call: list[float] = []
        aggregated: list[float] = []
        for _ in range(runs):
            _e, _r, t, exact = _run("v1", hot, ("cus_hot",), None, Path(tmp), args.latency)
            per_call.append(hot / t)
            ok = ok and exact
            _e, _r, t, exact = _run("v1", n, ("cus_hot",), 2, Path(tmp), args.latency)
            aggregated.append(n / t)
            ok = ok and exact
        report.add(Result(f"v1, one hot customer, per call ({hot:,} calls, {args.latency * 1000:.0f} ms "
                          "per request)", summarize(per_call), "calls billed/s", digits=0))  # fmt: skip
        report.add(Result(f"v1, one hot customer, 2 s windows ({n:,} calls; flush() "
                          "sends the open window)", summarize(aggregated), "calls billed/s", digits=0))  # fmt: skip
        ratios = [a / p for a, p in zip(aggregated, per_call, strict=True)]
        report.add(
            Result("aggregated / per call, v1 hot customer, per run", summarize(ratios), "x")
        )
    report.check("every run's sums exact at Stripe, per customer and token type", ok)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
