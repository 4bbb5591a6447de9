"""CreditGuard on the caller's thread: `reserve()` (+ `release()`) per call, and its Stripe
requests under load.

What (issue 18): `reserve` runs before every provider call, so it must answer from memory:
target <= 5 us median. Measured in one process, per call over a batch of calls:

- `reserve` alone and `reserve` + `release`, dict source (a warm customer whose cost per
  call is known), and `reserve` + `release` for `source="stripe"` once the balance is
  cached (the same path: the balance request is on the guard's thread).
- checks: 8 threads x 200 calls over 4 customers make exactly 4 balance requests to
  FakeStripe (one per customer per refresh window); $1.00 at 10,506 micro-dollars a call
  (gpt-4o, 1,234 in / 567 out, $2.50 / $10.00 per 1M, +20 %) allows 96 calls.

Run: `uv run python benchmarks/guard.py` (`--quick`: fewer calls and runs).
"""

from __future__ import annotations

import sys
import threading
import time

import _common as c
from stripe_token_meter import CreditExhausted, CreditGuard
from stripe_token_meter.guard import GuardBinding
from stripe_token_meter.testing import FakeStripe

COST = 10_506
MODEL = "openai/gpt-4o"
BALANCE = ("GET", "/v1/billing/credit_balance_summary")


def _warm(guard: CreditGuard, customer: str) -> None:
    hold = guard.reserve(customer, MODEL)
    assert hold is not None
    hold.release()
    guard.record_cost(customer, COST)


def _per_call_us(guard: CreditGuard, customer: str, calls: int, release: bool) -> float:
    """Microseconds per call over `calls` sequential calls; costs recorded between batches
    (as the worker would) so the reservations never exhaust the credit."""
    pc = time.perf_counter_ns
    reserve = guard.reserve
    if release:
        t0 = pc()
        for _ in range(calls):
            hold = reserve(customer, MODEL)
            hold.release()  # type: ignore[union-attr]
        elapsed = pc() - t0
    else:
        holds = []
        append = holds.append
        t0 = pc()
        for _ in range(calls):
            append(reserve(customer, MODEL))
        elapsed = pc() - t0
        for h in holds:
            h.release()  # type: ignore[union-attr]
    for _ in range(calls):
        guard.record_cost(customer, COST)
    return elapsed / calls / 1000.0


def _binding(fake: FakeStripe) -> GuardBinding:
    return GuardBinding(None, None, "usd", None, None, fake.client())


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


def measure(report: c.Report, runs: int, calls: int, fake: FakeStripe) -> None:
    target = c.Target("<=", 5.0)
    big = {"cus_bench": "1000000000"}
    for name, release in (("reserve()", False), ("reserve() + release()", True)):
        values = []
        for _ in range(runs):
            guard = CreditGuard(big)
            _warm(guard, "cus_bench")
            values.append(_per_call_us(guard, "cus_bench", calls, release))
        report.add(
            c.Result(f"dict source, {name} per call", c.summarize(values), "us", target, digits=3)
        )
    fake.grant_credit("cus_bench", 10**11)
    values = []
    for _ in range(runs):
        guard = CreditGuard("stripe", refresh_seconds=3600)
        guard.bind(_binding(fake))
        guard.prefetch(["cus_bench"])
        _wait(lambda g=guard: g.remaining("cus_bench") is not None)
        _warm(guard, "cus_bench")
        values.append(_per_call_us(guard, "cus_bench", calls, True))
        guard.close()
    report.add(
        c.Result(
            'source="stripe", balance cached, reserve() + release() per call',
            c.summarize(values),
            "us",
            target,
            digits=3,
        )
    )


def check_requests(report: c.Report, fake: FakeStripe) -> None:
    customers = [f"cus_load{i}" for i in range(4)]
    for cid in customers:
        fake.grant_credit(cid, 1_000_000)
    before = fake.requests[BALANCE]
    guard = CreditGuard("stripe", refresh_seconds=60)
    guard.bind(_binding(fake))

    def caller(k: int) -> None:
        for i in range(200):
            cid = customers[(k + i) % 4]
            hold = guard.reserve(cid, MODEL)
            if hold is not None:
                hold.release()
            guard.record_cost(cid, COST)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait(lambda: all(guard.remaining(cid) is not None for cid in customers))
    time.sleep(0.05)
    made = fake.requests[BALANCE] - before
    guard.close()
    report.check(
        "8 threads x 200 calls, 4 customers: 4 balance requests",
        made == 4,
        f"{made} requests",
    )


def check_dollar(report: c.Report) -> None:
    guard = CreditGuard({"cus_x": "1.00"})
    calls = 0
    try:
        while calls < 1000:
            hold = guard.reserve("cus_x", MODEL)
            if hold is not None:
                hold.release()
            guard.record_cost("cus_x", COST)
            calls += 1
    except CreditExhausted:
        pass
    report.check("$1.00 at 10,506 micros a call: 96 calls", calls == 96, f"{calls} calls")


def main() -> int:
    p = c.parser(__doc__ or "")
    args = p.parse_args()
    runs = args.runs or (3 if args.quick else 15)
    calls = 20_000 if args.quick else 200_000
    report = c.Report("CreditGuard on the caller's thread (benchmarks/guard.py)")
    c.header(report.title, args.quick, quiet=not args.quick)
    with FakeStripe() as fake:
        fake.auto_customers = True
        measure(report, runs, calls, fake)
        check_requests(report, fake)
    check_dollar(report)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
