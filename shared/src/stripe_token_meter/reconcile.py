"""Reconciliation: what the outbox delivered per customer and hour against what Stripe holds.

Why: "delivered" here means Stripe answered 2xx; on the v2 stream that is `{}` before
validation, error reports are sampled, and other processes or hosts may send to the same
meter. Stripe's `GET /v1/billing/meters/{id}/event_summaries` (`value_grouping_window=
hour`, hour-aligned `start_time`/`end_time`, `customer` required) is the only account of
what it will bill; comparing hour by hour names the hours to look at.

Stripe documents summaries as "eventually consistent" without a figure: we assume
`PROCESSING_LAG` (one hour after an hour window ends) before a difference counts.
Summaries group by event timestamp, as the outbox does (`timestamp`, not send time).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import stripe

    from .storage.base import OutboxStore

HOUR: Final = 3600
PROCESSING_LAG: Final = 3600.0
"""Seconds after an hour window ends before its summary is trusted (assumed, see above)."""


@dataclass(frozen=True, slots=True)
class Difference:
    customer: str
    hour: int
    ours: int
    stripe: float
    recent: bool
    """The window ended less than the processing lag ago: Stripe may still be counting."""

    @property
    def cause(self) -> str:
        if self.recent:
            return "recent: Stripe may not have aggregated these events yet"
        if self.stripe < self.ours:
            return (
                "Stripe holds less than was delivered: events the v2 stream accepted and then "
                "rejected (listen to error reports; `errors ingest`), or cancelled by an "
                "adjustment"
            )
        return (
            "Stripe holds more than this outbox delivered: another outbox, process or host "
            "sends to this meter, delivered rows were pruned (`retain_delivered`), or events "
            "were sent outside stripe-token-meter"
        )


def meter_id(client: stripe.StripeClient, event_name: str) -> str | None:
    """The meter for `event_name`: the active one, else the newest inactive."""
    found: str | None = None
    for meter in client.v1.billing.meters.list({"limit": 100}).auto_paging_iter():
        if meter.event_name == event_name:
            if meter.status == "active":
                return str(meter.id)
            found = found or str(meter.id)
    return found


def stripe_hours(
    client: stripe.StripeClient, meter: str, customer: str, start: int, end: int
) -> dict[int, float]:
    """Stripe's aggregated value per hour window in [start, end) for one customer."""
    params: dict[str, Any] = {
        "customer": customer,
        "start_time": start,
        "end_time": end,
        "value_grouping_window": "hour",
        "limit": 100,
    }
    page = client.v1.billing.meters.event_summaries.list(meter, params)  # type: ignore[arg-type]
    return {int(s.start_time): float(s.aggregated_value) for s in page.auto_paging_iter()}


def compare(
    ours: Iterable[tuple[str, int, int, int]],
    theirs: dict[str, dict[int, float]],
    *,
    now: float | None = None,
    lag: float = PROCESSING_LAG,
) -> list[Difference]:
    """Hours where the outbox's delivered sum and Stripe's aggregate differ."""
    now = time.time() if now is None else now
    mine: dict[tuple[str, int], int] = {(c, h): v for c, h, v, _ in ours}
    keys = set(mine) | {(c, h) for c, hours in theirs.items() for h in hours}
    out = []
    for customer, hour in sorted(keys):
        a = mine.get((customer, hour), 0)
        b = theirs.get(customer, {}).get(hour, 0.0)
        if a != b:
            out.append(Difference(customer, hour, a, b, hour + HOUR + lag > now))
    return out


def reconcile(
    outbox: OutboxStore,
    client: stripe.StripeClient,
    event_name: str,
    since: float,
    customer: str | None = None,
    *,
    lag: float = PROCESSING_LAG,
) -> tuple[str | None, list[Difference], int]:
    """(meter id, differences, customers compared) from `since` (rounded down to the hour)
    to the end of the current hour."""
    meter = meter_id(client, event_name)
    ours = outbox.delivered_per_customer_hour(event_name, since, customer)
    customers = sorted({customer} if customer else {c for c, _, _, _ in ours})
    if meter is None:
        return None, [], len(customers)
    start = int(since) // HOUR * HOUR
    end = (int(time.time()) // HOUR + 1) * HOUR
    theirs = {c: stripe_hours(client, meter, c, start, end) for c in customers}
    return meter, compare(ours, theirs, lag=lag), len(customers)
