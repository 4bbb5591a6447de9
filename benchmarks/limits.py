"""Delivery inside Stripe's limits: 429 share, time against the ideal, exactly once.

What (issue 19): FakeStripe (in this process, limits on, answering after `--latency`)
enforces Stripe's limits; a `TokenMeter` delivers through the real SDK.

- (a) `api="v1"`, live key: 300 calls of one customer plus 300 spread over 30 customers.
  Stripe allows one concurrent v1 call per customer per meter, so the hot customer takes
  at least 300 round trips; "hot efficiency" is 300 x RTT / delivery time (1.0 = one
  request per round trip, the best possible). RTT is measured first: the median of 20
  sequential meter event calls through the SDK.
- (b) `api="v2"` stream, test key: 20,000 events (200 requests of 100) under a sandbox's
  25 requests/s; ideal 20,000 / (25 x 100) = 8 s. The ratio is delivery time / ideal.

Both count the 429s FakeStripe answered over all requests it got, and check that every
identifier was accepted exactly once. Run: `uv run python benchmarks/limits.py`
(`--quick`: smaller, one run).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import anyio
from stripe_token_meter import TokenMeter
from stripe_token_meter.testing import FakeStripe
from stripe_token_meter.transport import make_client

LIVE_KEY = "sk_live_limitsbench"
TEST_KEY = "sk_test_limitsbench"


def _rtt(fake: FakeStripe, n: int = 20) -> float:
    """Median of `n` sequential meter event calls on the meter's own stack (the SDK over
    aiohttp, `transport.make_client`), each for a different customer."""

    async def measure() -> float:
        client, session = make_client(LIVE_KEY, fake.base_addresses)
        times = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                await client.v1.billing.meter_events.create_async(
                    {
                        "event_name": c.EVENT_NAME,
                        "payload": {"stripe_customer_id": f"cus_rtt{i}", "value": "1"},
                    }
                )
                times.append(time.perf_counter() - t0)
        finally:
            await session.close()
        return statistics.median(times)

    return anyio.run(measure)


def _meter(fake: FakeStripe, key: str, api: str, tmp: Path, tag: str) -> TokenMeter:
    return TokenMeter(
        api_key=key,
        api_base=fake.url,
        outbox_path=tmp / f"{tag}.sqlite3",
        api=api,  # type: ignore[arg-type]
    )


def _run(
    fake: FakeStripe, meter: TokenMeter, calls: list[tuple[str, str]], timeout: float
) -> tuple[float, bool]:
    fake.reset()
    fake.latency = LATENCY
    t0 = time.perf_counter()
    for customer, rid in calls:
        c.record_one(meter, customer, rid, 7)
    done = meter.flush(timeout)
    return time.perf_counter() - t0, done


def _share_429(fake: FakeStripe) -> tuple[float, int, int]:
    total = sum(fake.requests.values())
    refused = sum(fake.limit_refusals.values())
    return (refused / total if total else 0.0), refused, total


def _exactly_once(fake: FakeStripe, calls: list[tuple[str, str]]) -> tuple[bool, str]:
    counts = fake.identifier_counts()["identifiers"]
    want = {c.identifier(rid) for _, rid in calls}
    accepted = {k for k, v in counts.items() if v["accepted"] == 1}
    twice = [k for k, v in counts.items() if v["accepted"] > 1]
    ok = accepted == want and not twice
    return ok, f"{len(accepted)}/{len(want)} accepted once, {len(twice)} twice"


def scenario_v1(report: c.Report, runs: int, hot: int, spread: int, tmp: Path) -> None:
    customers = 30
    times, shares, effs = [], [], []
    ok_all = True
    detail = ""
    with FakeStripe() as fake:
        fake.create_meter(c.EVENT_NAME)
        fake.auto_customers = True
        fake.latency = LATENCY
        rtt = _rtt(fake)
        print(f"  (a) v1 RTT {rtt * 1000:.1f} ms (FakeStripe latency {LATENCY * 1000:.0f} ms)")
        for run in range(runs):
            calls = [("cus_hot", c.request_id(f"hot{run}", i)) for i in range(hot)]
            calls += [
                (f"cus_s{i % customers:02d}", c.request_id(f"spread{run}", i))
                for i in range(spread)
            ]
            meter = _meter(fake, LIVE_KEY, "v1", tmp, f"v1-{run}")
            try:
                elapsed, done = _run(fake, meter, calls, 120.0)
            finally:
                meter.close(timeout=5)
            share, refused, total = _share_429(fake)
            ok, detail = _exactly_once(fake, calls)
            ok_all &= ok and done
            times.append(elapsed)
            shares.append(share * 100)
            effs.append(hot * rtt / elapsed)
            print(
                f"  (a) run {run}: {elapsed:.2f} s, {refused}/{total} requests 429'd, {detail}",
                flush=True,
            )
    report.add(c.Result("(a) v1 delivery time", c.summarize(times), "s"))
    report.add(
        c.Result("(a) v1 429 share", c.summarize(shares), "% of requests", c.Target("<=", 5.0))
    )
    report.add(
        c.Result(
            "(a) v1 hot-customer efficiency",
            c.summarize(effs),
            "requests per RTT",
            c.Target(">=", 0.8),
        )
    )
    report.check("(a) exactly once, all delivered", ok_all, detail)


def scenario_v2(report: c.Report, runs: int, events: int, tmp: Path) -> None:
    ideal = events / (25 * 100)
    times, ratios, shares = [], [], []
    ok_all = True
    detail = ""
    with FakeStripe() as fake:
        fake.create_meter(c.EVENT_NAME)
        fake.auto_customers = True
        for run in range(runs):
            time.sleep(1.1)  # the previous run's requests leave the one-second window
            calls = [(f"cus_v{i % 50:02d}", c.request_id(f"v2-{run}", i)) for i in range(events)]
            meter = _meter(fake, TEST_KEY, "v2", tmp, f"v2-{run}")
            try:
                elapsed, done = _run(fake, meter, calls, 120.0)
            finally:
                meter.close(timeout=5)
            share, refused, total = _share_429(fake)
            ok, detail = _exactly_once(fake, calls)
            ok_all &= ok and done
            times.append(elapsed)
            ratios.append(elapsed / ideal)
            shares.append(share * 100)
            print(
                f"  (b) run {run}: {elapsed:.2f} s (ideal {ideal:.1f} s), "
                f"{refused}/{total} requests 429'd, {detail}",
                flush=True,
            )
    report.add(c.Result("(b) v2 sandbox delivery time", c.summarize(times), "s"))
    report.add(
        c.Result("(b) v2 sandbox time / ideal", c.summarize(ratios), "x", c.Target("<=", 1.3))
    )
    report.add(
        c.Result(
            "(b) v2 sandbox 429 share", c.summarize(shares), "% of requests", c.Target("<=", 5.0)
        )
    )
    report.check("(b) exactly once, all delivered", ok_all, detail)


LATENCY = 0.02


def main() -> int:
    global LATENCY
    p = c.parser(__doc__ or "")
    p.add_argument("--latency", type=float, default=0.02, help="FakeStripe's answer delay (s)")
    args = p.parse_args()
    LATENCY = args.latency
    runs = args.runs or (1 if args.quick else 3)
    report = c.Report("Delivery inside Stripe's limits (benchmarks/limits.py)")
    c.header(report.title, args.quick, quiet=False)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.quick:
            scenario_v1(report, runs, 60, 60, tmp)
            scenario_v2(report, runs, 2_000, tmp)
        else:
            scenario_v1(report, runs, 300, 300, tmp)
            scenario_v2(report, runs, 20_000, tmp)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
