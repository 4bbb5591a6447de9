"""flush() waits while delivery moves; last_error does not outlive a recovery (issue 15)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.commands._config import Config
from stripe_token_meter.commands._delivery import explain_error


def _record(meter: TokenMeter, n: int, customers: int = 1) -> None:
    for i in range(n):
        meter.record(
            Usage(
                customer_id=f"cus_{i % customers}",
                model="openai/gpt-4o",
                input_tokens=2,
                request_id=f"r{i}",
            )
        )


def test_flush_patience_restarts_while_stripe_keeps_taking_events(
    fake_stripe: Any, tmp_path: Path
) -> None:
    # A sandbox key: v1 is paced at 22 requests/s, so 66 events take about 3 s.
    meter = TokenMeter(
        api_key="sk_test_patience",
        api_base=fake_stripe.url,
        outbox_path=tmp_path / "o.sqlite3",
        api="v1",
    )
    try:
        _record(meter, 66, customers=11)
        t0 = time.monotonic()
        assert not meter.flush(1.0, max_wait=0.5)  # a hard bound holds
        assert time.monotonic() - t0 < 0.9
        assert meter.flush(1.0)  # never a second without progress
        assert time.monotonic() - t0 > 2.0
        assert meter.stats()["delivered"] == 66
    finally:
        meter.close(2)
    assert len(fake_stripe.identifiers()) == 66


def test_flush_gives_up_when_nothing_moves(fake_stripe: Any, tmp_path: Path) -> None:
    fake_stripe.valid_keys = {"sk_test_other"}  # key refused: delivery pauses
    meter = TokenMeter(
        api_key="sk_test_patience", api_base=fake_stripe.url, outbox_path=tmp_path / "o.sqlite3"
    )
    try:
        _record(meter, 3)
        t0 = time.monotonic()
        assert not meter.flush(1.0)
        assert time.monotonic() - t0 < 2.5
    finally:
        meter.close(0.5)


def test_last_error_is_cleared_by_a_later_delivery_and_kept_with_its_time(
    fake_stripe: Any, tmp_path: Path
) -> None:
    fake_stripe.fail_next(2, status=503, retry_after=None)
    meter = TokenMeter(
        api_key="sk_test_patience",
        api_base=fake_stripe.url,
        outbox_path=tmp_path / "o.sqlite3",
        api="v1",
        retry_base_delay=0.05,
        concurrency=1,
    )
    try:
        t0 = time.time()
        _record(meter, 4, customers=4)
        assert meter.flush(10)
        stats = meter.stats()
    finally:
        meter.close(1)
    assert stats["delivered"] == 4
    assert stats["last_error"] is None and stats["last_error_at"] is None
    kept = stats["last_delivery_error"]
    assert kept["error"].startswith("api_error") and t0 <= kept["at"] <= time.time()
    assert stats["last_delivered_at"] >= kept["at"]


def _cfg() -> Config:
    return Config(
        api_key=None,
        key_source=None,
        api_base="http://127.0.0.1:9",
        event_name="e",
        outbox_path=Path("o"),
        outbox_source="test",
        api="v2",
    )


def test_explain_error_says_unreachable_only_for_connections_never_made() -> None:
    cfg = _cfg()
    refused = "connection_error: Unexpected error communicating with Stripe. (Network error: A ClientConnectorError was raised)"
    assert explain_error(refused, cfg).startswith("cannot reach Stripe at http://127.0.0.1:9")  # type: ignore[union-attr]
    cut = "connection_error: ServerDisconnectedError: Server disconnected"
    assert explain_error(cut, cfg) == (
        "the connection to Stripe at http://127.0.0.1:9 failed during a request: " + cut
    )
    limited = "rate_limit: Request rate limit exceeded. (Stripe-Rate-Limited-Reason: global-rate)"
    assert explain_error(limited, cfg) == limited
