"""Stripe's meter error reports as thin events: signed, POSTed to a webhook URL, fetchable.

Why: the v2 stream answers `{}` and validates later; Stripe tells of failed events only
through `v1.billing.meter.error_report_triggered` (related object: the meter) and
`v1.billing.meter.no_meter_found` thin events (STRIPE-FACTS "Error reports"). FakeStripe
emits one per failing request (Stripe batches by validation window; one request is one
window here), for validation failures only (a duplicate identifier is not an error).

Wire format, as stripe-python reads it (`StripeClient.parse_event_notification`,
`stripe.v2.core._event.EventNotification.from_json`, `WebhookSignature.verify_header`):
- the POSTed body is the thin event `{"id", "object": "v2.core.event", "type", "created",
  "livemode", "context", "related_object": {"id", "type", "url"}}` (no `data`);
- header `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed
  with the endpoint secret>`;
- `GET /v2/core/events/{id}` (what `fetch_event()` calls) answers the full event with
  `data: {developer_message_summary, reason: {error_count, error_types: [{code,
  error_count, sample_errors: [{error_message, request: {identifier}}]}]},
  validation_start, validation_end}`. Only samples carry identifiers
  (`error_report_samples` per code, 10 by default).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.request
from typing import Any

from stripe_token_meter.testing._model import _Request
from stripe_token_meter.testing._state import State
from stripe_token_meter.testing._wire import iso, new_id, not_found

ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"
NOT_ERRORS = frozenset({"duplicate_meter_event"})


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Webhooks(State):
    """Builds, stores and sends error-report events (`_emit_reports`)."""

    def _emit_reports(self, entries: list[dict[str, Any]], now: float) -> None:
        """Turn new `error_reports` entries into thin events (caller holds the lock)."""
        groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for entry in entries:
            code = entry["code"]
            if code in NOT_ERRORS:
                continue
            if code == "no_meter":
                key: tuple[str, str | None] = (NO_METER, None)
            else:
                meter = next(
                    (
                        m
                        for m in reversed(self._meters.values())
                        if m.event_name == entry["event_name"]
                    ),
                    None,
                )
                key = (ERROR_REPORT, meter.id if meter else None)
            groups.setdefault(key, []).append(entry)
        for (kind, meter_id), group in groups.items():
            self._emit_one(kind, meter_id, group, now)

    def _emit_one(
        self, kind: str, meter_id: str | None, group: list[dict[str, Any]], now: float
    ) -> None:
        by_code: dict[str, list[dict[str, Any]]] = {}
        for entry in group:
            by_code.setdefault(entry["code"], []).append(entry)
        error_types = [
            {
                "code": code,
                "error_count": len(items),
                "sample_errors": [
                    {"error_message": e["message"], "request": {"identifier": e["identifier"]}}
                    for e in items[: self.error_report_samples]
                ],
            }
            for code, items in by_code.items()
        ]
        event_id = new_id("evt_test")
        thin: dict[str, Any] = {
            "id": event_id,
            "object": "v2.core.event",
            "type": kind,
            "created": iso(now),
            "livemode": False,
            "context": None,
        }
        if meter_id is not None:
            thin["related_object"] = {
                "id": meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter_id}",
            }
        codes = ", ".join(f"{len(v)} {k}" for k, v in by_code.items())
        self._v2_events[event_id] = {
            **thin,
            "reason": None,
            "data": {
                "developer_message_summary": f"{len(group)} meter events failed validation ({codes}).",
                "reason": {"error_count": len(group), "error_types": error_types},
                "validation_start": iso(now),
                "validation_end": iso(now + 0.001),
            },
        }
        payload = json.dumps(thin, separators=(",", ":"))
        notification = {"payload": payload, "signature": sign(payload, self.webhook_secret)}
        self._notifications.append(notification)
        if self.webhook_url:
            self._outgoing.put((self.webhook_url, notification))
            self._start_sender()

    def _h_v2_event_retrieve(self, req: _Request) -> tuple[int, Any]:
        event = self._v2_events.get(req.args[0])
        if event is None:
            raise not_found("event", req.args[0])
        return 200, event

    def event_notifications(self) -> list[dict[str, str]]:
        """Every thin event emitted so far: `{"payload": body, "signature": header}`."""
        with self._lock:
            return list(self._notifications)

    def _start_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(
                target=self._send_loop, name="FakeStripe webhooks", daemon=True
            )
            self._sender.start()

    def _send_loop(self) -> None:
        """POST each notification; up to 3 tries 0.5 s apart (Stripe retries for days)."""
        while True:
            try:
                url, note = self._outgoing.get(timeout=5.0)
            except queue.Empty:
                return
            status = 0
            for attempt in range(3):
                request = urllib.request.Request(
                    url,
                    data=note["payload"].encode(),
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": note["signature"],
                    },
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        status = resp.status
                except urllib.error.HTTPError as err:
                    status = err.code
                except OSError:
                    status = 0
                if 200 <= status < 300:
                    break
                if attempt < 2:
                    time.sleep(0.5)
            with self._lock:
                self._webhook_deliveries.append((url, status))

    @property
    def webhook_deliveries(self) -> list[tuple[str, int]]:
        """(url, last HTTP status; 0: no answer) per notification POSTed so far."""
        with self._lock:
            return list(self._webhook_deliveries)
