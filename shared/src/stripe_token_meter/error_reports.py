"""Stripe's meter error reports: turn them into dead letters and per-code counts.

Why: the v2 stream answers `{}` and validates later, so an event for an unknown customer
(or an archived meter, ...) counted as delivered here. Stripe reports such failures only
as thin events, `v1.billing.meter.error_report_triggered` and
`v1.billing.meter.no_meter_found`, whose fetched `data.reason.error_types[]` carry a code,
a count and some `sample_errors[].request.identifier`. Each sampled identifier still in the
outbox becomes a dead letter with that code (replayable once the cause is fixed); an
identifier the outbox does not hold is counted, never invented; the per-code counts (no
samples) are kept for `stripe-token-meter status`. Failures beyond the samples cannot be
traced to events: `stripe-token-meter reconcile` finds the hours they are in.

Framework-agnostic: give `handle()` the raw request body and its `Stripe-Signature`
header from any web framework (README: FastAPI, Flask).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .storage import open_store

if TYPE_CHECKING:
    import stripe

ERROR_REPORT: Final = "v1.billing.meter.error_report_triggered"
NO_METER: Final = "v1.billing.meter.no_meter_found"
TYPES: Final = frozenset({ERROR_REPORT, NO_METER})


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What one report did: its counts per code, dead letters made, identifiers unknown."""

    event_id: str
    type: str
    counts: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    unknown: int = 0
    seen_before: bool = False
    ignored: bool = False
    """Not a meter error report (another event type sent to the same endpoint)."""


class ErrorReportHandler:
    """Verifies, fetches and applies Stripe's meter error reports to one outbox."""

    def __init__(
        self,
        webhook_secret: str | None = None,
        *,
        outbox_path: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        api_base: str | None = None,
        stripe_client: stripe.StripeClient | None = None,
    ) -> None:
        """`webhook_secret`: the endpoint's signing secret (`whsec_...`, default
        `$STRIPE_WEBHOOK_SECRET`); `api_key` (default `$STRIPE_API_KEY`) fetches the event;
        `outbox_path`: the meter's outbox (default as `TokenMeter`'s)."""
        self._secret = webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET")
        self._outbox = open_store(outbox_path)
        self._client = stripe_client
        self._key = api_key or os.environ.get("STRIPE_API_KEY")
        self._base = api_base or os.environ.get("STRIPE_API_BASE")

    def _stripe(self) -> stripe.StripeClient:
        if self._client is None:
            import stripe

            if not self._key:
                raise ValueError("an API key is needed to fetch error report events")
            kwargs: dict[str, Any] = {}
            if self._base:
                kwargs["base_addresses"] = {"api": self._base, "meter_events": self._base}
            self._client = stripe.StripeClient(self._key, **kwargs)
        return self._client

    def handle(self, payload: bytes | str, signature: str | None) -> ReportOutcome:
        """One webhook delivery. Raises `stripe.SignatureVerificationError` on a bad or
        missing signature (answer 400); otherwise answer 2xx, even for an ignored type."""
        if not self._secret:
            raise ValueError("webhook_secret (or STRIPE_WEBHOOK_SECRET) is needed")
        client = self._stripe()
        note = client.parse_event_notification(payload, signature, self._secret)
        if note.type not in TYPES:
            return ReportOutcome(note.id, note.type, ignored=True)
        event = note.fetch_event()
        return self.ingest(event.to_dict())

    def ingest_saved(self, text: str) -> ReportOutcome:
        """A saved payload: the fetched event (with `data`), or a thin notification
        (fetched first, with the API key)."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object (a Stripe event)")
        if "data" not in body and body.get("type") in TYPES:
            client = self._stripe()
            note = client.parse_event_notification_without_verification(text)
            body = note.fetch_event().to_dict()
        return self.ingest(body)

    def ingest(self, event: Mapping[str, Any]) -> ReportOutcome:
        """Apply a fetched error-report event (its JSON as a mapping)."""
        event_id, kind = str(event.get("id", "")), str(event.get("type", ""))
        if kind not in TYPES:
            return ReportOutcome(event_id, kind, ignored=True)
        data = event.get("data") or {}
        reason = data.get("reason") or {} if isinstance(data, Mapping) else {}
        counts: dict[str, int] = {}
        samples: list[tuple[str, str, str]] = []
        for error_type in reason.get("error_types") or []:
            code = str(error_type.get("code") or "unknown")
            counts[code] = counts.get(code, 0) + int(error_type.get("error_count") or 0)
            for sample in error_type.get("sample_errors") or []:
                identifier = (sample.get("request") or {}).get("identifier")
                if identifier:
                    message = f"Stripe error report {event_id}: {sample.get('error_message', '')}"
                    samples.append((str(identifier), code, message))
        first = self._outbox.record_error_report(event_id, kind, counts)
        dead, unknown = self._outbox.dead_letter_identifiers(samples)
        return ReportOutcome(event_id, kind, counts, dead, unknown, seen_before=not first)

    def close(self) -> None:
        self._outbox.close()
