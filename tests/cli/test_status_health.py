"""`status` as a health check (exit codes) and what it says the outbox recorded, apart
from the shell's own configuration."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from cli_testkit import KEY, Cli, Seeded, dead_port
from stripe_token_meter import TokenMeter, Usage


def _delivered_outbox(fake: Any, path: Path) -> None:
    """One call (input 10, output 2) delivered to FakeStripe by a v1 meter."""
    meter = TokenMeter(api_key=KEY, api_base=fake.url, outbox_path=path, api="v1")
    meter.record(
        Usage(
            customer_id="cus_a", model="gpt-4o", input_tokens=10, output_tokens=2, request_id="r1"
        )
    )
    assert meter.flush(10)
    meter.close(timeout=1)


def test_status_exits_1_naming_each_problem(cli: Cli, seeded: Seeded) -> None:
    r = cli("status", "--json", "--outbox", str(seeded.path))
    assert r.code == 1
    assert r.json()["problems"] == [
        "2 dead-lettered event(s)",
        "1 rejected usage record(s)",
        "2 event(s) in the local ledger, never sent",
    ]
    text = cli("status", "--outbox", str(seeded.path))
    assert text.code == 1
    assert text.out.splitlines()[-1] == (
        "needs attention: 2 dead-lettered event(s); 1 rejected usage record(s); "
        "2 event(s) in the local ledger, never sent"
    )


def test_status_exits_0_when_healthy_and_1_when_pending_too_long(
    cli: Cli, fake_stripe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    _delivered_outbox(fake_stripe, path)
    ok = cli("status", "--outbox", str(path))
    assert (ok.code, ok.out.splitlines()[-1]) == (0, "healthy")
    down = TokenMeter(
        api_key=KEY, api_base=f"http://127.0.0.1:{dead_port()}", outbox_path=path, api="v1"
    )
    down.record(Usage(customer_id="cus_a", model="gpt-4o", input_tokens=1, request_id="r2"))
    assert not down.flush(0.3)
    down.close(timeout=0.0)
    assert cli("status", "--outbox", str(path)).code == 0  # pending, but only just
    with sqlite3.connect(path) as db:  # 16 minutes pass
        db.execute("UPDATE events SET created=created-960 WHERE status='pending'")
    stuck = cli("status", "--json", "--outbox", str(path))
    assert stuck.code == 1
    assert stuck.json()["problems"] == [
        "events pending for 16 min (more than --max-pending-age 15 min)"
    ]
    assert stuck.json()["max_pending_age_seconds"] == 900
    assert cli("status", "--outbox", str(path), "--max-pending-age", "20m").code == 0
    assert cli("status", "--outbox", str(path), "--max-pending-age", "900").code == 1
    bad = cli("status", "--outbox", str(path), "--max-pending-age", "soon")
    assert bad.code == 2 and "--max-pending-age" in bad.err


def test_status_exits_1_when_delivery_is_paused(cli: Cli, fake_stripe: Any, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    _delivered_outbox(fake_stripe, path)
    fake_stripe.valid_keys = {"sk_test_onlyTHISoneWORKS"}
    down = TokenMeter(
        api_key=KEY, api_base=f"http://127.0.0.1:{dead_port()}", outbox_path=path, api="v1"
    )
    down.record(Usage(customer_id="cus_a", model="gpt-4o", input_tokens=1, request_id="r2"))
    assert not down.flush(0.3)
    down.close(timeout=0.0)
    flags = ["--outbox", str(path), "--api-key", KEY, "--api-base", fake_stripe.url]
    assert cli("flush", "--timeout", "1", *flags).code == 1  # Stripe refuses the key
    r = cli("status", "--json", "--outbox", str(path))
    assert r.code == 1
    [problem] = r.json()["problems"]
    assert problem.startswith("delivery paused (") and "Invalid API Key" in problem


def test_status_shows_what_the_outbox_recorded_apart_from_this_shell(
    cli: Cli, seeded: Seeded
) -> None:
    """The seeded outbox was delivered by a keyed v1 process; this shell has no key."""
    data = cli("status", "--json", "--outbox", str(seeded.path)).json()
    recorded = data["recorded"]
    assert recorded["apis"] == {"v1": 6}  # delivered, dead, pending (local rows: never sent)
    assert recorded["event_names"] == {"token-billing-tokens": 8}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", recorded["last_delivered_at"])
    assert 0 <= recorded["last_delivered_age_seconds"] < 600
    lines = cli("status", "--outbox", str(seeded.path)).out.splitlines()
    assert re.fullmatch(
        r"Recorded in the outbox: sent with api v1 \(6\); event name token-billing-tokens \(8\);"
        r" last delivery \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+ s ago\)",
        lines[1],
    ), lines
    assert lines[2] == (
        "This shell's configuration: API key not set; api v2; event name token-billing-tokens"
    )
    assert "local ledger)" not in "\n".join(lines)
