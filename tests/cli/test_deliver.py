"""`flush`, `replay`, `resolve` and `cancel` against FakeStripe: exactly once, and honest exit codes."""

from __future__ import annotations

from collections import Counter

from cli_testkit import Cli, Seeded, dead_port
from stripe_token_meter.outbox import UNCONFIRMED_CODE, Outbox
from support.events import stored_event


def _statuses(cli: Cli, seeded: Seeded) -> dict[str, int]:
    data = cli("status", "--json", "--outbox", str(seeded.path)).json()
    return {k: v for k, v in data["counts"].items() if v}


def test_flush_unreachable_exits_nonzero_naming_the_url(cli: Cli, seeded: Seeded) -> None:
    url = f"http://127.0.0.1:{dead_port()}"
    r = cli("flush", "--timeout", "1", *seeded.flags(api_base=url))
    assert r.code == 1
    assert "2 event(s) still pending" in r.out and f"cannot reach Stripe at {url}" in r.out
    status = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert status["counts"]["pending"] == 2
    assert "connection_error" in status["last_error"]["error"]


def test_flush_delivers_what_a_dead_process_left(cli: Cli, seeded: Seeded) -> None:
    r = cli("flush", "--timeout", "20", *seeded.flags())
    assert r.code == 0, r.out + r.err
    assert "2 event(s) sent" in r.out
    assert Counter(seeded.fake.identifiers()) == Counter(
        [
            "ok1:input:token-billing-tokens",
            "ok1:output:token-billing-tokens",
            "pend1:input:token-billing-tokens",
            "pend1:output:token-billing-tokens",
        ]
    )
    assert seeded.fake.totals()[("cus_known", "openai/gpt-4o-mini", "input")] == 40
    again = cli("flush", *seeded.flags())
    assert (again.code, again.out.strip()) == (0, "Nothing pending: the outbox is fully delivered.")
    assert len(seeded.fake.identifiers()) == 4


def test_replay_after_fixing_the_cause_delivers_once(cli: Cli, seeded: Seeded) -> None:
    code = "meter_event_customer_not_found"
    before = cli(
        "replay", "--code", code, "--json", "--api", "v1", "--timeout", "10", *seeded.flags()
    )
    assert before.code == 1  # the customer still does not exist: dead again
    assert before.json()["dead_again_by_code"] == {code: 2}

    seeded.fake.create_customer("cus_missing")  # the fix
    r = cli("replay", "--code", code, "--json", "--timeout", "20", *seeded.flags())
    assert r.code == 0, r.out + r.err
    summary = r.json()
    assert (summary["requeued"], summary["delivered"], summary["dead"], summary["pending"]) == (
        2,
        2,
        0,
        0,
    )
    ids = Counter(seeded.fake.identifiers())
    assert (
        ids["dead1:input:token-billing-tokens"] == 1
        and ids["dead1:output:token-billing-tokens"] == 1
    )
    assert seeded.fake.totals()[("cus_missing", "openai/gpt-4o", "input")] == 300

    nothing = cli("replay", *seeded.flags())
    assert (nothing.code, "no dead letters" in nothing.out) == (0, True)
    assert Counter(seeded.fake.identifiers()) == ids  # nothing sent twice
    assert "dead" not in _statuses(cli, seeded)


def test_replay_holds_back_unconfirmed_events_unless_named(cli: Cli, seeded: Seeded) -> None:
    outbox = Outbox(seeded.path)
    [row] = outbox.add_leased([stored_event("late1")], "me", 30.0)
    outbox.mark_dead([(row.id, UNCONFIRMED_CODE, "sent 2 days ago without an answer")])
    outbox.close()
    seeded.fake.create_customer("cus_missing")  # dead1's cause, fixed: it is billed via v1
    r = cli("replay", "--json", "--timeout", "20", *seeded.flags())
    assert r.code == 0, r.out + r.err
    assert (r.json()["requeued"], r.json()["held_back"]) == (2, 1)  # dead1's two events
    assert not any(i.startswith("late1:") for i in seeded.fake.identifiers())
    named = cli("replay", "--code", UNCONFIRMED_CODE, "--json", "--timeout", "20", *seeded.flags())
    assert named.code == 0 and named.json()["delivered"] == 1
    assert Counter(seeded.fake.identifiers())["late1:input:token-billing-tokens"] == 1


def test_replay_needs_a_key(cli: Cli, seeded: Seeded) -> None:
    r = cli("replay", "--outbox", str(seeded.path))
    assert r.code == 2 and "needs a Stripe key" in r.err
    assert _statuses(cli, seeded)["dead"] == 2  # nothing was re-queued


def test_resolve_settles_dead_letters_without_sending_them(cli: Cli, seeded: Seeded) -> None:
    sent = Counter(seeded.fake.identifiers())
    before = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert before["counts"]["dead"] == 2 and before["counts"]["resolved"] == 0
    r = cli("resolve", "--code", "meter_event_customer_not_found", "--json", *seeded.flags())
    assert r.code == 0, r.err
    assert r.json() == {
        "resolved": 2,
        "resolved_rejected": 0,
        "code": "meter_event_customer_not_found",
        "dead_codes_left": [],
        "rejected_codes_left": ["missing_customer"],
    }
    after = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert (after["counts"]["dead"], after["counts"]["resolved"]) == (0, 2)
    assert after["dead_letters"] == []
    text = cli("status", "--outbox", str(seeded.path))
    assert "0 dead-lettered (2 more resolved)" in text.out
    # Never sent: neither by resolve nor by a later replay or flush.
    nothing = cli("replay", *seeded.flags())
    assert "no dead letters" in nothing.out
    assert Counter(seeded.fake.identifiers()) == sent
    again = cli("resolve", "--code", "meter_event_customer_not_found", *seeded.flags())
    assert "Resolved 0 dead letter(s)" in again.out
    missing = cli("resolve", *seeded.flags())
    assert missing.code == 2 and "--code" in missing.err


def test_resolve_settles_rejected_records_and_keeps_them(cli: Cli, seeded: Seeded) -> None:
    before = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert (before["counts"]["rejected"], before["counts"]["rejected_resolved"]) == (1, 0)
    assert [r["code"] for r in before["rejected"]] == ["missing_customer"]
    assert "resolve --code missing_customer" in before["rejected"][0]["fix"]
    r = cli("resolve", "--code", "missing_customer", "--json", "--outbox", str(seeded.path))
    assert r.code == 0, r.err
    assert r.json() == {
        "resolved": 0,
        "resolved_rejected": 1,
        "code": "missing_customer",
        "dead_codes_left": ["meter_event_customer_not_found"],
        "rejected_codes_left": [],
    }
    after = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert (after["counts"]["rejected"], after["counts"]["rejected_resolved"]) == (0, 1)
    assert after["rejected"] == []
    assert "1 usage record(s) rejected" not in cli("status", "--outbox", str(seeded.path)).out
    # Kept with its reason and record, stamped when it was settled.
    outbox = Outbox(seeded.path)
    [(code, record, resolved)] = outbox._query("SELECT code, record, resolved FROM rejected")
    outbox.close()
    assert code == "missing_customer" and '"request_id": "nocus"' in record
    assert resolved is not None
    # Dead letters and rejected records settle one code at a time.
    r = cli("resolve", "--code", "meter_event_customer_not_found", "--outbox", str(seeded.path))
    assert "Resolved 2 dead letter(s) and 0 rejected record(s)" in r.out
    assert cli("status", "--json", "--outbox", str(seeded.path)).json()["healthy"] is False
    # (the local-ledger rows still warn: they are never sent)


def test_cancel_marks_cancelled_at_stripe_and_in_the_outbox(cli: Cli, seeded: Seeded) -> None:
    r = cli("cancel", "ok1:input:token-billing-tokens", *seeded.flags())
    assert r.code == 0, r.err
    assert "cancelled ok1:input" in r.out
    assert seeded.fake.cancelled_identifiers() == {"ok1:input:token-billing-tokens"}
    assert seeded.fake.identifiers() == [
        "ok1:output:token-billing-tokens"
    ]  # cancelled events are not billed
    report = cli("report", "--json", "--outbox", str(seeded.path)).json()
    assert report["totals"]["cancelled"] == 1000 and report["totals"]["delivered"] == 200
    assert report["totals"]["total"] == 671  # cancelled tokens are no longer billed

    # a request id cancels all of its token types; the one already cancelled is skipped
    r = cli("cancel", "ok1", "--json", *seeded.flags())
    assert r.code == 0
    assert {x["identifier"]: x["status"] for x in r.json()["results"]} == {
        "ok1:input:token-billing-tokens": "cancelled",
        "ok1:output:token-billing-tokens": "cancelled",
    }
    assert seeded.fake.cancelled_identifiers() == {
        "ok1:input:token-billing-tokens",
        "ok1:output:token-billing-tokens",
    }
    assert _statuses(cli, seeded)["cancelled"] == 2


def test_cancel_withdraws_what_stripe_never_had_unless_a_send_may_be_there(
    cli: Cli, seeded: Seeded
) -> None:
    outbox = Outbox(seeded.path)
    fresh = [stored_event("new1"), stored_event("out1"), stored_event("unsure1")]
    outbox.add(fresh[:1])
    outbox.add_leased(fresh[1:2], "otherhost:1:abc", 300.0)  # a request may be out now
    [unsure] = outbox.add_leased(fresh[2:], "me", 30.0)
    outbox.mark_retry([unsure.id], 0.0, "api_error", "500", maybe_sent=True)
    outbox.close()
    r = cli(
        "cancel",
        "new1:input:token-billing-tokens",
        "dead1",
        "loc1",
        "out1:input:token-billing-tokens",
        "unsure1:input:token-billing-tokens",
        "nope:input:token-billing-tokens",
        "--json",
        *seeded.flags(),
    )
    assert r.code == 1
    results = {x["identifier"]: x for x in r.json()["results"]}
    withdrawn = {i for i, x in results.items() if x["status"] == "cancelled"}
    assert withdrawn == {
        "new1:input:token-billing-tokens",
        "dead1:input:token-billing-tokens",
        "dead1:output:token-billing-tokens",
        "loc1:input:token-billing-tokens",
        "loc1:output:token-billing-tokens",
    }
    assert all(results[i]["where"] == "outbox" for i in withdrawn)
    assert "leased" in results["out1:input:token-billing-tokens"]["error"]
    assert "may have reached Stripe" in results["unsure1:input:token-billing-tokens"]["error"]
    assert "No meter event found" in results["nope:input:token-billing-tokens"]["error"]
    assert seeded.fake.cancelled_identifiers() == set()  # nothing asked of Stripe for them
    # Withdrawn events are never sent: a flush delivers only what is left.
    before = Counter(seeded.fake.identifiers())
    flushed = cli("flush", "--timeout", "3", *seeded.flags())  # out1 stays leased: patience
    sent = Counter(seeded.fake.identifiers()) - before
    assert not any(i.startswith(("new1:", "dead1:", "loc1:")) for i in sent), flushed.out
    report = cli("report", "--json", "--outbox", str(seeded.path)).json()
    assert report["events"]["local"] == 0 and report["events"]["dead"] == 0


def test_cancel_of_events_not_sent_needs_no_key(cli: Cli, seeded: Seeded) -> None:
    r = cli("cancel", "loc1", "--outbox", str(seeded.path))
    assert r.code == 0, r.err
    assert r.out.count("withdrawn before delivery") == 2
    assert _statuses(cli, seeded)["cancelled"] == 2
