"""A call is durable once `record()` returns: real processes, real signals, real files.

Each child records calls and then dies the way deployed apps die (SIGTERM with the
default handler, as uvicorn re-raises it; `os._exit`; multiprocessing children; kill -9
under load). A fresh meter on the same outbox then delivers, and every acknowledged
call must reach FakeStripe (through the real stripe SDK) exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import OutboxError, TokenMeter, Usage

EVENT = "token-billing-tokens"

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from stripe_token_meter import TokenMeter, Usage
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"])
    n = int(os.environ["N"])
    for i in range(n):
        meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=i + 1,
                           output_tokens=1, request_id=f"call-{i}"))
    how = os.environ["HOW"]
    if how == "exit":
        os._exit(0)
    print("recorded", flush=True)
    time.sleep(60)
    """
)


def _child(url: str, outbox: Path, n: int, how: str) -> subprocess.Popen[str]:
    env = dict(os.environ, URL=url, OUTBOX=str(outbox), N=str(n), HOW=how)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True
    )


def _deliver(fake: Any, outbox: Path) -> TokenMeter:
    meter = TokenMeter(api_key="sk_test_fake", api_base=fake.url, outbox_path=outbox)
    assert meter.flush(60)
    return meter


def _assert_calls_once(fake: Any, n: int, prefix: str = "call-") -> None:
    ids = Counter(fake.identifiers())
    assert [k for k, c in ids.items() if c > 1] == []
    assert set(ids) == {f"{prefix}{i}:{t}:{EVENT}" for i in range(n) for t in ("input", "output")}


def test_sigterm_with_the_default_handler_loses_nothing(fake_stripe: Any, tmp_path: Path) -> None:
    """uvicorn restores SIGTERM's default action and re-raises it: no atexit runs."""
    fake_stripe.latency = 0.05  # delivery is still under way when the signal lands
    outbox = tmp_path / "outbox.sqlite3"
    proc = _child(fake_stripe.url, outbox, 2000, "term")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "recorded"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    fake_stripe.latency = 0.0
    meter = _deliver(fake_stripe, outbox)
    _assert_calls_once(fake_stripe, 2000)
    assert meter.stats()["recovered"] > 0  # the journal was needed: it was not all stored
    meter.close()
    assert list((tmp_path / "outbox.sqlite3.journal").glob("*.jnl")) == []


def test_os_exit_right_after_recording_loses_nothing(fake_stripe: Any, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    proc = _child(fake_stripe.url, outbox, 1000, "exit")
    assert proc.wait(30) == 0
    meter = _deliver(fake_stripe, outbox)
    _assert_calls_once(fake_stripe, 1000)
    meter.close()


POOL = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from stripe_token_meter import TokenMeter, Usage
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"])

    def work(k):
        for i in range(250):
            meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=1,
                               output_tokens=1, request_id=f"call-{k * 250 + i}"))
        return k

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(3) as pool:  # children leave through os._exit: no atexit
            assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]
            pool.close()
            pool.join()
        ok = meter.flush(60)  # the parent's flush takes the children's journals
        print("flushed", ok, meter.stats()["recovered"] > 0, flush=True)
    """
)


def test_multiprocessing_fork_children_lose_nothing(fake_stripe: Any, tmp_path: Path) -> None:
    script = tmp_path / "pool_app.py"
    script.write_text(POOL)
    env = dict(os.environ, URL=fake_stripe.url, OUTBOX=str(tmp_path / "outbox.sqlite3"))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["flushed", "True", "True"]
    _assert_calls_once(fake_stripe, 1000)


LOAD = textwrap.dedent(
    """
    import os, sys, threading
    from stripe_token_meter import TokenMeter
    meter = TokenMeter(outbox_path=os.environ["OUTBOX"])  # the local ledger: pure storage

    def run(t):
        i = 0
        while True:
            meter.record(model="openai/gpt-4o", customer_id="cus_a", input_tokens=1,
                         output_tokens=1, request_id=f"t{t}-{i}")
            if i % 500 == 499:  # acknowledged: record() has returned for all up to i
                os.write(1, f"{t} {i}\\n".encode())
            i += 1

    for t in range(4):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_kill_9_under_four_thread_load_keeps_every_acknowledged_call(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    env = dict(os.environ, OUTBOX=str(outbox))
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(3.0)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    acked: dict[int, int] = {}
    for line in proc.stdout.read().splitlines():
        t, i = map(int, line.split())
        acked[t] = max(acked.get(t, -1), i)
    assert sorted(acked) == [0, 1, 2, 3] and min(acked.values()) >= 999
    meter = TokenMeter(outbox_path=outbox)
    assert meter.flush(120)
    stored = Counter(
        ident.split(":")[0]
        for (ident,) in meter._outbox._query("SELECT identifier FROM events WHERE status='local'")
    )
    meter.close()
    assert [k for k, c in stored.items() if c != 2] == []  # input and output, never doubled
    missing = [f"t{t}-{i}" for t, last in acked.items() for i in range(last + 1)]
    missing = [r for r in missing if r not in stored]
    assert missing == []
    for t, last in acked.items():  # nothing invented past what was recorded
        assert max(int(r.split("-")[1]) for r in stored if r.startswith(f"t{t}-")) >= last


FORK_EARLY = textwrap.dedent(
    """
    import os, sys
    from stripe_token_meter import TokenMeter, Usage
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"])
    meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=1,
                       request_id="parent" + os.environ["ATTEMPT"]))
    pid = os.fork()  # the worker thread has only just started
    if pid == 0:
        meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=1,
                           request_id="child" + os.environ["ATTEMPT"]))
        ok = meter.flush(20) and meter.stats()["worker_restarts"] == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), meter.flush(20), flush=True)
    """
)


def test_a_fork_while_the_worker_starts_leaves_the_child_a_working_meter(
    fake_stripe: Any, tmp_path: Path
) -> None:
    for attempt in range(3):
        env = dict(
            os.environ,
            URL=fake_stripe.url,
            OUTBOX=str(tmp_path / f"o{attempt}.sqlite3"),
            ATTEMPT=str(attempt),
        )
        out = subprocess.run(
            [sys.executable, "-c", FORK_EARLY], env=env, capture_output=True, text=True, timeout=90
        )
        assert out.stdout.split() == ["0", "True"], out.stderr
    ids = Counter(fake_stripe.identifiers())
    assert ids == {f"{who}{k}:input:{EVENT}": 1 for who in ("parent", "child") for k in range(3)}


class Crash(BaseException):
    """Escapes the worker's per-record containment: only a restart recovers from it."""


def test_a_crashed_worker_restarts_and_loses_nothing(
    make_meter: Any, fake_stripe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    crashed: list[str] = []

    def normalizer(provider: str | None, model: str) -> str:
        if not crashed:
            crashed.append(model)
            raise Crash("worker bug")
        return model

    meter = make_meter(normalize_models=normalizer)
    meter.record(Usage(customer_id="cus_a", model="m1", input_tokens=5, request_id="r1"))
    assert meter.flush(20)
    stats = meter.stats()
    assert stats["worker_restarts"] == 1 and "worker_crashed" in stats["last_error"]
    assert sorted(fake_stripe.identifiers()) == [f"r1:input:{EVENT}"]
    assert sum("crashed" in r.getMessage() for r in caplog.records) == 1


def test_outbox_and_journal_files_are_private(local_meter: Any, tmp_path: Path) -> None:
    meter = local_meter(outbox_path=tmp_path / "new" / "outbox.sqlite3")
    meter.record(Usage(customer_id="cus_a", model="m", input_tokens=1, request_id="r"))
    journal = tmp_path / "new" / "outbox.sqlite3.journal"
    (segment,) = journal.glob("*.jnl")
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    assert meter.flush(5)
    for p in (tmp_path / "new").glob("outbox.sqlite3*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_a_deleted_outbox_is_recreated_with_what_is_still_pending(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    # Stripe unreachable: everything stays pending in the outbox.
    meter = TokenMeter(api_key="sk_test_fake", api_base="http://127.0.0.1:9", outbox_path=outbox)
    for i in range(400):
        meter.record(Usage(customer_id="cus_a", model="m", input_tokens=1, request_id=f"r{i}"))
    deadline = time.monotonic() + 10
    while meter.stats()["pending"] != 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{outbox}{suffix}").unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while not outbox.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    n = -1
    while n != 400 and time.monotonic() < deadline:
        time.sleep(0.1)
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(outbox) as conn:
            (n,) = conn.execute("SELECT COUNT(*) FROM events WHERE status='pending'").fetchone()
    assert n == 400
    assert meter.stats()["pending"] == 400  # the meter uses the new file
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600
    meter.close(timeout=0)


def test_bad_outbox_files_get_a_named_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(OutboxError, match="not a SQLite database") as e:
        TokenMeter(outbox_path=garbage)
    assert e.value.path == str(garbage)
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(OutboxError, match="not a stripe-token-meter outbox"):
        TokenMeter(outbox_path=foreign)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="cannot be created"):
        TokenMeter(outbox_path=blocker / "outbox.sqlite3")
    with pytest.raises(OutboxError, match="'mysql://' outboxes are not supported") as e:
        TokenMeter(outbox_path="mysql://user:secret@db.example/billing")
    assert "secret" not in str(e.value)
    assert not Path("mysql:").exists()


FULL = textwrap.dedent(
    """
    import logging, os, resource, signal, sys
    from stripe_token_meter import TokenMeter, Usage
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    meter = TokenMeter(outbox_path=os.environ["OUTBOX"], max_queue=1000)
    meter.record(Usage(customer_id="cus_a", model="m", input_tokens=1, request_id="first"))
    assert meter.flush(10)
    # The disk is full: no file of this process may grow any further (EFBIG).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    size = max(os.path.getsize(os.environ["OUTBOX"]), 1 << 16)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    for i in range(20000):
        meter.record(Usage(customer_id="cus_a", model="m", input_tokens=1, request_id=f"r{i}"))
    s = meter.stats()
    print(s["queued"], s["dropped"], s["not_journaled"], s["recorded"], flush=True)
    os._exit(0)
    """
)


def test_a_full_disk_keeps_memory_bounded_and_says_so_once(tmp_path: Path) -> None:
    env = dict(os.environ, OUTBOX=str(tmp_path / "outbox.sqlite3"))
    out = subprocess.run(
        [sys.executable, "-c", FULL], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    queued, dropped, held, recorded = map(int, out.stdout.split())
    journaled = 20000 - held - dropped
    assert dropped > 0 and journaled > 0  # the limit was reached both ways
    # every record accepted is stored or still waits; memory holds at most max_queue
    assert journaled + held == (recorded - 1) + queued
    assert queued <= journaled + 1000
    lines = [line for line in out.stderr.splitlines() if "stripe-token-meter" in line]
    assert 1 <= len(lines) <= 6, lines  # one line per condition, not one per call


WRITER = textwrap.dedent(
    """
    import os
    from stripe_token_meter import TokenMeter, Usage
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"], event_name="custom-tokens",
                       default_customer_id="cus_writer", token_types="detailed")
    for i in range(20):
        meter.record(Usage(model="openai/gpt-4o", input_tokens=10, cached_input_tokens=5,
                           output_tokens=2, request_id=f"w-{i}"))
    os._exit(0)
    """
)


def test_a_taken_over_journal_is_billed_with_its_writers_settings(
    fake_stripe: Any, tmp_path: Path
) -> None:
    """Another process (or `stripe-token-meter flush`) configured differently takes the
    journal over: the writer's event name, default customer and token types still apply."""
    fake_stripe.create_meter("custom-tokens")
    outbox = tmp_path / "outbox.sqlite3"
    env = dict(os.environ, URL=fake_stripe.url, OUTBOX=str(outbox))
    subprocess.run([sys.executable, "-c", WRITER], env=env, check=True, timeout=60)
    meter = _deliver(fake_stripe, outbox)  # default event name, no default customer
    meter.close()
    events = fake_stripe.events()
    assert {(e.event_name, e.customer) for e in events} == {("custom-tokens", "cus_writer")}
    by_type = Counter(e.payload["token_type"] for e in events)
    assert by_type == {"input": 20, "cached_input": 20, "output": 20}
    assert sum(e.value for e in events) == 20 * 17
    assert meter.stats()["invalid"] == 0
