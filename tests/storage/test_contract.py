"""The outbox contract: every backend (SQLite, PostgreSQL) must pass all of these.

Only the `OutboxStore` interface is used: no SQL, so the same test holds any backend to
the same behaviour. `clock` moves `time.time()` for leases, retry delays, retention and
Stripe's 24 h duplicate window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stripe_token_meter.storage import (
    DEAD,
    DELIVERED,
    LOCAL,
    PENDING,
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    OutboxStore,
)
from support.events import stored_event

from .conftest import Clock

Open = Callable[..., OutboxStore]


def _ids(store: OutboxStore, n: int, **kw: object) -> list[str]:
    events = [stored_event(f"r{k}", **kw) for k in range(n)]  # type: ignore[arg-type]
    store.add(events)
    return [e.identifier for e in events]


def test_an_identifier_is_stored_once(store: OutboxStore) -> None:
    a, b = stored_event("a", value=5), stored_event("b", value=7)
    added, rows = store.ingest([a, b, a], [], [])
    assert (added, rows) == (2, [])
    assert store.add([a, stored_event("c")]) == 1  # a repeat is refused, c is new
    counts = store.counts()
    assert counts[PENDING] == 3 and store.pending_count() == 3 and store.has_pending()
    assert store.find_events(a.identifier) == [(a.identifier, a.event_name, PENDING, None)]


def test_ingest_leases_to_its_owner_and_records_journal_progress(store: OutboxStore) -> None:
    events = [stored_event(f"r{k}", value=k + 1) for k in range(3)]
    added, rows = store.ingest(
        [*events, events[0]],
        [("invalid_usage", "model", "no model", {"customer_id": "cus_x"})],
        [("seg-1.jnl", 120), ("seg-2.jnl", 40)],
        owner="w1",
        lease_seconds=30,
        api="v2",
    )
    assert added == 3
    assert [r.event for r in rows] == events and [r.attempts for r in rows] == [0, 0, 0]
    assert len({r.id for r in rows}) == 3
    assert store.claim("w2", 10, 30) == []  # leased to w1 already
    assert store.journal_offset("seg-1.jnl") == 120
    assert store.journal_offset("seg-2.jnl") == 40
    assert store.journal_offset("other.jnl") == 0
    store.ingest([], [], [("seg-1.jnl", 300)])
    assert store.journal_offset("seg-1.jnl") == 300
    store.forget_journal("seg-1.jnl")
    assert store.journal_offset("seg-1.jnl") == 0
    assert store.counts()["rejected"] == 1


def test_two_claimers_never_get_the_same_row(open_stores: Open) -> None:
    first = open_stores()
    first.add([stored_event(f"r{k}") for k in range(400)])
    stores = [first, open_stores(), open_stores()]
    got: list[list[int]] = [[] for _ in stores]

    def run(k: int) -> None:
        while rows := stores[k].claim(f"owner{k}", 7, 60):
            got[k].extend(r.id for r in rows)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for ids in got for i in ids]
    assert len(every) == 400 and len(set(every)) == 400


def test_an_expired_lease_is_taken_over_and_stamped_unconfirmed(
    store: OutboxStore, clock: Clock
) -> None:
    _ids(store, 2)
    first = store.claim("dead-host:1:a", 10, 30)
    assert len(first) == 2
    clock.advance(31)  # the holder never came back
    again = store.claim("live:2:b", 10, 30)
    assert sorted(r.id for r in again) == sorted(r.id for r in first)
    # Stamped: the holder may have sent them. Withdrawing is refused for that reason...
    store.release([again[0].id])
    assert "may have reached Stripe" in (store.withdraw(again[0].event.identifier) or "")
    # ...and once that first send is nearly a day old, the row is dead-lettered, not resent.
    clock.advance(UNCONFIRMED_LIMIT + 1)
    assert store.claim("live:2:b", 10, 30) == []
    assert store.take_expired() == 2 and store.take_expired() == 0
    [(code, n, _, message)] = store.dead_by_code()
    assert (code, n) == (UNCONFIRMED_CODE, 2)
    assert message is not None and "could bill it twice" in message


def test_reclaiming_dead_processes_never_frees_a_live_lease(store: OutboxStore) -> None:
    _ids(store, 1)
    assert len(store.claim("elsewhere:123:x", 5, 60)) == 1
    assert store.reclaim_from_dead_processes("this-host") == 0
    assert store.claim("this-host:1:y", 5, 60) == []


def test_delivered_retried_dead_and_released(store: OutboxStore, clock: Clock) -> None:
    _ids(store, 4)
    rows = store.claim("w", 10, 30)
    a, b, c, d = (r.id for r in rows)
    store.mark_delivered([a])
    store.mark_retry([b], 5.0, "rate_limited", "slow down")
    store.mark_dead([(c, "invalid_customer", "no such customer")])
    store.release([d], 2.0)
    counts = store.counts()
    assert (counts[DELIVERED], counts[PENDING], counts[DEAD], counts["retrying"]) == (1, 2, 1, 1)
    assert store.last_delivered() == clock.now
    assert store.next_due() == clock.now + 2.0
    assert store.claim("w", 10, 30) == []  # both wait for their delay
    clock.advance(2.5)
    assert [r.id for r in store.claim("w", 10, 30)] == [d]
    clock.advance(3.0)
    [retried] = store.claim("w", 10, 30)
    assert (retried.id, retried.attempts) == (b, 1)
    assert store.dead_by_code() == [("invalid_customer", 1, 1, "no such customer")]
    assert store.last_event_error() == ("invalid_customer", "no such customer")


def test_answers_for_rows_withdrawn_meanwhile_keep_their_status(store: OutboxStore) -> None:
    [ident] = _ids(store, 1)
    [row] = store.claim("w", 1, 30)
    store.mark_dead([(row.id, "invalid_customer", "gone")])
    store.mark_retry([row.id], 1.0, "timeout", "late answer")
    store.release([row.id])
    assert store.find_events(ident)[0][2] == DEAD
    assert store.dead_by_code()[0][3] == "gone"


def test_replay_goes_back_per_api_and_claims_keep_to_their_api(store: OutboxStore) -> None:
    v1 = [stored_event(f"one{k}") for k in range(2)]
    v2 = [stored_event(f"two{k}") for k in range(3)]
    store.add(v1, api="v1")
    store.add(v2, api="v2")
    rows = store.claim("w", 10, 30)
    store.mark_dead([(r.id, "invalid_customer", "x") for r in rows])
    replay = store.replayable_rows()
    assert sorted(a for _, a, _ in replay) == ["v1", "v1", "v2", "v2", "v2"]
    assert sorted(store.replayable_ids()) == sorted(i for i, _, _ in replay)
    assert store.requeue_dead_ids([i for i, a, _ in replay if a == "v1"]) == 2
    assert store.pending_by_api("v2") == {"v1": 2}
    assert store.claim("v2-worker", 10, 30, api="v2") == []  # v1 rows never go through v2
    assert {r.event.identifier for r in store.claim("v1-worker", 10, 30, api="v1")} == {
        e.identifier for e in v1
    }
    assert store.requeue_dead() == 3
    outcomes = store.outcomes([i for i, _, _ in replay], "v2")
    assert sorted(outcomes) == [("v1", PENDING, None, 2), ("v2", PENDING, None, 3)]
    assert store.apis() == {"v1": 2, "v2": 3}


def test_unconfirmed_dead_letters_are_replayed_only_by_name(
    store: OutboxStore, clock: Clock
) -> None:
    _ids(store, 1)
    store.claim("a", 1, 30)
    clock.advance(UNCONFIRMED_LIMIT + 60)
    assert store.claim("b", 1, 30) == []
    assert store.replayable_rows() == [] and store.requeue_dead() == 0
    assert len(store.replayable_rows(UNCONFIRMED_CODE)) == 1
    assert store.requeue_dead(UNCONFIRMED_CODE) == 1
    assert len(store.claim("b", 1, 30)) == 1  # replaying restarts the clock


def test_other_apis_are_held_and_released(store: OutboxStore) -> None:
    store.add([stored_event("one")], api="v1")
    store.add([stored_event("two")], api="v2")
    store.add([stored_event("old")])  # before the api column: the default api's
    held = store.hold_other_apis("v1", "v2", 60)
    assert len(held) == 2
    assert {r.event.identifier for r in store.claim("w", 10, 30)} == {
        stored_event("one").identifier
    }
    store.release_held(held)
    assert len(store.claim("w", 10, 30)) == 2


def test_resolve_dead_letters_and_rejected_records(store: OutboxStore) -> None:
    _ids(store, 2)
    rows = store.claim("w", 10, 30)
    store.mark_dead([(r.id, "invalid_customer", "x") for r in rows])
    store.ingest([], [("invalid_usage", "model", "bad", {"customer_id": "cus_1"})], [])
    store.reject("invalid_customer", "customer_id", "empty", {"scope_customer": "cus_2"})
    assert store.open_codes() == (["invalid_customer"], ["invalid_customer", "invalid_usage"])
    assert store.rejected_count() == 2
    assert store.rejected_count(customer="cus_2") == 1
    assert sorted(c for c, *_ in store.rejected_by_code()) == ["invalid_customer", "invalid_usage"]
    assert store.resolve_dead("invalid_customer") == 2
    assert store.resolve_rejected("invalid_usage") == 1
    assert store.open_codes() == ([], ["invalid_customer"])
    counts = store.counts()
    assert (counts["resolved"], counts[DEAD]) == (2, 0)
    assert (counts["rejected"], counts["rejected_resolved"]) == (1, 1)
    records = store.rejected_records()
    assert [(r[0], r[3]) for r in records] == [
        ("invalid_usage", {"customer_id": "cus_1"}),
        ("invalid_customer", {"scope_customer": "cus_2"}),
    ]
    assert records[0][4] is not None and records[1][4] is None


def test_withdraw_cancel_and_adjustments(store: OutboxStore) -> None:
    a, b, c = _ids(store, 3)
    assert store.withdraw(a) is None
    assert store.withdraw(a) == "the event is cancelled"
    assert store.withdraw("nope") == "no such event in the outbox"
    [_, row_c] = sorted(store.claim("w", 10, 30), key=lambda r: r.id)
    assert "leased" in (store.withdraw(b) or "")
    store.mark_delivered([row_c.id])
    store.record_adjustment(c, "token-billing-tokens", "cancelled", None)
    store.record_adjustment(b, "token-billing-tokens", "failed", "too old")
    assert store.find_events(c)[0][2] == "cancelled"
    assert store.adjustment_counts() == {"cancelled": 1, "failed": 1}
    assert store.counts()["cancelled"] == 2


def test_find_events_by_request_id_takes_wildcards_literally(store: OutboxStore) -> None:
    store.add([stored_event("req_1"), stored_event("reqX1"), stored_event("req%")])
    found = store.find_events("req_1")
    assert [f[0] for f in found] == [stored_event("req_1").identifier]
    assert [f[0] for f in store.find_events("req%")] == [stored_event("req%").identifier]
    assert store.find_events("missing") == []


def test_prune_deletes_only_old_delivered_rows(store: OutboxStore, clock: Clock) -> None:
    old = [stored_event(f"old{k}", timestamp=int(clock.now)) for k in range(5)]
    store.add(old)
    store.add([stored_event("local")], LOCAL)
    rows = store.claim("w", 10, 30)
    store.mark_delivered([r.id for r in rows[:4]])
    store.mark_dead([(rows[4].id, "x", "y")])
    clock.advance(40 * 86400)
    store.add([stored_event("new")])
    [new] = store.claim("w", 1, 30)
    store.mark_delivered([new.id])
    cutoff = clock.now - 35 * 86400
    assert store.prune_delivered(cutoff, 3) == 3
    assert store.prune_delivered(cutoff) == 1
    assert store.prune_delivered(cutoff) == 0
    counts = store.counts()
    assert (counts[DELIVERED], counts[DEAD], counts[LOCAL]) == (1, 1, 1)


def test_reports(store: OutboxStore, clock: Clock) -> None:
    store.add([stored_event("a", customer="cus_a", value=3, timestamp=1000)], api="v2")
    store.add([stored_event("b", customer="cus_b", value=4, timestamp=2000)], api="v1")
    store.add([stored_event("l", customer="cus_a", value=9, timestamp=2000)], LOCAL)
    assert store.oldest_pending() == clock.now
    rows = store.claim("w", 1, 30)
    store.mark_delivered([r.id for r in rows])
    assert store.delivered_totals() == {("cus_a", "openai/gpt-4o", "input"): (1, 3)}
    assert sorted(store.report_rows()) == [
        ("cus_a", "openai/gpt-4o", "input", DELIVERED, 1, 3),
        ("cus_a", "openai/gpt-4o", "input", LOCAL, 1, 9),
        ("cus_b", "openai/gpt-4o", "input", PENDING, 1, 4),
    ]
    assert store.report_rows(since=1500, customer="cus_b") == [
        ("cus_b", "openai/gpt-4o", "input", PENDING, 1, 4)
    ]
    assert store.apis(since=1500) == {"v1": 1}
    assert store.event_names() == {"token-billing-tokens": 3}


def test_stripe_error_reports_dead_letter_and_count_once(store: OutboxStore) -> None:
    sent, waiting, settled = (stored_event(n, value=2) for n in ("sent", "waiting", "settled"))
    store.add([sent, waiting, settled])
    rows = {r.event.identifier: r.id for r in store.claim("w", 10, 30)}
    store.mark_delivered([rows[sent.identifier]])
    store.mark_dead([(rows[settled.identifier], "invalid", "bad")])
    store.resolve_dead("invalid")
    store.release([rows[waiting.identifier]])
    reported = [
        (i.identifier, "meter_event_customer_not_found", "no such customer")
        for i in (sent, waiting, settled)
    ]
    assert store.dead_letter_identifiers([*reported, ("unknown-id", "x", "y")]) == (2, 1)
    assert store.counts()[DEAD] == 2 and store.counts()[DELIVERED] == 0
    assert store.record_error_report("evt_1", "v1.billing.meter.error_report_triggered", {"a": 2})
    assert not store.record_error_report(
        "evt_1", "v1.billing.meter.error_report_triggered", {"a": 2}
    )
    store.record_error_report("evt_2", "v1.billing.meter.no_meter_found", {"a": 1, "b": 4})
    assert store.error_report_counts() == {"a": 3, "b": 4}


def test_delivered_per_customer_hour(store: OutboxStore) -> None:
    store.add([stored_event("a", customer="cus_a", value=3, timestamp=7200 + 5)])
    store.add([stored_event("b", customer="cus_a", value=4, timestamp=7200 + 3599)])
    store.add([stored_event("c", customer="cus_b", value=5, timestamp=10800)])
    store.add([stored_event("d", customer="cus_b", value=6, timestamp=100)])
    store.mark_delivered([r.id for r in store.claim("w", 10, 30)])
    name = "token-billing-tokens"
    assert store.delivered_per_customer_hour(name, 3600) == [
        ("cus_a", 7200, 7, 2),
        ("cus_b", 10800, 5, 1),
    ]
    assert store.delivered_per_customer_hour(name, 0, "cus_b") == [
        ("cus_b", 0, 6, 1),
        ("cus_b", 10800, 5, 1),
    ]
    assert store.delivered_per_customer_hour("other", 0) == []


def test_meta(store: OutboxStore) -> None:
    assert store.get_meta("k") is None
    store.set_meta("k", "one")
    store.set_meta("k", "two")
    assert store.get_meta("k") == "two"


def test_a_read_only_store_reads(open_stores: Open) -> None:
    writer = open_stores()
    _ids(writer, 2)
    reader = open_stores(readonly=True)
    assert reader.counts()[PENDING] == 2


def test_spent_since_sums_a_cost_event_per_customer_except_cancelled(store: OutboxStore) -> None:
    now = 1_800_000_000
    cost = "token-billing-cost"
    store.add(
        [
            stored_event("a", event_name=cost, customer="cus_a", value=10_506, timestamp=now),
            stored_event("b", event_name=cost, customer="cus_a", value=494, timestamp=now + 5),
            stored_event("c", event_name=cost, customer="cus_b", value=7, timestamp=now + 9),
            stored_event("old", event_name=cost, customer="cus_a", value=999, timestamp=now - 1),
            stored_event("tok", customer="cus_a", value=1_234, timestamp=now),
            stored_event("gone", event_name=cost, customer="cus_b", value=50, timestamp=now),
        ]
    )
    gone = stored_event("gone", event_name=cost, customer="cus_b").identifier
    assert store.withdraw(gone) is None  # cancelled: never billed, not spent
    rows = store.claim("w1", 1, 30)
    store.mark_delivered([r.id for r in rows])  # delivered rows still count
    assert store.spent_since(cost, now) == {"cus_a": 11_000, "cus_b": 7}
    assert store.spent_since(cost, now + 6) == {"cus_b": 7}
    assert store.spent_since(cost, now, now + 5) == {"cus_a": 10_506}  # `until` excluded
    assert store.spent_since("no-such-event", now) == {}
