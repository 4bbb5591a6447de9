"""Delivery keeps requests in flight back to back, and never loses or doubles rows doing so."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from stripe_token_meter import TokenMeter
from stripe_token_meter.events import MeterEvent
from stripe_token_meter.outbox import PENDING, Outbox

MeterFactory = Callable[..., TokenMeter]
EVENT_NAME = "token-billing-tokens"


def _record(meter: TokenMeter, n: int, tag: str = "r", customers: int = 1) -> None:
    for i in range(n):
        meter.record(
            counts="openai",
            model="gpt-4o",
            provider="openai",
            customer_id="cus_a" if customers == 1 else f"cus_a{i % customers}",
            request_id=f"{tag}-{i}",
            prompt_tokens=10 + i,
        )


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_one_slow_request_does_not_hold_back_the_others(
    make_meter: MeterFactory, fake_stripe: Any, api: str
) -> None:
    path = "/v1/billing/meter_events" if api == "v1" else "/v2/billing/meter_event_stream"
    fake_stripe.stall_next(4.0, path_prefix=path)
    # One event per record: v1 sends 30 requests, v2 at least 5 (up to 100 events each).
    # v1 sends one request per customer at a time (Stripe's rule), so the stuck request
    # holds back its own customer's other 2 events, and only those.
    n, stuck = (30, 3) if api == "v1" else (500, 100)
    meter = make_meter(api=api, concurrency=3)
    _record(meter, n, customers=10 if api == "v1" else 1)
    # Free senders keep taking work while one request is stuck for 4 s (in rounds, the
    # whole round and everything after it would wait).
    assert _wait_for(lambda: len(fake_stripe.identifiers()) >= n - stuck, 3.0), len(
        fake_stripe.identifiers()
    )
    assert meter.flush(10)
    ids = fake_stripe.identifiers()
    assert len(ids) == n
    assert Counter(ids).most_common(1)[0][1] == 1


def test_close_gives_back_rows_of_a_request_still_out(fake_stripe: Any, tmp_path: Path) -> None:
    """Past close()'s deadline the stuck request is abandoned and its row released at once,
    so the next meter on this outbox sends it without waiting for the lease to run out."""
    outbox = tmp_path / "o.sqlite3"
    # The stuck request would hold Stripe's per-customer lock for its 3 s (the second
    # meter's resend would get lock_timeout until then); this test is about the lease.
    fake_stripe.limits = False
    fake_stripe.stall_next(3.0, path_prefix="/v1/billing/meter_events")
    first = TokenMeter(
        api="v1",
        api_key="sk_test_fake",
        api_base=fake_stripe.url,
        outbox_path=outbox,
    )
    _record(first, 1, tag="stuck")

    def leased() -> bool:
        with sqlite3.connect(outbox) as db:
            return db.execute("SELECT lease_owner FROM events").fetchall() not in ([], [(None,)])

    assert _wait_for(leased, 2.0)
    time.sleep(0.3)  # the request is out, stalled by FakeStripe
    first.close(timeout=0.3)
    with sqlite3.connect(outbox) as db:
        assert db.execute("SELECT status, lease_owner, lease_until FROM events").fetchall() == [
            ("pending", None, 0)
        ]
    second = TokenMeter(
        api="v1",
        api_key="sk_test_fake",
        api_base=fake_stripe.url,
        outbox_path=outbox,
    )
    try:
        assert second.flush(2.0)  # well before the stuck request's 3 s are up
    finally:
        second.close()
    assert fake_stripe.identifiers() == ["stuck-0:input:token-billing-tokens"]
    time.sleep(3.0)  # the stuck request lands late: Stripe sees a duplicate, not a new event
    assert fake_stripe.identifiers() == ["stuck-0:input:token-billing-tokens"]


def _event(i: int, value: int = 1) -> MeterEvent:
    return MeterEvent(
        identifier=f"req-{i}:input:m",
        event_name="m",
        timestamp=1_790_000_000,
        customer_id="cus_a",
        model="openai/gpt-4o",
        token_type="input",
        value=value,
        payload={"stripe_customer_id": "cus_a", "value": str(value)},
    )


def test_add_leased_returns_only_new_rows_already_claimed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    assert box.add([_event(1)], PENDING) == 1
    rows = box.add_leased([_event(1), _event(2, 7), _event(2, 9), _event(3)], "me", 30.0)
    # Already stored (1) and repeated within the batch (second 2) are left out; the first
    # occurrence is the one stored and returned.
    assert [(r.event.identifier, r.event.value, r.attempts) for r in rows] == [
        ("req-2:input:m", 7, 0),
        ("req-3:input:m", 1, 0),
    ]
    stored = dict(box._conn.execute("SELECT identifier, id FROM events").fetchall())
    assert [r.id for r in rows] == [stored["req-2:input:m"], stored["req-3:input:m"]]
    # Leased to "me": another owner can only claim the unleased row.
    assert [r.event.identifier for r in box.claim("other", 10, 30.0)] == ["req-1:input:m"]
    box.release([r.id for r in rows])
    assert sorted(r.event.identifier for r in box.claim("other", 10, 30.0)) == [
        "req-2:input:m",
        "req-3:input:m",
    ]
    # A batch with nothing to leave out takes the next ids in order (no read-back query).
    fresh = box.add_leased([_event(9), _event(5), _event(7)], "me", 30.0)
    stored = dict(box._conn.execute("SELECT identifier, id FROM events").fetchall())
    assert [(r.event.identifier, r.id) for r in fresh] == [
        (f"req-{i}:input:m", stored[f"req-{i}:input:m"]) for i in (9, 5, 7)
    ]
    box.mark_delivered([fresh[0].id, fresh[2].id])
    assert box._conn.execute(
        "SELECT identifier FROM events WHERE status='delivered'"
    ).fetchall() == [
        ("req-9:input:m",),
        ("req-7:input:m",),
    ]
    box.close()


def test_inserts_in_several_statements_keep_ids_and_skip_duplicates(tmp_path: Path) -> None:
    """Where SQLite allows only 999 variables a statement (76 rows), a batch spans several."""
    box = Outbox(tmp_path / "o.sqlite3")
    box._rows_per_insert = 2
    assert box.add([_event(3)], PENDING) == 1
    rows = box.add_leased([_event(i) for i in (1, 2, 3, 4, 2, 5)], "me", 30.0)
    stored = dict(box._conn.execute("SELECT identifier, id FROM events").fetchall())
    assert [(r.event.identifier, r.id) for r in rows] == [
        (f"req-{i}:input:m", stored[f"req-{i}:input:m"]) for i in (1, 2, 4, 5)
    ]
    fresh = box.add_leased([_event(i) for i in (6, 7, 8)], "me", 30.0)
    stored = dict(box._conn.execute("SELECT identifier, id FROM events").fetchall())
    assert [r.id for r in fresh] == [stored[f"req-{i}:input:m"] for i in (6, 7, 8)]
    assert box.add([_event(i) for i in (8, 9, 10)], PENDING) == 2
    box.close()


def test_a_meter_with_a_key_sends_over_one_aiohttp_session_it_closes(fake_stripe: Any) -> None:
    """aiohttp, not httpx: ~0.33 ms of SDK CPU per v1 request against ~1.0 (finding 15).
    All requests in flight share the meter's one session; the user's own client is shared
    as is and never closed by the meter."""
    from stripe_token_meter import Usage, build_events, normalize_model
    from stripe_token_meter.outbox import Row

    events = build_events(
        Usage(model="gpt-4o", provider="openai", input_tokens=3, output_tokens=2),
        customer_id="cus_pool",
        request_id="req-pool",
        timestamp=time.time(),
        event_name=EVENT_NAME,
        token_types="basic",
        normalizer=normalize_model,
    )
    rows = [Row(id=i, event=e, attempts=0) for i, e in enumerate(events)]

    async def send_all(meter: TokenMeter) -> tuple[Any, Any, list[Any]]:
        transport = meter._make_transport()
        own = transport._client  # type: ignore[attr-defined]
        outcomes = [await transport.send(rows[:1]), await transport.send(rows[1:])]
        await transport.aclose()
        return own.client._requestor._client, own.session, outcomes

    for api in ("v1", "v2"):
        meter = TokenMeter(
            api_key="sk_test_fake", api_base=fake_stripe.url, api=api, outbox_path=":memory:"
        )
        http, session, outcomes = anyio.run(send_all, meter)
        assert type(http).__name__ == "AIOHTTPClient"
        assert http._session is session and session.closed  # one session, closed by the meter
        assert [o[0].verdict.value for o in outcomes] == ["delivered", "delivered"]
        meter.close(timeout=1)

    own = fake_stripe.client()
    shared = TokenMeter(stripe_client=own, api="v1", outbox_path=":memory:")
    http, session, outcomes = anyio.run(send_all, shared)
    assert http is own._requestor._client and session is None  # the user's client, as given
    assert own.v1.billing.meters.list().data  # still usable: not closed by the meter
    shared.close(timeout=1)
    # Sent three times, accepted once each: Stripe (and FakeStripe) refuse a repeated identifier.
    assert sorted(fake_stripe.identifiers()) == sorted(e.identifier for e in events)


def test_the_proxy_environment_applies_as_it_did_with_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stripe_token_meter.transport import env_proxy

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy() is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert env_proxy() == "http://proxy.example:3128"  # api.stripe.com, meter-events...
    local = {"api": "http://127.0.0.1:5", "meter_events": "http://127.0.0.1:5"}
    assert env_proxy(local) is None  # plain http: HTTP_PROXY's business, unset
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:8080")
    assert env_proxy(local) == "http://proxy.example:8080"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,api.stripe.com,meter-events.stripe.com")
    assert env_proxy(local) is None
    assert env_proxy() is None


def test_during_an_outage_one_batch_probes_and_the_rest_wait(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    """Every request fails with 500: the meter stops sending batch after batch into the
    outage, probes with one at a time on a growing interval, and delivers all once back."""
    stream = ("POST", "/v2/billing/meter_event_stream")
    fake_stripe.fail_every(1, status=500, path_prefix=stream[1])
    meter = make_meter(retry_base_delay=0.2, concurrency=2)
    _record(meter, 3000)  # 30+ batches of 100
    time.sleep(2.0)
    probes = fake_stripe.requests[stream]
    # The first 2 in flight, then holds of 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s between
    # single probes: at most 2 + 5 requests in 2 s (sending every batch: 30 and more).
    assert 1 <= probes <= 7, probes
    assert fake_stripe.identifiers() == []
    fake_stripe.clear_faults()
    assert meter.flush(15)
    ids = fake_stripe.identifiers()
    assert len(ids) == 3000 and len(set(ids)) == 3000


def test_v2_events_skip_the_sdks_form_encoding_but_send_as_a_plain_list() -> None:
    """Pins the SDK behaviour `transport._EventList` relies on (benchmarks finding 3): if a
    stripe release changes it, delivery stays correct but costs 2.8 ms more per request."""
    import json

    from stripe._encode import _api_encode
    from stripe_token_meter.transport import _EventList

    events = [{"identifier": f"r{i}", "payload": {"value": str(i)}} for i in range(100)]
    params = {"events": _EventList(events)}
    assert list(_api_encode(params)) == [("events", "100 events")]
    assert json.loads(json.dumps(params)) == {"events": events}
