"""Backlog: a million events recorded while Stripe is down, then delivered when it returns.

The meter points at a free port with nothing listening. N usages (one event each) are
recorded as fast as the caller can; every `record()` is timed. Once all of them are in the
outbox, FakeStripe is started on that port (its own process) and `flush()` is timed.
Reported: the caller's record() cost during the outage, time to get everything into the
outbox, time to drain after Stripe returns, and this process's peak RSS (target 150 MB).
Checked: FakeStripe accepted exactly N events, their values sum to what was recorded
(event summaries over HTTP), and sampled identifiers are held.

    uv run python benchmarks/backlog.py [--quick] [--runs N] [--events N]
"""

from __future__ import annotations

import array
import bisect
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

RSS_TARGET = c.Target("<=", 150.0)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def one_run(n: int, tmp: Path, drain_timeout: float) -> dict[str, Any]:
    port = c.free_port()
    url = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:10]
    customer = f"cus_backlog{tag}"
    times = array.array("I", bytes(4 * n))  # per-call ns (capped at 4.2 s), 4 MB per 1M
    values = [1 + i % 5 for i in range(n)]
    meter = c.remote_meter({"api": url, "meter_events": url}, tmp / f"backlog-{tag}.sqlite3")
    rss_before = c.current_rss_mb()
    pc = time.perf_counter_ns
    wall0 = time.time()
    with c.rss_sampler() as rss:
        t0 = time.perf_counter()
        rid = c.request_id
        for i in range(n):
            request_id = rid(tag, i)
            a = pc()
            meter.record(
                counts="openai",
                model="gpt-4o-2024-08-06",
                provider="openai",
                prompt_tokens=values[i],
                completion_tokens=0,
                customer_id=customer,
                request_id=request_id,
            )
            times[i] = min(pc() - a, 0xFFFFFFFF)
        t_recorded = time.perf_counter() - t0
        stored = c.wait_until(
            lambda: meter.stats()["recorded"] >= n and meter.stats()["queued"] == 0,
            timeout=drain_timeout,
            interval=0.1,
        )
        t_stored = time.perf_counter() - t0
        outage = meter.stats()
        fake = c.FakeStripeProcess(port).start()
        try:
            t1 = time.perf_counter()
            flushed = meter.flush(timeout=drain_timeout)
            if not flushed:
                print(f"flush timed out:\n{c.diagnose(meter)}", file=sys.stderr, flush=True)
            t_drain = time.perf_counter() - t1
            stats = meter.stats()
            meter.close(timeout=5)
            client = c.sync_client(fake.base_addresses)
            start, end = c.minute_window(wall0, time.time())
            total = c.summed_value(client, fake.meter_id, customer, start, end)
            sample = random.sample(range(n), min(100, n))
            held, missing = c.probe_held(
                client, [c.identifier(c.request_id(tag, i)) for i in sample], customer
            )
        finally:
            fake.stop()
    ordered = sorted(times)
    return {
        "record_median_us": statistics.median(ordered) / 1000,
        "record_p99_us": c.percentile(ordered, 99) / 1000,
        "record_max_ms": ordered[-1] / 1e6,
        "record_slow": len(ordered) - bisect.bisect_right(ordered, 100_000),
        "record_s": t_recorded,
        "stored_s": t_stored,
        "drain_s": t_drain,
        "drain_rate": n / t_drain if t_drain else 0.0,
        "peak_rss": max([*rss, c.current_rss_mb(), c.peak_rss_mb()]),
        "rss_before": rss_before,
        "flushed": flushed and stored,
        "delivered": stats["delivered"],
        "dead": stats["dead_lettered"],
        "outage_retrying": outage["retrying"],
        "outage_error": outage["last_error"],
        "sum_ok": total == float(sum(values)),
        "sum": total,
        "expected": sum(values),
        "accepted": fake.accepted,
        "duplicates": fake.error_reports,
        "held": held,
        "missing": missing,
    }


def child(n: int, drain_timeout: float) -> None:
    """One run in a fresh process, so its peak RSS is this run's alone."""
    with tempfile.TemporaryDirectory(prefix="stm-bench-") as d:
        print("RESULT " + json.dumps(one_run(n, Path(d), drain_timeout)), flush=True)


def spawn(n: int, drain_timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--events", str(n)]
    cmd += ["--timeout", str(drain_timeout)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"backlog child failed ({proc.returncode}); its stderr is above")


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="drain timeout, seconds")
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        child(args.events, args.timeout)
        return 0
    quick = args.quick
    n = args.events or (20_000 if quick else 1_000_000)
    runs = args.runs or (1 if quick else 3)
    c.header("backlog", quick)
    print(f"  {n:,} events per run, {runs} runs", flush=True)
    report = c.Report("Backlog")
    results: list[dict[str, Any]] = []
    for run in range(runs):
        c.wait_quiet(quick=quick)
        busy = c.BusyMeter()
        r = spawn(n, args.timeout or (120.0 if quick else 3600.0))
        r["busy"] = busy.fraction()
        results.append(r)
        print(
            f"  run {run + 1}: recorded in {r['record_s']:.1f} s (record() median "
            f"{r['record_median_us']:.2f} us, p99 {r['record_p99_us']:.1f} us, max "
            f"{r['record_max_ms']:.1f} ms), all in the outbox after {r['stored_s']:.1f} s, "
            f"{r['outage_retrying']:,} events had failed attempts ({r['outage_error']!s:.60}); "
            f"drained in {r['drain_s']:.1f} s ({r['drain_rate']:,.0f} ev/s); peak RSS "
            f"{r['peak_rss']:.0f} MB (before {r['rss_before']:.0f}); machine busy "
            f"{r['busy']:.0%}",
            flush=True,
        )
    busiest = max(r["busy"] for r in results)

    def add(name: str, key: str, unit: str, digits: int, target: c.Target | None = None) -> None:
        values = [float(r[key]) for r in results]
        note = f"{n:,} events; machine busy <= {busiest:.0%}" if target else ""
        report.add(c.Result(name, c.summarize(values), unit, target, note, digits))

    add("peak RSS (this process)", "peak_rss", "MB", 0, RSS_TARGET)
    add("RSS before recording", "rss_before", "MB", 0)
    add("time to drain after Stripe returns", "drain_s", "s", 1)
    add("drain rate", "drain_rate", "events/s", 0)
    add("recording while down (wall)", "record_s", "s", 1)
    add("until all are in the outbox", "stored_s", "s", 1)
    add("record() median while down", "record_median_us", "us", 2)
    add("record() p99 while down", "record_p99_us", "us", 1)
    add("record() max while down", "record_max_ms", "ms", 1)
    add("record() calls over 100 us", "record_slow", "calls", 0)
    report.check(
        "flushed, all delivered, nothing dead",
        all(r["flushed"] and r["delivered"] == n and r["dead"] == 0 for r in results),
        f"delivered {[r['delivered'] for r in results]}",
    )
    report.check(
        "nothing lost or doubled: FakeStripe accepted exactly N",
        all(r["accepted"] == n + r["missing"] for r in results),
        f"accepted {[r['accepted'] for r in results]}, duplicate sends "
        f"{[r['duplicates'] for r in results]}",
    )
    report.check(
        "event summaries sum exactly what was recorded",
        all(r["sum_ok"] for r in results),
        f"{[(r['sum'], r['expected']) for r in results]}",
    )
    report.check(
        "sampled identifiers held",
        all(r["missing"] == 0 for r in results),
        f"{sum(r['held'] for r in results)} held",
    )
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
