"""Stripe's meter error reports become dead letters (issue 19): FakeStripe emits signed thin
events for v2 events that fail validation; the handler verifies, fetches and applies them."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import stripe
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.error_reports import ERROR_REPORT, NO_METER, ErrorReportHandler
from stripe_token_meter.testing import FakeStripe
from stripe_token_meter.testing.fake_stripe import TEST_WEBHOOK_SECRET

EVENT = "token-billing-tokens"
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk_test_reports"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as f:
        f.create_meter(EVENT)
        f.create_customer("cus_known")
        yield f


def _deliver(fake: FakeStripe, path: Path, known: int, ghosts: int) -> None:
    meter = TokenMeter(api_key=KEY, api_base=fake.url, outbox_path=path)
    try:
        for i in range(known):
            meter.record(
                Usage(
                    customer_id="cus_known",
                    model="openai/gpt-4o",
                    input_tokens=5,
                    request_id=f"k{i}",
                )
            )
        for i in range(ghosts):
            meter.record(
                Usage(
                    customer_id="cus_ghost",
                    model="openai/gpt-4o",
                    input_tokens=7,
                    request_id=f"g{i}",
                )
            )
        assert meter.flush(20)
        # The v2 stream answered {}: today every event counts as delivered.
        assert meter.stats()["delivered"] == known + ghosts
    finally:
        meter.close(2)


def test_error_report_dead_letters_each_sampled_event_with_its_code(
    fake: FakeStripe, tmp_path: Path
) -> None:
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path, known=4, ghosts=3)
    notes = fake.event_notifications()
    assert len(notes) == 1
    handler = ErrorReportHandler(
        TEST_WEBHOOK_SECRET, outbox_path=path, api_key=KEY, api_base=fake.url
    )
    try:
        outcome = handler.handle(notes[0]["payload"], notes[0]["signature"])
        assert outcome.type == ERROR_REPORT and not outcome.ignored
        assert outcome.counts == {"meter_event_customer_not_found": 3}
        assert (outcome.dead_lettered, outcome.unknown, outcome.seen_before) == (3, 0, False)
        again = handler.handle(notes[0]["payload"], notes[0]["signature"])  # Stripe redelivers
        assert again.seen_before and again.dead_lettered == 0
        with pytest.raises(stripe.SignatureVerificationError):
            handler.handle(notes[0]["payload"], "t=1,v1=" + "0" * 64)
        with pytest.raises(stripe.SignatureVerificationError):
            handler.handle(notes[0]["payload"].replace("false", "true"), notes[0]["signature"])
    finally:
        handler.close()
    meter = TokenMeter(outbox_path=path)  # read back what the outbox says
    try:
        stats = meter.stats()
        assert (stats["delivered"], stats["dead_lettered"]) == (4, 3)
    finally:
        meter.close(1)
    from stripe_token_meter.outbox import Outbox

    box = Outbox(path)
    try:
        assert box.error_report_counts() == {"meter_event_customer_not_found": 3}
        dead = box._query("SELECT customer_id, error_code FROM events WHERE status='dead'")
        assert sorted(dead) == [("cus_ghost", "meter_event_customer_not_found")] * 3
    finally:
        box.close()


def test_only_sampled_identifiers_become_dead_letters(fake: FakeStripe, tmp_path: Path) -> None:
    fake.error_report_samples = 2
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path, known=0, ghosts=5)
    handler = ErrorReportHandler(
        TEST_WEBHOOK_SECRET, outbox_path=path, api_key=KEY, api_base=fake.url
    )
    try:
        (note,) = fake.event_notifications()
        outcome = handler.handle(note["payload"], note["signature"])
    finally:
        handler.close()
    assert outcome.counts == {"meter_event_customer_not_found": 5}
    assert outcome.dead_lettered == 2  # the other 3 cannot be traced: counted, not invented


def test_unknown_identifiers_are_counted_not_invented(fake: FakeStripe, tmp_path: Path) -> None:
    _deliver(fake, tmp_path / "sender.sqlite3", known=0, ghosts=2)
    other = tmp_path / "other.sqlite3"  # an outbox that never held these events
    handler = ErrorReportHandler(
        TEST_WEBHOOK_SECRET, outbox_path=other, api_key=KEY, api_base=fake.url
    )
    try:
        (note,) = fake.event_notifications()
        outcome = handler.handle(note["payload"], note["signature"])
        assert (outcome.dead_lettered, outcome.unknown) == (0, 2)
        count = handler._outbox._query("SELECT COUNT(*) FROM events")[0][0]
        assert count == 0
    finally:
        handler.close()


def test_no_meter_found_and_archived_meter_are_reported(fake: FakeStripe, tmp_path: Path) -> None:
    client = fake.client(KEY)
    token = client.v2.billing.meter_event_session.create().authentication_token
    meter_id = fake.meters()[0]["id"]
    client.v2.billing.meter_event_stream.create(
        {
            "events": [
                {
                    "event_name": "nobody-meters-this",
                    "identifier": "x1",
                    "payload": {"stripe_customer_id": "cus_known", "value": "1"},
                }
            ]
        },  # type: ignore[list-item]
        options={"api_key": token},
    )
    client.v1.billing.meters.deactivate(meter_id)
    client.v2.billing.meter_event_stream.create(
        {
            "events": [
                {
                    "event_name": EVENT,
                    "identifier": "x2",
                    "payload": {"stripe_customer_id": "cus_known", "value": "1"},
                }
            ]
        },  # type: ignore[list-item]
        options={"api_key": token},
    )
    notes = fake.event_notifications()
    parsed = [
        client.parse_event_notification(n["payload"], n["signature"], TEST_WEBHOOK_SECRET)
        for n in notes
    ]
    assert [p.type for p in parsed] == [NO_METER, ERROR_REPORT]
    archived = parsed[1]
    assert archived.related_object.id == meter_id  # type: ignore[union-attr]
    assert archived.fetch_related_object().status == "inactive"  # type: ignore[union-attr]
    event = archived.fetch_event().to_dict()
    error_type = event["data"]["reason"]["error_types"][0]
    assert error_type["code"] == "archived_meter"
    assert error_type["sample_errors"][0]["request"]["identifier"] == "x2"


class _Receiver(BaseHTTPRequestHandler):
    handler: ErrorReportHandler
    results: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            self.results.append(self.handler.handle(body, self.headers.get("Stripe-Signature")))
            self.send_response(200)
        except stripe.SignatureVerificationError:
            self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None: ...


def test_fake_stripe_posts_signed_reports_to_the_webhook_url(
    fake: FakeStripe, tmp_path: Path
) -> None:
    path = tmp_path / "o.sqlite3"
    handler = ErrorReportHandler(
        TEST_WEBHOOK_SECRET, outbox_path=path, api_key=KEY, api_base=fake.url
    )
    _Receiver.handler = handler
    _Receiver.results = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.webhook_url = f"http://127.0.0.1:{server.server_port}/stripe/meter-errors"
    try:
        _deliver(fake, path, known=2, ghosts=2)
        for _ in range(200):
            if fake.webhook_deliveries:
                break
            threading.Event().wait(0.05)
        assert fake.webhook_deliveries == [(fake.webhook_url, 200)]
        assert _Receiver.results[0].dead_lettered == 2
    finally:
        server.shutdown()
        handler.close()


def test_readme_fastapi_example_runs(fake: FakeStripe, tmp_path: Path, monkeypatch: Any) -> None:
    from fastapi.testclient import TestClient

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```py\n(# FastAPI: Stripe's meter error reports.*?)```", text, re.DOTALL)
    assert match, "the FastAPI example is missing from README.md"
    path = tmp_path / "o.sqlite3"
    _deliver(fake, path, known=1, ghosts=2)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET)
    monkeypatch.setenv("STRIPE_API_KEY", KEY)
    monkeypatch.setenv("STRIPE_API_BASE", fake.url)
    monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(path))
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    (note,) = fake.event_notifications()
    with TestClient(namespace["app"]) as http:
        ok = http.post(
            "/stripe/meter-errors",
            content=note["payload"],
            headers={"Stripe-Signature": note["signature"]},
        )
        bad = http.post(
            "/stripe/meter-errors",
            content=note["payload"],
            headers={"Stripe-Signature": "t=1,v1=00"},
        )
    assert ok.status_code == 200 and ok.json() == {"dead_lettered": 2, "unknown": 0}
    assert bad.status_code == 400
