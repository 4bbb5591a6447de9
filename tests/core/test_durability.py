"""Crashes and shutdowns: events survive SIGKILL and interpreter exit, and are delivered once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from support.disk import disk_full

RECORDER = textwrap.dedent(
    """
    import os, sys, time
    from stripe_token_meter import TokenMeter, Usage
    url = os.environ["FAKE_STRIPE_URL"]
    if url != "none":
        meter = TokenMeter(api_key="sk_test_fake", api_base=url, outbox_path=os.environ["OUTBOX"],
                           api=os.environ.get("API", "v2"), retry_base_delay=0.05,
                           exit_timeout=float(os.environ.get("EXIT_TIMEOUT", "5")))
    else:  # a key that points nowhere: events must stay pending
        meter = TokenMeter(api_key="sk_test_fake", api_base="http://127.0.0.1:9",
                           outbox_path=os.environ["OUTBOX"], exit_timeout=float(os.environ.get("EXIT_TIMEOUT", "5")))
    n = int(os.environ["N"])
    for i in range(n):
        meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=i + 1, output_tokens=1,
                           request_id=f"call-{i}"))
    while meter.stats()["queued"]:
        time.sleep(0.01)
    print("stored", flush=True)
    if os.environ.get("HANG"):
        time.sleep(600)
    """
)


def _run(fake_url: str, outbox: Path, n: int, **env: str) -> subprocess.Popen[str]:
    full = dict(os.environ, FAKE_STRIPE_URL=fake_url, OUTBOX=str(outbox), N=str(n), **env)
    return subprocess.Popen(
        [sys.executable, "-c", RECORDER], env=full, stdout=subprocess.PIPE, text=True
    )


def _drain(fake: Any, outbox: Path) -> TokenMeter:
    meter = TokenMeter(api_key="sk_test_fake", api_base=fake.url, outbox_path=outbox)
    assert meter.flush(60)
    return meter


def _assert_each_once(fake: Any, n_calls: int) -> None:
    ids = Counter(fake.identifiers())
    assert [k for k, c in ids.items() if c > 1] == []
    assert set(ids) == {
        f"call-{i}:{t}:token-billing-tokens" for i in range(n_calls) for t in ("input", "output")
    }


def test_sigkill_mid_delivery_then_next_process_delivers_rest(
    fake_stripe: Any, tmp_path: Path
) -> None:
    fake_stripe.latency = 0.01  # slow enough to be killed mid-delivery
    outbox = tmp_path / "outbox.sqlite3"
    proc = _run(fake_stripe.url, outbox, 5000, HANG="1")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "stored"
    deadline = time.monotonic() + 30
    while len(fake_stripe.identifiers()) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    delivered_before = len(fake_stripe.identifiers())
    assert 0 < delivered_before < 10_000
    fake_stripe.latency = 0.0
    meter = _drain(fake_stripe, outbox)
    _assert_each_once(fake_stripe, 5000)
    assert meter.stats()["delivered"] == 10_000
    # The killed process's leased rows may have been sent: stamped unconfirmed (for
    # Stripe's 24 h duplicate window), the rest not.
    [(suspect,)] = meter._outbox._query("SELECT COUNT(*) FROM events WHERE unconfirmed IS NOT NULL")
    assert 0 < suspect < 10_000
    meter.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_interpreter_exit_delivers_pending_events_within_bound(
    fake_stripe: Any, tmp_path: Path, host: str
) -> None:
    """By name too, as Stripe is reached: asyncio's default executor (where lookups ran)
    takes no new work at exit, so a process that recorded and exited delivered nothing."""
    outbox = tmp_path / "outbox.sqlite3"
    proc = _run(fake_stripe.url.replace("127.0.0.1", host), outbox, 1000)
    assert proc.wait(30) == 0
    _assert_each_once(fake_stripe, 1000)


def test_exit_with_stripe_unreachable_keeps_events_for_next_start(
    fake_stripe: Any, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    start = time.monotonic()
    proc = _run("none", outbox, 200, EXIT_TIMEOUT="1")
    assert proc.wait(30) == 0
    assert time.monotonic() - start < 15  # the bounded wait, not a hang
    assert fake_stripe.identifiers() == []
    meter = _drain(fake_stripe, outbox)
    _assert_each_once(fake_stripe, 200)
    meter.close()


def test_several_processes_share_one_outbox(fake_stripe: Any, tmp_path: Path) -> None:
    fake_stripe.fail_next(5, status=429, retry_after=0.1)
    fake_stripe.fail_next(5, status=500)
    outbox = tmp_path / "outbox.sqlite3"
    script = RECORDER.replace(
        'request_id=f"call-{i}"', "request_id=f\"call-{i + int(os.environ['OFFSET'])}\""
    )
    procs = []
    for k in range(3):
        env = dict(
            os.environ,
            FAKE_STRIPE_URL=fake_stripe.url,
            OUTBOX=str(outbox),
            N="500",
            OFFSET=str(k * 500),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    for p in procs:
        assert p.wait(60) == 0
    meter = _drain(fake_stripe, outbox)  # picks up anything a process left behind
    _assert_each_once(fake_stripe, 1500)
    meter.close()


def test_records_survive_a_failed_store(local_meter: Any) -> None:
    """Disk full while the worker stores a drain: the records it took are kept in memory,
    counted as queued, stored once there is room again; none lost, none doubled."""
    meter = local_meter()
    meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=1, request_id="a"))
    assert meter.flush(10)

    def fill() -> None:
        for i in range(300):
            meter.record(
                Usage(
                    customer_id="cus_a", model="openai/gpt-4o", input_tokens=2, request_id=f"r{i}"
                )
            )

    with disk_full(meter, fill) as stats:
        # The worker wakes on the first record and may store it (or a few) while the
        # file still has room in its last page; the rest wait.
        assert stats["queued"] + stats["local"] == 301 and stats["queued"] >= 250, stats
        assert not meter.flush(0.5)  # not claimed done while records wait in memory
    assert meter.flush(10)
    stats = meter.stats()
    assert stats["queued"] == 0 and stats["local"] == 301 and stats["recorded"] == 301
