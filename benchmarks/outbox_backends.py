"""Outbox backends side by side: 1, 2 and 4 processes on one SQLite file and on one
PostgreSQL database, delivering to FakeStripe; plus a kill -9 of one process mid-delivery.

Each child builds its own `TokenMeter` on the shared outbox, waits for "go", records its
share of usages (one event each), flushes and closes. Figures: events/s from "go" until
every child is done (recording + delivery). Checked: every identifier accepted by
FakeStripe exactly once, nothing else, every outbox row delivered; after the kill, the
survivors deliver the victim's rows too and no journal file is left behind.

PostgreSQL: `--postgres URL` (a server you run), else the `pgserver` wheel's bundled
server on a unix socket in a temporary directory (`fsync` on, as shipped).

    uv run python benchmarks/outbox_backends.py [--quick] [--runs N] [--events N]
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

# ---------------------------------------------------------------------------- child


def child(url: str, outbox: str, index: int, n: int, tag: str, hang: bool) -> None:
    """Record n usages after "go", then flush and close (or, the victim, wait to be killed)."""
    # The victim sends one request at a time: with 16 in flight its whole backlog was
    # accepted at once, before the parent could see the first event and kill it.
    extra = {"concurrency": 1} if hang else {}
    meter = c.remote_meter({"api": url, "meter_events": url}, outbox, lease_seconds=2.0, **extra)
    customer = f"cus_ob{tag}p{index}"
    rids = [c.request_id(f"{tag}-p{index}", i) for i in range(n)]
    print("READY", flush=True)
    sys.stdin.readline()  # "go"
    for i in range(n):
        c.record_one(meter, customer, rids[i], 1 + i % 3)
    while meter.stats()["queued"]:
        time.sleep(0.005)
    print("STORED", flush=True)
    if hang:
        time.sleep(600)
    ok = meter.flush(timeout=600)
    meter.close(timeout=5)
    print("RESULT " + json.dumps({"ok": ok}), flush=True)


# ---------------------------------------------------------------------------- parent


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="stm-bench-pg-") as d:
        server = pgserver.get_server(d, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def _schema(url: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema=bench_{uuid.uuid4().hex[:10]}"


def one_run(
    backend: str, target: str, procs: int, n: int, tmp: Path, kill: bool = False
) -> dict[str, Any]:
    from stripe_token_meter.storage import open_store
    from stripe_token_meter.testing import FakeStripe

    tag = uuid.uuid4().hex[:8]
    outbox = str(tmp / f"{tag}.sqlite3") if backend == "sqlite" else _schema(target)
    journal = tmp / f"journal-{tag}"
    env = dict(os.environ, STRIPE_TOKEN_METER_JOURNAL_DIR=str(journal))
    with FakeStripe() as fake:
        fake.create_meter(c.EVENT_NAME)
        fake.auto_customers = True
        if kill:
            fake.latency = 0.2  # slow enough to kill the victim mid-delivery
        children = []
        for i in range(procs):
            argv = [sys.executable, __file__, "--child", fake.url, outbox, str(i), str(n), tag]
            if kill and i == 0:
                argv.append("--hang")
            children.append(
                subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            )
        for p in children:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError("a child failed to start; see its stderr above")
        t0 = time.perf_counter()
        for p in children:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        killed_after = None
        if kill:
            victim = children[0]
            assert victim.stdout is not None
            victim.stdout.readline()  # STORED
            prefix = f"cus_ob{tag}p0"
            c.wait_until(lambda: any(e.customer == prefix for e in fake.events()), 60)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            killed_after = sum(1 for e in fake.events() if e.customer == prefix)
            children = children[1:]
        oks = []
        for p in children:
            out, _ = p.communicate(timeout=900)
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            oks.append(line is not None and json.loads(line[7:])["ok"])
        elapsed = time.perf_counter() - t0
        idents = Counter(fake.identifiers())
    expected = {
        c.identifier(c.request_id(f"{tag}-p{i}", j)) for i in range(procs) for j in range(n)
    }
    store = open_store(outbox)
    counts = store.counts()
    store.close()
    left = sorted(p.name for p in journal.rglob("*") if p.is_file()) if journal.exists() else []
    return {
        "rate": procs * n / elapsed,
        "elapsed": elapsed,
        "all_flushed": all(oks),
        "accepted": sum(idents.values()),
        "doubled": sum(1 for v in idents.values() if v > 1),
        "missing": len(expected - idents.keys()),
        "unexpected": len(idents.keys() - expected),
        "delivered_rows": counts["delivered"],
        "pending_rows": counts["pending"],
        "killed_after": killed_after,
        "journal_left": left,
    }


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=None, help="events per process")
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL (default: pgserver)")
    p.add_argument("--child", nargs=5, metavar=("URL", "OUTBOX", "INDEX", "N", "TAG"))
    p.add_argument("--hang", action="store_true")
    p.add_argument("--procs", default=None, help="process counts, e.g. 1,2,4")
    p.add_argument(
        "--busy-ok", action="store_true", help="do not wait for a quiet machine between runs"
    )
    args = p.parse_args()
    if args.child:
        url, outbox, index, n, tag = args.child
        child(url, outbox, int(index), int(n), tag, args.hang)
        return 0
    quick = args.quick
    n = args.events or (100 if quick else 5_000)
    runs = args.runs or (1 if quick else 3)
    procs_list = tuple(int(x) for x in args.procs.split(",")) if args.procs else None
    procs_list = procs_list or ((2,) if quick else (1, 2, 4))
    calm = quick or args.busy_ok
    n_kill = max(n, 1000)  # several batches of 100: the victim is killed with some out
    c.header("outbox backends: SQLite and PostgreSQL", quick, quiet=not calm)
    print(f"  {n:,} events per process; processes {procs_list}; {runs} runs each", flush=True)
    report = c.Report("Outbox backends: one SQLite file vs one PostgreSQL database")
    all_runs: list[dict[str, Any]] = []
    with postgres(args.postgres) as pg, tempfile.TemporaryDirectory(prefix="stm-bench-") as d:
        for backend in ("sqlite", "postgres"):
            for procs in procs_list:
                results = []
                for _ in range(runs):
                    c.wait_quiet(quick=calm)
                    results.append(one_run(backend, pg, procs, n, Path(d)))
                all_runs += results
                report.add(
                    c.Result(
                        f"{backend}, {procs} process{'es' if procs > 1 else ''}",
                        c.summarize([r["rate"] for r in results]),
                        "events/s",
                        digits=0,
                        note=f"{procs * n:,} events/run, recorded and delivered",
                    )
                )
            if quick and backend == "sqlite":
                continue  # the smoke test kills on PostgreSQL only (tests/core covers SQLite)
            kill = one_run(backend, pg, 3, n_kill, Path(d), kill=True)
            all_runs.append(kill)
            report.add(
                c.Result(
                    f"{backend}, 3 processes, one killed -9 mid-delivery",
                    c.summarize([kill["elapsed"]]),
                    "s",
                    note=f"killed after {kill['killed_after']} of its {n_kill} events were sent; "
                    "its rows taken over when their 2 s lease ran out",
                )
            )
    report.check("every survivor's flush() returned True", all(r["all_flushed"] for r in all_runs))
    kills = [r for r in all_runs if r["killed_after"] is not None]
    report.check(
        "each victim was killed mid-delivery",
        all(0 < r["killed_after"] < n_kill for r in kills),
        f"sent before the kill: {[r['killed_after'] for r in kills]} of {n_kill}",
    )
    report.check(
        "every identifier accepted exactly once, nothing else",
        all(not (r["doubled"] or r["missing"] or r["unexpected"]) for r in all_runs),
        "; ".join(
            f"doubled {r['doubled']}, missing {r['missing']}, unexpected {r['unexpected']}"
            for r in all_runs
            if r["doubled"] or r["missing"] or r["unexpected"]
        ),
    )
    report.check(
        "every outbox row delivered",
        all(r["pending_rows"] == 0 and r["delivered_rows"] == r["accepted"] for r in all_runs),
    )
    report.check(
        "no journal file left on local disk",
        all(not r["journal_left"] for r in all_runs if r["journal_left"] is not None),
        "; ".join(str(r["journal_left"]) for r in all_runs if r["journal_left"]),
    )
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
