"""The durable hand-off: `record()` on the caller, sustained records/s, CPU per record, and
what survives kill -9 under load (acknowledged vs stored).

Ledger meters (no key): this measures the journal and the outbox, not Stripe. Side by
side in each run: `record()` with its journal (the default), and with an in-memory outbox
(`:memory:`, no journal: the queue-only hand-off of earlier versions, not durable), so
the journal's cost is a ratio measured in one run.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

from _common import Report, Result, Target, header, parser, summarize, wait_quiet
from stripe_token_meter import TokenMeter, Usage


def _usage(i: int) -> Usage:
    return Usage(customer_id="cus_bench", model="openai/gpt-4o", input_tokens=12,
                 output_tokens=3, request_id=f"r{i}")  # fmt: skip


def per_call_us(meter: TokenMeter, n: int) -> float:
    """Median `record(Usage)` on the caller, in microseconds."""
    usages = [_usage(i) for i in range(n)]
    pc = time.perf_counter_ns
    out = [0] * n
    record = meter.record
    for i, u in enumerate(usages):
        t0 = pc()
        record(u)
        out[i] = pc() - t0
    out.sort()
    return out[n // 2] / 1000


def per_call_alone_us(meter: TokenMeter, n: int) -> float:
    """The caller's own work: the worker held back (its drain lock) while timing, so no
    GIL hand-offs to it are counted. What a call costs when calls are not back to back."""
    with meter._intake._drain_lock:
        return per_call_us(meter, n)


def sustained(path: Path, n: int, threads: int) -> tuple[float, float, float, int]:
    """(records/s accepted, CPU us per record incl. worker and store, peak RSS MB, still
    queued when recording ended) for `threads` threads recording `n` calls in all."""
    meter = TokenMeter(outbox_path=path)
    per = n // threads
    usages = [[_usage(t * per + i) for i in range(per)] for t in range(threads)]

    def run(batch: list[Usage]) -> None:
        for u in batch:
            meter.record(u)

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    workers = [threading.Thread(target=run, args=(b,)) for b in usages]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    backlog = meter.stats()["queued"]
    assert meter.flush(600), meter.stats()
    cpu = time.process_time() - cpu0
    stats = meter.stats()
    meter.close()
    assert stats["recorded"] == per * threads and stats["local"] == 2 * per * threads, stats
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return per * threads / elapsed, cpu / (per * threads) * 1e6, rss, backlog


LOAD = textwrap.dedent(
    """
    import os, sys, threading
    from stripe_token_meter import TokenMeter
    meter = TokenMeter(outbox_path=sys.argv[1])

    def run(t):
        i = 0
        while True:
            meter.record(model="openai/gpt-4o", customer_id="cus_bench", input_tokens=1,
                         output_tokens=1, request_id=f"t{t}-{i}")
            if i % 100 == 99:  # record() returned for every call up to i
                os.write(1, f"{t} {i}\\n".encode())
            i += 1

    for t in range(4):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


def kill9(path: Path, seconds: float) -> tuple[int, int, int]:
    """(acknowledged, stored after restart, acknowledged but missing) for a 4-thread
    recorder killed -9 after `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", LOAD, str(path)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    time.sleep(seconds)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    acked: dict[int, int] = {}
    for line in proc.stdout.read().splitlines():
        t, i = map(int, line.split())
        acked[t] = max(acked.get(t, -1), i)
    meter = TokenMeter(outbox_path=path)
    assert meter.flush(600)
    rows = meter._outbox._query("SELECT identifier FROM events")
    meter.close()
    stored = Counter(ident.split(":")[0] for (ident,) in rows)
    doubled = sum(1 for c in stored.values() if c != 2)
    assert doubled == 0, doubled
    wanted = [f"t{t}-{i}" for t, last in acked.items() for i in range(last + 1)]
    missing = sum(1 for r in wanted if r not in stored)
    return len(wanted), len(stored), missing


def idle_and_latency(path: Path, seconds: float, samples: int) -> tuple[float, float]:
    """(CPU % of one core the process uses while an idle keyed meter waits, median ms from
    `record()` to the event at FakeStripe when calls come one at a time, idle between).

    The worker sleeps until work arrives (records wake it) instead of polling every 20 ms;
    FakeStripe runs in this process but is idle too. Limits off: this is about wake-ups."""
    from _common import process_cpu
    from stripe_token_meter.testing import FakeStripe

    with FakeStripe(limits=False) as fake:
        fake.create_meter("token-billing-tokens")
        fake.auto_customers = True
        meter = TokenMeter(api_key="sk_test_idle", api_base=fake.url, outbox_path=path)
        try:
            meter.record(_usage(-1))
            assert meter.flush(10)
            time.sleep(0.5)
            cpu0, t0 = process_cpu(), time.monotonic()
            time.sleep(seconds)
            idle = (process_cpu() - cpu0) / (time.monotonic() - t0) * 100
            lat: list[float] = []
            for i in range(samples):
                want = len(fake.identifiers()) + 2  # input and output
                start = time.perf_counter()
                meter.record(_usage(i))
                while len(fake.identifiers()) < want:
                    time.sleep(0.0005)
                lat.append((time.perf_counter() - start) * 1000)
                time.sleep(0.3)  # idle again before the next call
        finally:
            meter.close(2)
    lat.sort()
    return idle, lat[len(lat) // 2]


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    runs = args.runs or (1 if args.quick else 5)
    n = 20_000 if args.quick else 200_000
    header("durability: the journal hand-off", args.quick)
    wait_quiet(quick=args.quick)
    report = Report("durability")
    journal_us: list[float] = []
    alone_us: list[float] = []
    memory_us: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(runs):
            with TokenMeter(outbox_path=Path(tmp) / f"p{r}.sqlite3") as meter:
                journal_us.append(per_call_us(meter, n // 4))
            with TokenMeter(outbox_path=Path(tmp) / f"a{r}.sqlite3") as meter:
                alone_us.append(per_call_alone_us(meter, n // 4))
            with TokenMeter(outbox_path=":memory:") as meter:
                memory_us.append(per_call_us(meter, n // 4))
        report.add(Result("record(Usage), journal, calls back to back (worker ingesting)",
                          summarize(journal_us), "us", Target("<=", 3.0)))  # fmt: skip
        report.add(Result("record(Usage), journal, worker held back (the caller's own work)",
                          summarize(alone_us), "us", Target("<=", 3.0)))  # fmt: skip
        report.add(Result("record(Usage), memory queue only (:memory:, not durable)",
                          summarize(memory_us), "us"))  # fmt: skip
        ratios = [j / m for j, m in zip(journal_us, memory_us, strict=True)]
        report.add(Result("journal / memory, per run", summarize(ratios), "x"))
        for threads in (1, 4):
            rates, cpus, rss, backlogs = [], [], [], []
            for r in range(runs):
                rate, cpu, peak, backlog = sustained(Path(tmp) / f"s{threads}-{r}.sqlite3", n,
                                                     threads)  # fmt: skip
                rates.append(rate)
                cpus.append(cpu)
                rss.append(peak)
                backlogs.append(backlog)
            report.add(Result(f"sustained record(), {threads} thread(s), {n:,} calls",
                              summarize(rates), "records/s", Target(">=", 50_000), digits=0))  # fmt: skip
            report.add(Result(f"CPU per record incl. worker and store, {threads} thread(s)",
                              summarize(cpus), "us"))  # fmt: skip
            report.add(Result(f"still in the journal when recording ended, {threads} thread(s)",
                              summarize(backlogs), "records", digits=0))  # fmt: skip
            report.add(Result("peak RSS of this process so far", summarize(rss), "MB", digits=0))
        idles, lats = [], []
        for r in range(runs):
            idle, lat = idle_and_latency(Path(tmp) / f"i{r}.sqlite3", 1.0 if args.quick else 3.0,
                                         5 if args.quick else 20)  # fmt: skip
            idles.append(idle)
            lats.append(lat)
        report.add(Result("idle keyed meter: CPU of the process", summarize(idles),
                          "% of a core", Target("<=", 0.2)))  # fmt: skip
        report.add(Result("record() -> event at FakeStripe, one call after idle",
                          summarize(lats), "ms", Target("<=", 250.0)))  # fmt: skip
        acked, stored, missing = [], [], []
        for r in range(1 if args.quick else 3):
            a, s, m = kill9(Path(tmp) / f"k{r}.sqlite3", 1.5 if args.quick else 5.0)
            acked.append(a)
            stored.append(s)
            missing.append(m)
        report.add(Result("kill -9 under 4-thread load: acknowledged calls", summarize(acked),
                          "calls", digits=0))  # fmt: skip
        report.add(Result("... stored after restart (acknowledged or in flight)",
                          summarize(stored), "calls", digits=0))  # fmt: skip
        report.check("kill -9: every acknowledged call stored, none doubled",
                     sum(missing) == 0, f"missing {sum(missing)}")  # fmt: skip
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
