"""Every `stripe-token-meter` command on a PostgreSQL outbox (`--outbox postgresql://...`)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.cli import main
from stripe_token_meter.storage import open_store
from support.events import stored_event
from support.postgres import with_schema

KEY = "sk_test_CLIsecretVALUE0123456789"


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("STRIPE_API_KEY", "STRIPE_API_BASE", "STRIPE_TOKEN_METER_OUTBOX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRIPE_TOKEN_METER_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return with_schema(postgres_url)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """(exit code, stdout; stderr as well unless --json)."""
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    return code, out.out if "--json" in argv else out.out + out.err


def _usage(customer: str, inp: int, out: int, request_id: str) -> Usage:
    return Usage(
        customer_id=customer,
        model="openai/gpt-4o",
        input_tokens=inp,
        output_tokens=out,
        request_id=request_id,
    )


def test_every_command_on_postgres(
    pg: str, fake_stripe: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake_stripe.auto_customers = False
    fake_stripe.create_customer("cus_known")
    meter = TokenMeter(api_key=KEY, api_base=fake_stripe.url, outbox_path=pg, api="v1")
    meter.record(_usage("cus_known", 1000, 200, "ok1"))
    meter.record(_usage("cus_missing", 300, 50, "dead1"))  # unknown: dead-lettered by v1
    meter.record(model="gpt-4o", provider="openai", input_tokens=1, request_id="nocus")
    assert meter.flush(10)
    meter.close()
    flags = ["--outbox", pg, "--api-key", KEY, "--api-base", fake_stripe.url]

    code, out = _cli(capsys, "status", "--json", *flags)
    status = json.loads(out)
    assert code == 1  # dead letters and a rejected record
    assert (status["counts"]["delivered"], status["counts"]["dead"]) == (2, 2)
    assert status["counts"]["rejected"] == 1 and status["outbox"].startswith("postgresql://")

    code, out = _cli(capsys, "report", "--json", "--outbox", pg)
    report = json.loads(out)
    assert code == 0 and report["rejected_records"] == 1 and report["apis"] == {"v1": 4}

    fake_stripe.create_customer("cus_missing")  # the fix
    code, out = _cli(capsys, "replay", "--json", "--timeout", "20", *flags)
    assert code == 0, out
    assert json.loads(out)["by_api"] == {"v1": {"delivered": 2, "dead": 0, "pending": 0}}

    code, out = _cli(capsys, "resolve", "--code", "missing_customer", *flags)
    assert code == 0, out

    code, out = _cli(capsys, "cancel", "--json", "ok1", *flags)
    assert code == 0, out

    store = open_store(pg)
    store.add([stored_event("late", customer="cus_known", value=9)], api="v2")
    code, out = _cli(capsys, "flush", "--timeout", "20", *flags)
    assert code == 0, out
    counts = store.counts()
    store.close()
    assert (counts["delivered"], counts["cancelled"], counts["pending"]) == (3, 2, 0)
    assert (counts["dead"], counts["rejected"], counts["rejected_resolved"]) == (0, 0, 1)
    sent = sorted((e.identifier, e.api, e.value) for e in fake_stripe.events())
    assert sent == [
        ("dead1:input:token-billing-tokens", "v1", 300),
        ("dead1:output:token-billing-tokens", "v1", 50),
        ("late:input:token-billing-tokens", "v2", 9),
    ]  # ok1 was cancelled at Stripe
    assert not list(tmp_path.rglob("*sqlite*"))


def test_an_unreachable_database_is_one_clear_line_without_its_password(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://billing:s3cret-pw@127.0.0.1:{port}/db?connect_timeout=2"
    code, out = _cli(capsys, "status", "--outbox", url)
    assert code == 2 and "unreachable" in out and "s3cret" not in out
    code, out = _cli(capsys, "status", "--outbox", "mysql://u:s3cret@h/db")
    assert code == 2 and "'mysql://' outboxes are not supported" in out and "s3cret" not in out


def test_the_demo_runs_through_postgres(
    pg: str, fake_stripe: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--json", "--burst", "0", "--no-spend", "--frameworks", "litellm", "--calls", "3"]
    code, out = _cli(capsys, "demo", *args, "--outbox", pg, "--api-base", fake_stripe.url)
    assert code == 0, out
    store = open_store(pg)
    delivered = store.delivered_totals()
    store.close()
    got: dict[tuple[str, str, str], tuple[int, int]] = {}
    for e in fake_stripe.events():
        key = (e.customer, e.payload["model"], e.payload["token_type"])
        n, v = got.get(key, (0, 0))
        got[key] = (n + 1, v + e.value)
    assert delivered == got and got
