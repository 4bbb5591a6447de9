"""`report` and `status` on a seeded outbox: exact counts per status, fixes, no key shown."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cli_testkit import KEY, Cli, Seeded
from support.old_outbox import write_old_outbox


def test_report_json_counts_every_status(cli: Cli, seeded: Seeded) -> None:
    r = cli("report", "--json", "--outbox", str(seeded.path))
    assert r.code == 0, r.err
    data = r.json()
    rows = {
        (x["customer"], x["model"], x["token_type"]): {
            k: x[k]
            for k in ("delivered", "pending", "dead", "resolved", "local", "cancelled", "total")
        }
        for x in data["rows"]
    }
    z = {"delivered": 0, "pending": 0, "dead": 0, "resolved": 0, "local": 0, "cancelled": 0}
    assert rows == {
        ("cus_known", "openai/gpt-4o", "input"): {**z, "delivered": 1000, "total": 1000},
        ("cus_known", "openai/gpt-4o", "output"): {**z, "delivered": 200, "total": 200},
        ("cus_known", "openai/gpt-4o-mini", "input"): {**z, "pending": 40, "total": 40},
        ("cus_known", "openai/gpt-4o-mini", "output"): {**z, "pending": 4, "total": 4},
        ("cus_local", "openai/gpt-4o", "input"): {**z, "local": 70, "total": 70},
        ("cus_local", "openai/gpt-4o", "output"): {**z, "local": 7, "total": 7},
        ("cus_missing", "openai/gpt-4o", "input"): {**z, "dead": 300, "total": 300},
        ("cus_missing", "openai/gpt-4o", "output"): {**z, "dead": 50, "total": 50},
    }
    assert data["totals"] == {
        "delivered": 1200,
        "pending": 44,
        "dead": 350,
        "local": 77,
        "resolved": 0,
        "cancelled": 0,
        "total": 1671,
    }
    assert data["events"] == {
        "delivered": 2,
        "pending": 2,
        "dead": 2,
        "local": 2,
        "resolved": 0,
        "cancelled": 0,
        "total": 8,
    }
    assert data["customers"]["cus_known"]["total"] == 1244
    assert data["rejected_records"] == 1


def test_report_filters_by_customer_and_since(cli: Cli, seeded: Seeded) -> None:
    base = ["report", "--json", "--outbox", str(seeded.path)]
    only = cli(*base, "--customer", "cus_missing").json()
    assert only["totals"] == {
        "delivered": 0,
        "pending": 0,
        "dead": 350,
        "local": 0,
        "resolved": 0,
        "cancelled": 0,
        "total": 350,
    }
    assert cli(*base, "--since", "1h").json()["totals"]["total"] == 1671
    assert cli(*base, "--since", "2999-01-01").json()["rows"] == []


def test_report_table(cli: Cli, seeded: Seeded) -> None:
    r = cli("report", "--outbox", str(seeded.path))
    assert r.code == 0
    for text in ("cus_known", "openai/gpt-4o-mini", "1,671", "1 usage record(s) rejected", "local"):
        assert text in r.out


def test_status_json(cli: Cli, seeded: Seeded) -> None:
    data = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert data["counts"] == {
        "pending": 2,
        "retrying": 2,
        "delivered": 2,
        "dead": 2,
        "local": 2,
        "resolved": 0,
        "cancelled": 0,
        "rejected": 1,
        "rejected_resolved": 0,
    }
    assert data["oldest_pending_age_seconds"] >= 0
    [dead] = data["dead_letters"]
    assert (dead["code"], dead["events"], dead["tokens"], dead["replayable"]) == (
        "meter_event_customer_not_found",
        2,
        350,
        True,
    )
    assert (
        "create it" in dead["fix"] and "replay --code meter_event_customer_not_found" in dead["fix"]
    )
    [rejected] = data["rejected"]
    assert (rejected["code"], rejected["records"]) == ("missing_customer", 1)
    assert "meter.customer" in rejected["fix"]
    assert data["last_error"]["error"].startswith("connection_error")
    assert data["key"] == {"configured": False, "kind": None, "source": None}
    assert any("no API key" in w for w in data["warnings"])
    assert any("local ledger" in w for w in data["warnings"])
    assert data["healthy"] is False


def test_status_shows_key_kind_never_the_key(cli: Cli, seeded: Seeded, monkeypatch: object) -> None:
    r = cli("status", "--json", "--outbox", str(seeded.path), "--api-key", KEY)
    assert r.json()["key"] == {"configured": True, "kind": "sk_test", "source": "--api-key"}
    table = cli("status", "--outbox", str(seeded.path), "--api-key", KEY)
    assert "configured (sk_test, from --api-key)" in table.out
    assert "meter_event_customer_not_found" in table.out and "missing_customer" in table.out


def test_status_from_environment(cli: Cli, seeded: Seeded, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(seeded.path))
    monkeypatch.setenv("STRIPE_API_KEY", "rk_live_" + KEY[8:])
    data = cli("status", "--json").json()
    assert data["outbox_source"] == "STRIPE_TOKEN_METER_OUTBOX"
    assert data["key"] == {"configured": True, "kind": "rk_live", "source": "STRIPE_API_KEY"}
    assert data["counts"]["delivered"] == 2


def test_status_and_report_read_an_outbox_older_than_their_columns(
    cli: Cli, tmp_path: Path
) -> None:
    """A file written before `events.unconfirmed` and `rejected.resolved` existed, which no
    newer meter has opened yet: the read-only commands leave it as it is and still read it."""
    path = tmp_path / "old.sqlite3"
    write_old_outbox(path, "dead")
    status = cli("status", "--json", "--outbox", str(path))
    assert status.code == 1 and status.json()["healthy"] is False, status.err
    counts = status.json()["counts"]
    assert (counts["dead"], counts["rejected"], counts["rejected_resolved"]) == (1, 1, 0)
    report = cli("report", "--json", "--outbox", str(path))
    assert report.code == 0, report.err
    assert report.json()["rejected_records"] == 1
    with sqlite3.connect(path) as db:  # not migrated by a read
        columns = {r[1] for r in db.execute("PRAGMA table_info(rejected)")}
    assert "resolved" not in columns
