"""Shared helpers for the benchmark scripts: statistics, machine info, FakeStripe in a subprocess.

Why one module: every script reports the same way (median and spread over repeated runs,
compared with its target) and talks to the same out-of-process FakeStripe, so the numbers
in benchmarks/README.md are comparable across scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import queue
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("STRIPE_API_KEY", None)

EVENT_NAME = "token-billing-tokens"
FAKE_KEY = "sk_live_fake"
"""A live-mode key: the meter paces to Stripe's live limits (v1 900/s, v2 9,000/s), above
what these throughput benchmarks reach; a test key would pace at a sandbox's 22/s. The
FakeStripe they start runs with `--no-limits` (throughput experiments; see limits.py)."""
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


# ---------------------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    """Every script takes `--quick` (a tiny run for smoke tests) and `--runs`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny version that finishes in seconds")
    p.add_argument("--runs", type=int, default=None, help="repetitions (default per script)")
    return p


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread (min..max) of one figure over repeated runs."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 2) -> str:
        if self.n == 1:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} [{self.low:,.{digits}f}..{self.high:,.{digits}f}]"


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, `q` in [0, 100]."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[k]


def timer_overhead_ns(samples: int = 200_000) -> float:
    """Median cost of an empty `perf_counter_ns()` pair, to read per-call figures against."""
    pc = time.perf_counter_ns
    out = [0] * samples
    for i in range(samples):
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0
    return float(statistics.median(out))


@dataclass(frozen=True, slots=True)
class Target:
    """`<= 2 us` or `>= 20000 events/s`: what the issue asks for."""

    op: str
    value: float

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def ratio(self, measured: float) -> float:
        return measured / self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:,g}"


@dataclass
class Result:
    """One row of a script's results table."""

    name: str
    summary: Summary
    unit: str
    target: Target | None = None
    note: str = ""
    digits: int = 2

    def verdict(self) -> str:
        if self.target is None:
            return ""
        ok = self.target.met(self.summary.median)
        return f"{'MET' if ok else 'MISSED'} ({self.target.ratio(self.summary.median):.2f}x target)"


@dataclass
class Report:
    """Collects results, prints each as it comes and a markdown table at the end."""

    title: str
    results: list[Result] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, result: Result) -> Result:
        self.results.append(result)
        target = f"  target {result.target} {result.unit}" if result.target else ""
        print(
            f"  {result.name}: {result.summary.fmt(result.digits)} {result.unit}"
            f"{target}  {result.verdict()}  {result.note}".rstrip(),
            flush=True,
        )
        return result

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        print(f"  check {name}: {'OK' if ok else 'FAILED'} {detail}".rstrip(), flush=True)
        return ok

    def print_table(self) -> None:
        print(f"\n### {self.title}\n")
        print("| figure | median [min..max] | unit | target | verdict | note |")
        print("|---|---|---|---|---|---|")
        for r in self.results:
            target = str(r.target) if r.target else ""
            print(
                f"| {r.name} | {r.summary.fmt(r.digits)} | {r.unit} | {target} | {r.verdict()} "
                f"| {r.note} |"
            )
        for name, ok, detail in self.checks:
            print(f"| check: {name} | {'OK' if ok else 'FAILED'} |  |  |  | {detail} |")
        print(flush=True)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


# ---------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else "unknown"


def machine_line() -> str:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 0
    return (
        f"machine: nproc={ncpu}, cpu={cpu_model()!r}, python={platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def process_cpu() -> float:
    """CPU seconds (user + system) this process has used so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def machine_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over `interval` (other engineers' test runs show up here)."""
    b0, t0 = _cpu_times()
    time.sleep(interval)
    b1, t1 = _cpu_times()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_quiet(threshold: float = 0.15, timeout: float = 300.0, quick: bool = False) -> float:
    """Wait (up to `timeout`) until the machine is mostly idle before measuring a run."""
    if quick:
        return 0.0
    deadline = time.monotonic() + timeout
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  machine {busy:.0%} busy: waiting for it to quieten", flush=True)
        busy = machine_busy(5.0)
    return busy


class BusyMeter:
    """Whole-machine CPU use between start and stop: tells a noisy run from a quiet one."""

    def __init__(self) -> None:
        self._b0, self._t0 = _cpu_times()

    def fraction(self) -> float:
        b1, t1 = _cpu_times()
        return (b1 - self._b0) / (t1 - self._t0) if t1 > self._t0 else 0.0


def header(title: str, quick: bool, *, quiet: bool = True) -> None:
    print(f"== {title}{' (--quick)' if quick else ''}")
    print(machine_line(), flush=True)
    if quiet and not quick:
        busy = wait_quiet()
        print(f"  machine busy before start: {busy:.0%} (loadavg {os.getloadavg()})", flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


# ---------------------------------------------------------------------------- FakeStripe


class FakeStripeProcess:
    """`python -m stripe_token_meter.testing` in its own process (its CPU is not ours).

    Reads the `url=` and `meter mtr_...` lines it prints; on stop, parses its
    "N events accepted, M error reports" line from stderr.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        event_name: str = EVENT_NAME,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or 0
        self.event_name = event_name
        self.extra_args = list(extra_args)
        self.url = ""
        self.meter_id = ""
        self.accepted: int | None = None
        self.error_reports: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 30.0) -> FakeStripeProcess:
        cmd = [
            sys.executable,
            "-m",
            "stripe_token_meter.testing",
            "--port",
            str(self.port),
            "--meter",
            self.event_name,
            "--auto-customers",
            "--no-limits",
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (self.url and self.meter_id):
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError("FakeStripe did not start (no url/meter line printed)")
            if line.startswith("url="):
                self.url = line[4:].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
            elif line.startswith("meter ") and f"event_name={self.event_name}" in line:
                self.meter_id = line.split()[1]
        return self

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def base_addresses(self) -> dict[str, str]:
        return {"api": self.url, "meter_events": self.url}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        if self._proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        m = re.search(r"(\d+) events accepted, (\d+) error reports", err or "")
        if m:
            self.accepted, self.error_reports = int(m.group(1)), int(m.group(2))

    def __enter__(self) -> FakeStripeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sync_client(base_addresses: dict[str, str]) -> Any:
    """A synchronous `stripe.StripeClient` for the benchmark's own checks (not the meter's)."""
    import stripe

    return stripe.StripeClient(
        FAKE_KEY,
        base_addresses=cast(Any, base_addresses),
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


def remote_meter(base_addresses: dict[str, str], outbox: Path | str, **kwargs: Any) -> Any:
    """A `TokenMeter` delivering through the real SDK to FakeStripe (own outbox file).

    Configured as users do (a key and an API base), so the meter makes its own clients.
    """
    from stripe_token_meter import TokenMeter

    return TokenMeter(
        api_key=FAKE_KEY, api_base=base_addresses["meter_events"], outbox_path=outbox, **kwargs
    )


def summed_value(client: Any, meter_id: str, customer: str, start: int, end: int) -> float:
    """The meter's aggregated value for `customer` in [start, end) via event summaries."""
    page = client.v1.billing.meters.event_summaries.list(
        meter_id, {"customer": customer, "start_time": start, "end_time": end, "limit": 100}
    )
    return float(sum(s.aggregated_value for s in page.auto_paging_iter()))


def probe_held(
    client: Any, identifiers: Sequence[str], customer: str, event_name: str = EVENT_NAME
) -> tuple[int, int]:
    """(held, missing) for identifiers, by re-posting each on v1: Stripe answers a held
    identifier with 400 'An event already exists'. A missing one gets accepted (value 0)."""
    import stripe

    held = missing = 0
    now = int(time.time())
    for ident in identifiers:
        try:
            client.v1.billing.meter_events.create(
                {
                    "event_name": event_name,
                    "identifier": ident,
                    "payload": {"stripe_customer_id": customer, "value": "0"},
                    "timestamp": now,
                }
            )
            missing += 1
        except stripe.InvalidRequestError as exc:
            if "already exists" in str(exc):
                held += 1
            else:
                raise
    return held, missing


def minute_window(t0: float, t1: float) -> tuple[int, int]:
    """An [start, end) window on minute boundaries that covers t0..t1 (as Stripe asks)."""
    start = int(t0 // 60 * 60) - 60
    end = int(t1 // 60 * 60) + 120
    return start, end


@contextlib.contextmanager
def rss_sampler(interval: float = 0.05) -> Iterator[list[float]]:
    """Samples this process's RSS (MB) in a thread; yields the list of samples."""
    samples: list[float] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            samples.append(current_rss_mb())
            stop.wait(interval)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        stop.set()
        t.join()


def diagnose(meter: Any) -> str:
    """What a stalled meter is doing: stats, the worker's hold, outbox rows by status/attempts."""
    worker = getattr(meter, "_worker", None)
    hold = getattr(worker, "hold_until", 0.0) - time.time() if worker is not None else None
    alive = getattr(worker, "alive", None)
    rows = meter._outbox._query(
        "SELECT status, attempts, COUNT(*), MIN(next_attempt), MAX(next_attempt), "
        "MAX(lease_until), MAX(error_code) FROM events GROUP BY status, attempts"
    )
    now = time.time()
    lines = [f"stats={meter.stats()}", f"worker alive={alive} hold_until-now={hold}"]
    for status, attempts, n, lo, hi, lease, code in rows:
        lines.append(
            f"  {status} attempts={attempts}: {n} rows, next_attempt-now "
            f"[{lo - now:.1f}..{hi - now:.1f}] lease_until-now {lease - now:.1f} code={code}"
        )
    return "\n".join(lines)


def identifier(request_id: str, token_type: str = "input", event_name: str = EVENT_NAME) -> str:
    """The identifier the core gives an event (its own function, so the format may change)."""
    from stripe_token_meter import make_identifier

    make: Any = make_identifier
    try:
        return str(make(request_id, token_type, event_name))
    except TypeError:  # older core: <request_id>:<token_type>
        return str(make(request_id, token_type))


def request_id(tag: str, i: int) -> str:
    """A reproducible, uniformly random-looking request id shaped like the run ids adapters
    pass (LangChain run_id, LlamaIndex span uuid): random keys cost the outbox's unique
    index far more than sequential ones, so benchmarks must not use `f"{tag}-{i}"`."""
    digest = hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest))


def record_one(meter: Any, customer: str, request_id: str, prompt_tokens: int) -> None:
    """One LLM call of one event, in the form the adapters use (`counts="openai"`)."""
    meter.record(
        counts="openai",
        model="gpt-4o-2024-08-06",
        provider="openai",
        prompt_tokens=prompt_tokens,
        completion_tokens=0,
        customer_id=customer,
        request_id=request_id,
    )
