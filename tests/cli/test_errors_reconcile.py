"""`errors ingest FILE` and `reconcile` against FakeStripe (issue 19)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_testkit import KEY, Cli
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.testing import FakeStripe

EVENT = "token-billing-tokens"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as f:
        f.create_meter(EVENT)
        f.create_customer("cus_known")
        yield f


def _deliver(fake: FakeStripe, path: Path) -> None:
    meter = TokenMeter(api_key=KEY, api_base=fake.url, outbox_path=path)
    try:
        for i in range(3):
            meter.record(
                Usage(
                    customer_id="cus_known",
                    model="openai/gpt-4o",
                    input_tokens=10 + i,
                    request_id=f"k{i}",
                )
            )
        for i in range(2):
            meter.record(
                Usage(
                    customer_id="cus_ghost",
                    model="openai/gpt-4o",
                    input_tokens=5,
                    request_id=f"g{i}",
                )
            )
        assert meter.flush(20)
    finally:
        meter.close(2)


def _flags(fake: FakeStripe, path: Path) -> list[str]:
    return ["--outbox", str(path), "--api-key", KEY, "--api-base", fake.url]


def test_errors_ingest_a_saved_thin_notification_then_status_shows_counts(
    fake: FakeStripe, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path)
    (note,) = fake.event_notifications()
    saved = tmp_path / "report.json"
    saved.write_text(note["payload"])
    r = cli("errors", "ingest", str(saved), "--json", *_flags(fake, path))
    assert r.code == 0, r.err
    data = r.json()
    assert data["counts"] == {"meter_event_customer_not_found": 2}
    assert (data["dead_lettered"], data["unknown"], data["seen_before"]) == (2, 0, False)
    r = cli("status", "--json", *_flags(fake, path))
    assert r.code == 1  # dead letters: needs attention
    status = r.json()
    assert status["stripe_error_reports"] == {"meter_event_customer_not_found": 2}
    assert [(d["code"], d["events"]) for d in status["dead_letters"]] == [
        ("meter_event_customer_not_found", 2)
    ]
    assert KEY not in r.out + r.err


def test_errors_ingest_a_saved_full_event_needs_no_key(
    fake: FakeStripe, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path)
    (note,) = fake.event_notifications()
    event = fake.client(KEY).v2.core.events.retrieve(json.loads(note["payload"])["id"]).to_dict()
    saved = tmp_path / "event.json"
    saved.write_text(json.dumps(event))
    r = cli("errors", "ingest", str(saved), "--outbox", str(path))
    assert r.code == 0, r.err
    assert "2 event(s) dead-lettered" in r.out and "meter_event_customer_not_found" in r.out
    r = cli("errors", "ingest", str(tmp_path / "missing.json"), "--outbox", str(path))
    assert r.code == 2 and "cannot read" in r.err


def test_reconcile_finds_what_stripe_did_not_bill(
    fake: FakeStripe, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path)
    # Everything is "delivered" here, but Stripe holds only cus_known's 33 tokens.
    r = cli("reconcile", "--json", *_flags(fake, path))
    assert r.code == 0, r.err  # the differing hour is recent: within Stripe's lag
    data = r.json()
    assert data["customers"] == 2
    diffs = {d["customer"]: d for d in data["differences"]}
    assert set(diffs) == {"cus_ghost"}
    assert (diffs["cus_ghost"]["delivered"], diffs["cus_ghost"]["stripe"]) == (10, 0.0)
    assert diffs["cus_ghost"]["recent"] is True
    r = cli("reconcile", "--lag", "-7200", *_flags(fake, path))  # as if hours had passed
    assert r.code == 1
    assert "cus_ghost" in r.out and "Stripe holds less" in r.out
    r = cli("reconcile", "--customer", "cus_known", "--lag", "-7200", "--json", *_flags(fake, path))
    assert r.code == 0 and r.json()["differences"] == []


def test_reconcile_sees_events_stripe_holds_that_the_outbox_does_not(
    fake: FakeStripe, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path)
    # Another sender bills cus_known 100 more in the same hour.
    fake.client(KEY).v1.billing.meter_events.create(
        {
            "event_name": EVENT,
            "payload": {"stripe_customer_id": "cus_known", "value": "100"},
            "timestamp": int(time.time()),
        }
    )
    r = cli("reconcile", "--customer", "cus_known", "--lag", "-7200", "--json", *_flags(fake, path))
    assert r.code == 1
    (d,) = r.json()["differences"]
    assert (d["delivered"], d["stripe"]) == (33, 133.0)
    assert "another outbox" in d["cause"]


def test_event_summaries_follow_stripes_parameter_rules(fake: FakeStripe) -> None:
    import stripe

    client = fake.client(KEY)
    meter = fake.meters()[0]["id"]
    hour = int(time.time()) // 3600 * 3600
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.event_summaries.list(
            meter,
            {
                "customer": "cus_known",
                "start_time": hour + 30,
                "end_time": hour + 3600,
                "value_grouping_window": "hour",
            },
        )
    assert err.value.param == "start_time"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.event_summaries.list(
            meter,
            {"customer": "cus_known", "start_time": hour, "end_time": hour + 3600, "limit": 101},
        )
    assert err.value.param == "limit"
