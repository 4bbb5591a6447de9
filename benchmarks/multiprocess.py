"""Several processes: 4 workers (like gunicorn's) sharing one outbox file, under 429s and 500s.

Each child process builds its own `TokenMeter` on the same outbox file, waits for "go",
records its share of usages (one event each) and flushes. FakeStripe runs in this parent
process (in a thread, apart from the children doing the work) so that a thread here can
call `fake.fail_next(...)` every `--fault-every` seconds: 429 with Retry-After on the v2
stream, 500 on the stream and on session creation. Checked: every identifier accepted
exactly once (FakeStripe's own list), nothing else accepted, every outbox row delivered.

    uv run python benchmarks/multiprocess.py [--quick] [--runs N] [--procs 4] [--events 50000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

STREAM = "/v2/billing/meter_event_stream"
SESSION = "/v2/billing/meter_event_session"


# ---------------------------------------------------------------------------- child


def child(url: str, outbox: str, index: int, n: int, tag: str, timeout: float) -> None:
    """One 'gunicorn worker': record n usages, flush, report as JSON on stdout."""
    meter = c.remote_meter({"api": url, "meter_events": url}, outbox)
    customer = f"cus_mp{tag}p{index}"
    rids = [c.request_id(f"{tag}-p{index}", i) for i in range(n)]
    print("READY", flush=True)
    sys.stdin.readline()  # "go"
    t0 = time.perf_counter()
    for i in range(n):
        c.record_one(meter, customer, rids[i], 1 + i % 3)
    recorded = time.perf_counter() - t0
    ok = meter.flush(timeout=timeout)
    if not ok:
        print(f"flush timed out:\n{c.diagnose(meter)}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    delivered_here = meter._health.delivered
    meter.close(timeout=5)
    out = {"ok": ok, "record_s": recorded, "elapsed": elapsed, "delivered_here": delivered_here}
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- parent


class FaultInjector:
    """Fails a share of the traffic: per `every` stream requests, one 429 (Retry-After) and
    one 500; plus a 500 on the first session creation. Faults are only added as traffic
    consumes them, so they never pile up into a wall of errors."""

    def __init__(self, fake: Any, every: int, retry_after: float) -> None:
        self.fake = fake
        self.every = every
        self.retry_after = retry_after
        self.injected: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.fake.fail_next(1, status=500, retry_after=None, path_prefix=SESSION)
        self.injected["500 session"] += 1
        seen = 0
        while not self._stop.wait(0.02):
            n = self.fake.requests[("POST", STREAM)]
            if n - seen >= self.every or seen == 0:
                seen = max(n, 1)
                self.fake.fail_next(1, status=429, retry_after=self.retry_after, path_prefix=STREAM)
                self.fake.fail_next(1, status=500, retry_after=None, path_prefix=STREAM)
                self.injected["429 stream"] += 1
                self.injected["500 stream"] += 1

    def __enter__(self) -> FaultInjector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.fake.clear_faults()


def one_run(procs: int, n: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from stripe_token_meter.testing import FakeStripe

    tag = uuid.uuid4().hex[:8]
    outbox = str(tmp / f"shared-{tag}.sqlite3")
    with FakeStripe(limits=False) as fake:  # a throughput experiment
        fake.create_meter(c.EVENT_NAME)
        fake.auto_customers = True
        timeout = args.timeout or (60.0 if args.quick else 1800.0)
        cmd = [sys.executable, __file__, "--child", fake.url, outbox, "", str(n), tag]
        cmd += ["--timeout", str(timeout)]
        children = []
        for i in range(procs):
            argv = list(cmd)
            argv[5] = str(i)
            children.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for p in children:  # imports done, meters built
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError("a child failed to start; see its stderr above")
        busy = c.BusyMeter()
        with FaultInjector(fake, args.fault_every, args.retry_after) as faults:
            t0 = time.perf_counter()
            for p in children:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            results = []
            for p in children:
                out, _ = p.communicate(timeout=3600)
                line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"child exited {p.returncode} without a result")
                results.append(json.loads(line[7:]))
            elapsed = time.perf_counter() - t0
        idents = Counter(fake.identifiers())
        reports = Counter(r["code"] for r in fake.error_reports)
        stream_requests = fake.requests[("POST", STREAM)]
        internal = len(fake.internal_errors)
    expected = {
        c.identifier(c.request_id(f"{tag}-p{i}", j)) for i in range(procs) for j in range(n)
    }
    with sqlite3.connect(outbox) as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM events GROUP BY status"))
        attempts = db.execute("SELECT SUM(attempts > 0), MAX(attempts) FROM events").fetchone()
    return {
        "rate": procs * n / elapsed,
        "elapsed": elapsed,
        "record_s": max(r["record_s"] for r in results),
        "all_flushed": all(r["ok"] for r in results),
        "delivered_by_process": [r["delivered_here"] for r in results],
        "accepted": sum(idents.values()),
        "doubled": sum(1 for v in idents.values() if v > 1),
        "missing": len(expected - idents.keys()),
        "unexpected": len(idents.keys() - expected),
        "duplicate_sends": reports.get("duplicate_meter_event", 0),
        "other_reports": sum(v for k, v in reports.items() if k != "duplicate_meter_event"),
        "faults": dict(faults.injected),
        "stream_requests": stream_requests,
        "outbox": statuses,
        "retried_rows": attempts[0] or 0,
        "max_attempts": attempts[1] or 0,
        "internal_errors": internal,
        "busy": busy.fraction(),
    }


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--events", type=int, default=None, help="events per process")
    p.add_argument(
        "--fault-every", type=int, default=20, help="a 429 and a 500 per this many stream requests"
    )
    p.add_argument("--retry-after", type=float, default=0.5, help="Retry-After of the 429s")
    p.add_argument("--timeout", type=float, default=None, help="flush timeout per child, s")
    p.add_argument("--child", nargs=5, metavar=("URL", "OUTBOX", "INDEX", "N", "TAG"))
    args = p.parse_args()
    if args.child:
        url, outbox, index, n, tag = args.child
        child(url, outbox, int(index), int(n), tag, args.timeout or 1800.0)
        return 0
    quick = args.quick
    n = args.events or (1_000 if quick else 50_000)
    runs = args.runs or (1 if quick else 3)
    c.header("several processes, one outbox", quick)
    print(
        f"  {args.procs} processes x {n:,} events; faults: one 429 (Retry-After "
        f"{args.retry_after} s) and one 500 per {args.fault_every} stream requests, a 500 on "
        f"the first session; {runs} runs",
        flush=True,
    )
    report = c.Report("Several processes sharing one outbox")
    results = []
    with tempfile.TemporaryDirectory(prefix="stm-bench-") as d:
        for run in range(runs):
            c.wait_quiet(quick=quick)
            r = one_run(args.procs, n, Path(d), args)
            results.append(r)
            print(
                f"  run {run + 1}: {r['rate']:,.0f} events/s ({r['elapsed']:.1f} s; recording "
                f"{r['record_s']:.1f} s); delivered per process {r['delivered_by_process']}; "
                f"faults {r['faults']}; {r['retried_rows']:,} rows retried (max attempts "
                f"{r['max_attempts']}); duplicate sends {r['duplicate_sends']}; stream requests "
                f"{r['stream_requests']:,}; machine busy {r['busy']:.0%}",
                flush=True,
            )
    total = args.procs * n
    report.add(
        c.Result(
            f"{args.procs} processes, one outbox, with 429/500 faults",
            c.summarize([r["rate"] for r in results]),
            "events/s",
            digits=0,
            note=f"{total:,} events/run; FakeStripe in the parent process",
        )
    )
    report.add(c.Result("wall time per run", c.summarize([r["elapsed"] for r in results]), "s"))
    report.check(
        "every child's flush() returned True",
        all(r["all_flushed"] for r in results),
    )
    report.check(
        "every identifier accepted exactly once, nothing else",
        all(
            r["accepted"] == total and not (r["doubled"] or r["missing"] or r["unexpected"])
            for r in results
        ),
        "; ".join(
            f"accepted {r['accepted']}, doubled {r['doubled']}, missing {r['missing']}, "
            f"unexpected {r['unexpected']}"
            for r in results
        ),
    )
    report.check(
        "every outbox row delivered",
        all(r["outbox"] == {"delivered": total} for r in results),
        f"{[r['outbox'] for r in results]}",
    )
    report.check(
        "faults were injected and retried",
        all(r["retried_rows"] > 0 for r in results),
        f"rows retried {[r['retried_rows'] for r in results]}",
    )
    report.check(
        "FakeStripe had no internal errors or rejected events",
        all(r["internal_errors"] == 0 and r["other_reports"] == 0 for r in results),
    )
    print(
        f"  duplicate sends (harmless, FakeStripe deduplicated them): "
        f"{[r['duplicate_sends'] for r in results]}",
        flush=True,
    )
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
