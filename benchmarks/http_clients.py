"""The stripe SDK's own async HTTP clients side by side: CPU per request and requests/s.

Why the worker sends through `stripe.AIOHTTPClient` (benchmarks/README.md, finding 15):
the SDK's v1 meter event create, `--requests` per run, `--concurrency` in flight, against
FakeStripe in its own process, over
- `stripe.HTTPXClient`, a client per request in flight (one httpx pool each: a shared pool
  probes every pooled connection on every request, finding 5);
- `stripe.AIOHTTPClient`, a client per request in flight;
- `stripe.AIOHTTPClient` on one shared session (what the worker does).
CPU is this process's (user + system) over the run, per request; FakeStripe's is its own.

    uv run python benchmarks/http_clients.py [--quick] [--runs N]
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c


async def _run(
    fake: c.FakeStripeProcess, make: Callable[[], Any], shared: bool, n: int, concurrency: int
) -> tuple[float, float]:
    """(requests/s, us of CPU per request) for one client arrangement."""
    import stripe

    https = [make()] if shared else [make() for _ in range(concurrency)]
    clients = [
        stripe.StripeClient(
            c.FAKE_KEY,
            base_addresses=fake.base_addresses,  # type: ignore[arg-type]
            http_client=http,
            max_network_retries=0,
        )
        for http in https
    ]
    tag = uuid.uuid4().hex[:10]
    customer = f"cus_hc{tag}"
    pending = iter(range(n))

    async def sender(client: Any) -> None:
        for i in pending:
            await client.v1.billing.meter_events.create_async(
                {
                    "event_name": c.EVENT_NAME,
                    "identifier": f"hc{tag}-{i}",
                    "payload": {"stripe_customer_id": customer, "value": "1"},
                    "timestamp": int(time.time()),
                }
            )

    cpu0, t0 = c.process_cpu(), time.perf_counter()
    await asyncio.gather(*(sender(clients[k % len(clients)]) for k in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, c.process_cpu() - cpu0
    for http in https:
        await http.close_async()
    return n / elapsed, cpu / n * 1e6


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="requests per run")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    args = p.parse_args()
    import stripe

    n = args.requests or (200 if args.quick else 4_000)
    runs = args.runs or (1 if args.quick else 5)
    c.header("the stripe SDK's async HTTP clients", args.quick)
    print(f"  {n:,} v1 requests per run, {args.concurrency} in flight, {runs} runs", flush=True)
    arrangements: list[tuple[str, Callable[[], Any], bool]] = [
        ("stripe.HTTPXClient, a client per request in flight", stripe.HTTPXClient, False),
        ("stripe.AIOHTTPClient, a client per request in flight", stripe.AIOHTTPClient, False),
        ("stripe.AIOHTTPClient, one shared session (the worker's)", stripe.AIOHTTPClient, True),
    ]
    report = c.Report("The stripe SDK's async HTTP clients")
    rates: dict[str, list[float]] = {name: [] for name, _, _ in arrangements}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in arrangements}
    with c.FakeStripeProcess() as fake:
        for _ in range(runs):
            c.wait_quiet(quick=args.quick)
            for name, make, shared in arrangements:  # the same order in every run
                rate, cpu = asyncio.run(_run(fake, make, shared, n, args.concurrency))
                rates[name].append(rate)
                cpus[name].append(cpu)
    for name, _, _ in arrangements:
        report.add(c.Result(f"{name}: requests/s", c.summarize(rates[name]), "req/s", digits=0))
        report.add(c.Result(f"{name}: CPU per request", c.summarize(cpus[name]), "us", digits=0))
    expected = n * len(arrangements) * runs
    report.check(
        "FakeStripe accepted every request once",
        fake.accepted == expected,
        f"accepted {fake.accepted}, sent {expected}",
    )
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
