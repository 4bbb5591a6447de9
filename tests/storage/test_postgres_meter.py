"""A TokenMeter on a PostgreSQL outbox: delivery, outages, and no usage left on local disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.storage import open_store
from support.postgres import with_schema

KEY = "sk_test_fake"


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh schema; journals under tmp_path; HOME and cwd there too, to catch strays."""
    monkeypatch.setenv("STRIPE_TOKEN_METER_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return with_schema(postgres_url)


def _local_files(root: Path) -> list[str]:
    """Files holding usage: journals and any SQLite file."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and (p.suffix in (".jnl", ".bad") or "sqlite" in p.name)
    )


def _usage(i: int, prefix: str = "call") -> Usage:
    return Usage(
        customer_id="cus_pg",
        model="openai/gpt-4o",
        input_tokens=i + 1,
        output_tokens=1,
        request_id=f"{prefix}-{i}",
    )


def test_a_meter_delivers_through_postgres_and_leaves_no_local_files(
    pg: str, fake_stripe: Any, tmp_path: Path
) -> None:
    meter = TokenMeter(api_key=KEY, api_base=fake_stripe.url, outbox_path=pg)
    for i in range(50):
        meter.record(_usage(i))
    assert meter.flush(20)
    stats = meter.stats()
    assert (stats["delivered"], stats["pending"], stats["dead_lettered"]) == (100, 0, 0)
    assert "postgresql://" in stats["outbox"]
    meter.close()
    values = {e.identifier: e.value for e in fake_stripe.events()}
    assert values == {
        f"call-{i}:{t}:token-billing-tokens": (i + 1 if t == "input" else 1)
        for i in range(50)
        for t in ("input", "output")
    }
    assert _local_files(tmp_path) == []


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


OUTAGE = textwrap.dedent(
    """
    import json, logging, os, sys
    from stripe_token_meter import TokenMeter, Usage
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"])
    for i in range(20):  # never raises, never blocks on the database
        meter.record(Usage(customer_id="cus_pg", model="openai/gpt-4o", input_tokens=i + 1,
                           output_tokens=1, request_id=f"outage-{i}"))
    flushed = meter.flush(2.5)
    stats = meter.stats()
    meter.close(timeout=0.5)
    print(json.dumps([flushed, stats["pending"], stats["queued"], str(stats["last_error"])]))
    """
)


def test_unreachable_postgres_raises_nothing_and_loses_nothing(
    pg: str, fake_stripe: Any, tmp_path: Path
) -> None:
    down = f"postgresql://billing:s3cret-pw@127.0.0.1:{_dead_port()}/db?connect_timeout=1"
    out = subprocess.run(
        [sys.executable, "-c", OUTAGE],
        env=dict(os.environ, URL=fake_stripe.url, OUTBOX=down),
        capture_output=True,
        text=True,
        timeout=60,
    )
    flushed, pending, queued, last_error = json.loads(out.stdout)
    assert (flushed, pending, queued) == (False, None, 20), out.stderr
    assert fake_stripe.events() == []
    logged = [line for line in out.stderr.splitlines() if line.startswith(("ERROR:", "WARNING:"))]
    # One line for the outage (not one per retry), one for the journal left at close.
    assert [line for line in logged if "is unreachable" in line] == logged[:1], logged
    assert len(logged) == 2 and "stays on disk" in logged[1], logged
    assert "s3cret" not in out.stderr + last_error
    assert len(_local_files(tmp_path)) == 1  # the journal keeps them meanwhile

    # The database is back (here: the reachable URL, same journal directory).
    meter = TokenMeter(api_key=KEY, api_base=fake_stripe.url, outbox_path=pg)
    assert meter.flush(20)
    meter.close()
    assert sorted(Counter(fake_stripe.identifiers()).values()) == [1] * 40
    assert _local_files(tmp_path) == []


def test_the_schema_is_made_once_when_many_start_together(postgres_url: str) -> None:
    import threading

    url = with_schema(postgres_url)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            store = open_store(url)
            store.counts()
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


RECORDER = textwrap.dedent(
    """
    import os, sys, time
    from stripe_token_meter import TokenMeter, Usage
    k, n = os.environ["K"], int(os.environ["N"])
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"], lease_seconds=2.0)
    for i in range(n):
        meter.record(Usage(customer_id="cus_" + k, model="openai/gpt-4o", input_tokens=i + 1,
                           output_tokens=2, request_id=f"p{k}-{i}"))
    while meter.stats()["queued"]:
        time.sleep(0.01)
    print("stored", flush=True)
    if os.environ.get("HANG"):
        time.sleep(600)
    ok = meter.flush(60)
    meter.close()
    print("done" if ok else "pending", flush=True)
    """
)


def test_three_processes_one_killed_mid_delivery_exactly_once(
    pg: str, fake_stripe: Any, tmp_path: Path
) -> None:
    n = 1500
    fake_stripe.latency = 0.02  # slow enough to kill one mid-delivery
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER],
            env=dict(os.environ, URL=fake_stripe.url, OUTBOX=pg, K=str(k), N=str(n))
            | ({"HANG": "1"} if k == 0 else {}),
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    victim = procs[0]
    assert victim.stdout is not None and victim.stdout.readline().strip() == "stored"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for i in fake_stripe.identifiers() if i.startswith("p0-")) >= 100:
            break
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    before = sum(1 for i in fake_stripe.identifiers() if i.startswith("p0-"))
    assert 0 < before < 2 * n  # killed mid-delivery
    for p in procs[1:]:
        out, _ = p.communicate(timeout=90)
        assert out.split() == ["stored", "done"]
    got = Counter(fake_stripe.identifiers())
    assert [i for i, c in got.items() if c > 1] == []
    expected = {
        f"p{k}-{i}:{t}:token-billing-tokens": (i + 1 if t == "input" else 2)
        for k in range(3)
        for i in range(n)
        for t in ("input", "output")
    }
    assert {e.identifier: e.value for e in fake_stripe.events()} == expected
    assert {e.identifier: e.customer for e in fake_stripe.events()} == {
        i: f"cus_{i[1]}" for i in expected
    }
    store = open_store(pg)
    counts = store.counts()
    store.close()
    assert (counts["delivered"], counts["pending"], counts["dead"]) == (6 * n, 0, 0)
    assert _local_files(tmp_path) == []


def test_a_forked_child_leaves_the_parents_connection_alone(pg: str) -> None:
    store = open_store(pg)
    store.add([])
    assert store.counts()["pending"] == 0  # connected
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            store.counts()  # a connection of its own
            store.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.counts()["pending"] == 0  # the parent's session is still alive
    store.close()
