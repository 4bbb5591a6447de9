"""Pre-aggregation: fewer, larger events, each call still counted exactly once.

Real SQLite outboxes, the real stripe SDK to FakeStripe, real processes killed with
SIGKILL. Sums are compared per (customer, token type) with what was recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import ConfigurationError, TokenMeter, Usage

EVENT = "token-billing-tokens"
CUSTOMERS = ("cus_a", "cus_b", "cus_c")


def _sums(fake: Any) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for e in fake.events():
        out[(e.customer, e.payload["token_type"])] += e.value
    return dict(out)


def _expected(calls: list[tuple[str, int, int]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for customer, inp, outp in calls:
        out[(customer, "input")] += inp
        out[(customer, "output")] += outp
    return dict(out)


def test_3000_calls_over_5s_in_2s_windows_become_few_events_with_exact_sums(
    make_meter: Any, fake_stripe: Any
) -> None:
    meter = make_meter(aggregate_seconds=2)
    calls = []
    start = time.monotonic()
    for i in range(3000):
        customer = CUSTOMERS[i % 3]
        inp, outp = 10 + i % 7, 1 + i % 5
        meter.record(
            Usage(
                customer_id=customer,
                model="openai/gpt-4o",
                input_tokens=inp,
                output_tokens=outp,
                request_id=f"call-{i}",
                dimensions={"feature": "chat"},
            )
        )
        calls.append((customer, inp, outp))
        if i % 100 == 99:
            time.sleep(max(0.0, start + (i + 1) * 5.0 / 3000 - time.monotonic()))
    assert meter.flush(30)
    events = fake_stripe.events()
    assert len(events) <= 30, len(events)
    assert _sums(fake_stripe) == _expected(calls)
    for e in events:
        assert e.identifier.startswith("stmw_")
        assert e.timestamp % 2 == 0  # the window's start
        assert e.payload["model"] == "openai/gpt-4o" and e.payload["feature"] == "chat"
    assert Counter(e.identifier for e in events).most_common(1)[0][1] == 1
    assert meter.stats()["aggregating"] == 0


def test_a_call_recorded_twice_counts_once(make_meter: Any, fake_stripe: Any) -> None:
    meter = make_meter(aggregate_seconds=60)
    for _ in range(3):
        meter.record(
            Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=7, request_id="r-1")
        )
    meter.record(
        Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=5, request_id="r-2")
    )
    assert meter.flush(10)
    assert _sums(fake_stripe) == {("cus_a", "input"): 12}
    assert meter.stats()["duplicates"] == 2


def test_a_call_after_its_window_was_sent_is_a_new_generation(
    make_meter: Any, fake_stripe: Any
) -> None:
    """flush() sends the open window; a later call with the same window start must be
    billed by a second event with its own identifier, not lost to Stripe's dedup."""
    meter = make_meter(aggregate_seconds=3600)
    ts = time.time()
    meter.record(
        Usage(
            customer_id="cus_a",
            model="openai/gpt-4o",
            input_tokens=3,
            request_id="x1",
            timestamp=ts,
        )
    )
    assert meter.flush(10)
    meter.record(
        Usage(
            customer_id="cus_a",
            model="openai/gpt-4o",
            input_tokens=4,
            request_id="x2",
            timestamp=ts,
        )
    )
    meter.record(
        Usage(
            customer_id="cus_a",
            model="openai/gpt-4o",
            input_tokens=3,
            request_id="x1",
            timestamp=ts,
        )
    )
    assert meter.flush(10)
    events = sorted(fake_stripe.events(), key=lambda e: e.identifier)
    assert [e.value for e in events] == [3, 4]
    assert len({e.identifier for e in events}) == 2
    assert {e.timestamp for e in events} == {int(ts) - int(ts) % 3600}


def test_local_ledger_windows_close_as_local_rows(local_meter: Any) -> None:
    meter = local_meter(aggregate_seconds=1)
    for i in range(10):
        meter.record(
            Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=1, request_id=f"l{i}")
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and meter.stats()["local"] == 0:
        time.sleep(0.1)
    stats = meter.stats()
    assert stats["local"] >= 1 and stats["recorded"] == 10


def test_cancel_of_a_summed_call_is_refused_with_the_reason(make_meter: Any) -> None:
    meter = make_meter(aggregate_seconds=3600)
    meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=3, request_id="c1"))
    assert meter.flush(10)
    why = meter._outbox.withdraw(f"c1:input:{EVENT}")
    assert why is not None and "aggregation window" in why and "stmw_" in why


@pytest.mark.parametrize("bad", [0, -1, 1.5, 86_401, "abc", True])
def test_bad_window_lengths_are_refused(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="aggregate_seconds"):
        TokenMeter(outbox_path=tmp_path / "o.db", aggregate_seconds=bad)  # type: ignore[arg-type]


def test_env_var_turns_it_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_AGGREGATE_SECONDS", "30")
    meter = TokenMeter(outbox_path=tmp_path / "o.db")
    assert meter.aggregate_seconds == 30
    meter.close()
    monkeypatch.setenv("STRIPE_AGGREGATE_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="STRIPE_AGGREGATE_SECONDS"):
        TokenMeter(outbox_path=tmp_path / "o2.db")


CHILD = textwrap.dedent(
    """
    import os, sys
    from stripe_token_meter import TokenMeter, Usage
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"], aggregate_seconds=2)
    first, n = int(os.environ["FIRST"]), int(os.environ["N"])
    customers = ("cus_a", "cus_b", "cus_c")
    for i in range(first, n):
        meter.record(Usage(customer_id=customers[i % 3], model="openai/gpt-4o",
                           input_tokens=10 + i % 7, output_tokens=1 + i % 5,
                           request_id=f"call-{i}"))
        sys.stdout.write(f"{i}\\n"); sys.stdout.flush()   # acknowledged
    meter.flush(30)
    print("done", flush=True)
    """
)


def _child(url: str, outbox: Path, first: int, n: int) -> subprocess.Popen[str]:
    env = dict(os.environ, URL=url, OUTBOX=str(outbox), FIRST=str(first), N=str(n))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True
    )


def test_kill_9_mid_way_then_rerecording_from_the_last_ack_sums_exactly(
    fake_stripe: Any, tmp_path: Path
) -> None:
    n = 3000
    outbox = tmp_path / "outbox.sqlite3"
    proc = _child(fake_stripe.url, outbox, 0, n)
    assert proc.stdout is not None
    last = -1
    while last < 1200:
        line = proc.stdout.readline()
        assert line, "child ended early"
        last = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # A restart re-records from its last acknowledged call (that one is a repeat).
    proc = _child(fake_stripe.url, outbox, last, n)
    out, _ = proc.communicate(timeout=60)
    assert out.strip().endswith("done")
    meter = TokenMeter(api_key="sk_test_fake", api_base=fake_stripe.url, outbox_path=outbox)
    assert meter.flush(30)
    meter.close()
    calls = [(CUSTOMERS[i % 3], 10 + i % 7, 1 + i % 5) for i in range(n)]
    assert _sums(fake_stripe) == _expected(calls)
    ids = Counter(fake_stripe.identifiers())
    assert [k for k, c in ids.items() if c > 1] == []


def test_cli_flush_sends_windows_a_process_left_open(fake_stripe: Any, tmp_path: Path) -> None:
    """A process that died with windows open: `stripe-token-meter flush` sends them."""
    outbox = tmp_path / "outbox.sqlite3"
    code = textwrap.dedent(
        """
        import os
        from stripe_token_meter import TokenMeter, Usage
        meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                           outbox_path=os.environ["OUTBOX"], aggregate_seconds=3600)
        for i in range(50):
            meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=2,
                               request_id=f"q{i}"))
        meter._intake.drain(limit=10**6)   # stored in its window
        os._exit(0)
        """
    )
    env = dict(os.environ, URL=fake_stripe.url, OUTBOX=str(outbox))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert fake_stripe.events() == []
    cli = [sys.executable, "-m", "stripe_token_meter.cli", "flush", "--outbox", str(outbox)]
    env.update(STRIPE_API_KEY="sk_test_fake", STRIPE_API_BASE=fake_stripe.url)
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 open aggregation window(s) closed" in proc.stdout
    assert _sums(fake_stripe) == {("cus_a", "input"): 100}


def test_three_processes_on_one_outbox_sum_exactly(fake_stripe: Any, tmp_path: Path) -> None:
    """gunicorn-style workers sharing an outbox: each window is closed by one of them only."""
    outbox = tmp_path / "outbox.sqlite3"
    code = textwrap.dedent(
        """
        import os, time
        from stripe_token_meter import TokenMeter, Usage
        meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                           outbox_path=os.environ["OUTBOX"], aggregate_seconds=1)
        w = os.environ["W"]
        for i in range(900):
            meter.record(Usage(customer_id=("cus_a", "cus_b", "cus_c")[i % 3],
                               model="openai/gpt-4o", input_tokens=1 + i % 4,
                               request_id=f"{w}-{i}"))
            if i % 100 == 99:
                time.sleep(0.25)
        meter.close(timeout=20)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=dict(os.environ, URL=fake_stripe.url, OUTBOX=str(outbox), W=str(w)),
        )
        for w in range(3)
    ]
    assert [p.wait(90) for p in procs] == [0, 0, 0]
    meter = TokenMeter(api_key="sk_test_fake", api_base=fake_stripe.url, outbox_path=outbox)
    assert meter.flush(30)
    assert meter.stats()["aggregating"] == 0
    meter.close()
    want = {(c, "input"): 0 for c in CUSTOMERS}
    for _w in range(3):
        for i in range(900):
            want[(CUSTOMERS[i % 3], "input")] += 1 + i % 4
    assert _sums(fake_stripe) == want
    ids = Counter(fake_stripe.identifiers())
    assert [k for k, c in ids.items() if c > 1] == []
    assert len(ids) < 3 * 900 / 10  # summed, not one per call


def test_a_fresh_meter_flushes_windows_of_a_process_that_died(
    fake_stripe: Any, tmp_path: Path
) -> None:
    """The dead process's calls are only in its journal: the fresh meter (not aggregating
    itself) sums them with the writer's settings, closes the windows and delivers."""
    outbox = tmp_path / "outbox.sqlite3"
    code = textwrap.dedent(
        """
        import os
        from stripe_token_meter import TokenMeter, Usage
        meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                           outbox_path=os.environ["OUTBOX"], aggregate_seconds=3600)
        for i in range(40):
            meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=3,
                               output_tokens=1, request_id=f"d{i}"))
        os._exit(0)
        """
    )
    env = dict(os.environ, URL=fake_stripe.url, OUTBOX=str(outbox))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    meter = TokenMeter(api_key="sk_test_fake", api_base=fake_stripe.url, outbox_path=outbox)
    assert meter.flush(20)
    meter.close()
    assert _sums(fake_stripe) == {("cus_a", "input"): 120, ("cus_a", "output"): 40}
    assert len(fake_stripe.events()) == 2
