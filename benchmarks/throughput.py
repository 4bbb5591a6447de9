"""Delivery throughput: events per second from `TokenMeter` to FakeStripe in another process.

For each API (v2 meter event stream, 100 events a request; v1, one event a request, several
in flight): record N usages of one event each (the adapters' `counts="openai"` form), then
`flush()`. Throughput is N over the time from the first `record()` to `flush()` returning
(the flush-only rate is printed too). Each run bills its own customer; delivery is checked
over HTTP: the meter's event summaries for that customer must sum to exactly what was
recorded, a sample of identifiers must be held (re-posting one on v1 gets "already exists"),
and at the end FakeStripe's own count of accepted events must equal the total sent.

The same server is also measured alone (a raw aiohttp client posting pre-built requests with
the same concurrency), to tell a meter bottleneck from a server one.

    uv run python benchmarks/throughput.py [--quick] [--runs N] [--api v2|v1]
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
from stripe_token_meter.transport import V1_CONCURRENCY, V2_CONCURRENCY

TARGETS = {"v2": c.Target(">=", 20_000), "v1": c.Target(">=", 1_000)}
CONCURRENCY = {"v2": V2_CONCURRENCY, "v1": V1_CONCURRENCY}  # TokenMeter(concurrency=None)
PROBES = 100


def drain_run(
    fake: c.FakeStripeProcess, api: str, n: int, tmp: Path, concurrency: int
) -> dict[str, Any]:
    """Delivery alone: n events already in an outbox (as a meter stores them), one flush."""
    from stripe_token_meter import Usage, build_events, normalize_model
    from stripe_token_meter.outbox import PENDING, Outbox

    tag = uuid.uuid4().hex[:10]
    customer = f"cus_dr{api}{tag}"
    path = tmp / f"drain-{api}-{tag}.sqlite3"
    values = [1 + i % 7 for i in range(n)]
    wall0 = time.time()
    box = Outbox(path)
    for lo in range(0, n, 5_000):
        events = []
        for i in range(lo, min(n, lo + 5_000)):
            rid = c.request_id(tag, i)
            usage = Usage(model="gpt-4o", provider="openai", input_tokens=values[i])
            events += build_events(
                usage,
                customer_id=customer,
                request_id=rid,
                timestamp=wall0,
                event_name=c.EVENT_NAME,
                token_types="basic",
                normalizer=normalize_model,
            )
        box.add(events, PENDING)
    box.close()
    meter = c.remote_meter(fake.base_addresses, path, api=api, concurrency=concurrency)
    cpu0 = c.process_cpu()
    t0 = time.perf_counter()
    ok = meter.flush(timeout=900)  # starts the worker: the outbox has pending rows
    dt = time.perf_counter() - t0
    cpu = c.process_cpu() - cpu0
    if not ok:
        print(f"flush timed out:\n{c.diagnose(meter)}", file=sys.stderr, flush=True)
    stats = meter.stats()
    meter.close(timeout=5)
    client = c.sync_client(fake.base_addresses)
    start, end = c.minute_window(wall0, time.time())
    total = c.summed_value(client, fake.meter_id, customer, start, end)
    return {
        "rate": n / dt,
        "cpu_us_per_event": cpu / n * 1e6,
        "ok": ok and stats["delivered"] == n and total == float(sum(values)),
        "detail": (stats["delivered"], total, sum(values)),
    }


def meter_run(
    fake: c.FakeStripeProcess, api: str, n: int, tmp: Path, concurrency: int
) -> dict[str, Any]:
    """Record n one-event usages, flush; returns timings and what FakeStripe holds."""
    tag = uuid.uuid4().hex[:10]
    customer = f"cus_tp{api}{tag}"
    meter = c.remote_meter(
        fake.base_addresses, tmp / f"{api}-{tag}.sqlite3", api=api, concurrency=concurrency
    )
    values = [1 + i % 7 for i in range(n)]
    rids = [c.request_id(tag, i) for i in range(n)]
    busy = c.BusyMeter()
    wall0 = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        c.record_one(meter, customer, rids[i], values[i])
    t1 = time.perf_counter()
    cpu0 = c.process_cpu()
    server0 = fake.cpu_seconds()
    ok = meter.flush(timeout=900)
    if not ok:
        print(f"flush timed out:\n{c.diagnose(meter)}", file=sys.stderr, flush=True)
    t2 = time.perf_counter()
    cpu = c.process_cpu() - cpu0
    server_cpu = fake.cpu_seconds() - server0
    stats = meter.stats()
    meter.close(timeout=5)
    client = c.sync_client(fake.base_addresses)
    start, end = c.minute_window(wall0, time.time())
    total = c.summed_value(client, fake.meter_id, customer, start, end)
    sample = random.sample(range(n), min(PROBES, n))
    held, missing = c.probe_held(client, [c.identifier(rids[i]) for i in sample], customer)
    return {
        "rate": n / (t2 - t0),
        "flush_rate": n / (t2 - t1),
        "record_s": t1 - t0,
        "flush_s": t2 - t1,
        "cpu_us_per_event": cpu / n * 1e6,
        "server_cpu_share": server_cpu / (t2 - t1),
        "flushed": ok,
        "delivered": stats["delivered"],
        "dead": stats["dead_lettered"],
        "sum_ok": total == float(sum(values)),
        "sum": total,
        "expected_sum": sum(values),
        "held": held,
        "missing": missing,
        "busy": busy.fraction(),
    }


async def _raw_post(fake: c.FakeStripeProcess, api: str, n: int, concurrency: int) -> float:
    """Server alone: pre-built requests posted by `concurrency` tasks over one raw aiohttp
    session (the lightest client at hand, so the figure is as close to the server's own
    limit as this 2-core machine allows: the client still shares it)."""
    import aiohttp

    tag = uuid.uuid4().hex[:10]
    customer = f"cus_raw{api}{tag}"
    payload = {"stripe_customer_id": customer, "value": "1", "model": "openai/gpt-4o"}
    key = {"Authorization": f"Bearer {c.FAKE_KEY}"}
    bodies: list[tuple[str, bytes, dict[str, str]]] = []
    if api == "v2":
        session = "/v2/billing/meter_event_session"
        async with (
            aiohttp.ClientSession(fake.url) as http,
            http.post(session, headers=key, data=b"{}") as r,
        ):
            token = (await r.json())["authentication_token"]
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for b in range(n // 100):
            events = [
                {
                    "event_name": c.EVENT_NAME,
                    "identifier": f"raw{tag}-{b}-{i}",
                    "payload": {**payload, "token_type": "input"},
                    "timestamp": ts,
                }
                for i in range(100)
            ]
            body = json.dumps({"events": events}).encode()
            bodies.append(("/v2/billing/meter_event_stream", body, headers))
    else:
        headers = {**key, "Content-Type": "application/x-www-form-urlencoded"}
        now = int(time.time())
        for i in range(n):
            form = {
                "event_name": c.EVENT_NAME,
                "identifier": f"raw{tag}-{i}",
                "timestamp": str(now),
                **{f"payload[{k}]": v for k, v in payload.items()},
            }
            bodies.append(("/v1/billing/meter_events", urlencode(form).encode(), headers))
    pending = iter(bodies)

    async def sender(http: aiohttp.ClientSession) -> None:
        for path, body, hdrs in pending:
            async with http.post(path, data=body, headers=hdrs) as r:
                text = await r.text()
                if r.status != 200:
                    raise RuntimeError(f"{path}: {r.status} {text[:200]}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(fake.url, connector=connector) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(sender(http) for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def bench_api(
    report: c.Report,
    api: str,
    n: int,
    runs: int,
    tmp: Path,
    conc: int,
    quick: bool,
    latency: float = 0.0,
) -> None:
    print(f"-- {api}: {n:,} events per run, {runs} runs, {conc} requests in flight", flush=True)
    results: list[dict[str, Any]] = []
    drains: list[dict[str, Any]] = []
    raw: list[float] = []
    extra = ["--latency", str(latency)] if latency else []
    lat = f", FakeStripe answering after {latency * 1000:.0f} ms" if latency else ""
    with c.FakeStripeProcess(extra_args=extra) as fake:
        print(f"  FakeStripe (own process) at {fake.url}, meter {fake.meter_id}{lat}", flush=True)
        for run in range(runs):
            c.wait_quiet(quick=quick)
            raw.append(asyncio.run(_raw_post(fake, api, n, conc)))
            drains.append(drain_run(fake, api, n, tmp, conc))
            print(
                f"  run {run + 1}: from the outbox {drains[-1]['rate']:,.0f} ev/s "
                f"({drains[-1]['cpu_us_per_event']:.0f} us CPU/event)",
                flush=True,
            )
            res = meter_run(fake, api, n, tmp, conc)
            results.append(res)
            print(
                f"  run {run + 1}: meter {res['rate']:,.0f} ev/s (flush only "
                f"{res['flush_rate']:,.0f}; record {res['record_s']:.2f} s, flush "
                f"{res['flush_s']:.2f} s, {res['cpu_us_per_event']:.0f} us CPU/event in this "
                f"process, FakeStripe busy {res['server_cpu_share']:.0%} of a core); server "
                f"alone {raw[-1]:,.0f} ev/s; machine busy {res['busy']:.0%}",
                flush=True,
            )
        sent_by_meter = sum(r["delivered"] for r in results)
    target = TARGETS[api]
    each = f"{n:,} events/run, concurrency {conc}"
    rows: list[tuple[str, list[float], str, c.Target | None, str]] = [
        (f"delivery from the outbox (events already stored){lat}",
         [r["rate"] for r in drains], "events/s", target, each),
        ("... meter process CPU", [r["cpu_us_per_event"] for r in drains], "us/event", None, ""),
        (f"meter -> FakeStripe end to end (record, store, deliver){lat}",
         [r["rate"] for r in results], "events/s", target, each),
        ("flush() alone", [r["flush_rate"] for r in results], "events/s", None, ""),
        ("meter process CPU during flush",
         [r["cpu_us_per_event"] for r in results], "us/event", None, ""),
        ("FakeStripe CPU while the meter flushes",
         [100 * r["server_cpu_share"] for r in results], "% of a core", None, ""),
        (f"FakeStripe alone (raw aiohttp, {conc} in flight)", raw, "events/s", None,
         "the server's ceiling on this machine"),
    ]  # fmt: skip
    for name, values, unit, goal, note in rows:
        report.add(c.Result(f"{api} {name}", c.summarize(values), unit, goal, note, digits=0))
    report.check(
        f"{api}: every run flushed, nothing dead",
        all(r["flushed"] and r["delivered"] == n and r["dead"] == 0 for r in results),
        f"delivered per run {[r['delivered'] for r in results]}",
    )
    report.check(
        f"{api}: from the outbox: all delivered, summaries sum exactly what was stored",
        all(r["ok"] for r in drains),
        f"(delivered, summed, expected) per run {[r['detail'] for r in drains]}",
    )
    report.check(
        f"{api}: event summaries sum exactly what was recorded (per run)",
        all(r["sum_ok"] for r in results),
        f"{[(r['sum'], r['expected_sum']) for r in results]}",
    )
    report.check(
        f"{api}: sampled identifiers held by FakeStripe",
        all(r["missing"] == 0 for r in results),
        f"{sum(r['held'] for r in results)} held, {sum(r['missing'] for r in results)} missing",
    )
    # FakeStripe rejects a repeated identifier, so accepted == sent means each exactly once.
    expected = sent_by_meter + 2 * n * runs + sum(r["missing"] for r in results)
    report.check(
        f"{api}: FakeStripe accepted each identifier once",
        fake.accepted == expected,
        f"accepted {fake.accepted} (meter {sent_by_meter} + from the outbox {n * runs} + raw "
        f"{n * runs}); "
        f"duplicate sends reported by FakeStripe: {fake.error_reports}",
    )


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--api", choices=["v2", "v1"], action="append")
    p.add_argument("--v2-events", type=int, default=100_000)
    p.add_argument("--v1-events", type=int, default=10_000)
    p.add_argument("--v2-concurrency", type=int, default=CONCURRENCY["v2"])
    p.add_argument("--v1-concurrency", type=int, default=CONCURRENCY["v1"])
    p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds FakeStripe waits before each answer (Stripe's own: ~0.05-0.2)",
    )
    args = p.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 5)
    sizes = {"v2": 2_000 if quick else args.v2_events, "v1": 300 if quick else args.v1_events}
    c.header("delivery throughput", quick)
    report = c.Report("Delivery throughput")
    with tempfile.TemporaryDirectory(prefix="stm-bench-") as d:
        for api in args.api or ["v2", "v1"]:
            conc = args.v2_concurrency if api == "v2" else args.v1_concurrency
            bench_api(report, api, sizes[api], runs, Path(d), conc, quick, args.latency)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
