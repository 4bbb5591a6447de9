"""`replay` and `flush` resend each event through the API it was first sent with.

Why: the v2 stream answers 200 before it validates, so a v1 event Stripe refused on the
spot (unknown customer) "delivered" through v2 is dropped, not billed, while status
turns healthy. The seeded outbox was written by a meter on api="v1".
"""

from __future__ import annotations

import sqlite3

from cli_testkit import KEY, Cli, Seeded, dead_port
from stripe_token_meter import TokenMeter, Usage

CODE = "meter_event_customer_not_found"


def _sent(seeded: Seeded, prefix: str) -> list[tuple[str, str]]:
    """(identifier, api) of the events FakeStripe accepted whose identifier starts so."""
    return sorted(
        (e.identifier, e.api) for e in seeded.fake.events() if e.identifier.startswith(prefix)
    )


def test_replay_resends_v1_dead_letters_through_v1(cli: Cli, seeded: Seeded) -> None:
    r = cli("replay", "--json", "--timeout", "20", *seeded.flags())  # the CLI's --api is v2
    assert r.code == 1, r.out + r.err
    summary = r.json()
    assert (summary["requeued"], summary["delivered"], summary["dead"], summary["pending"]) == (
        2,
        0,
        2,
        0,
    )
    assert summary["by_api"] == {"v1": {"delivered": 0, "dead": 2, "pending": 0}}
    assert summary["dead_again_by_code"] == {CODE: 2}
    assert _sent(seeded, "dead1:") == []
    assert seeded.fake.error_reports == []  # nothing went to the v2 stream
    status = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert (status["healthy"], status["counts"]["dead"]) == (False, 2)

    seeded.fake.create_customer("cus_missing")  # the fix
    text = cli("replay", "--timeout", "20", *seeded.flags())
    assert text.code == 0, text.out + text.err
    assert text.out.startswith("Replayed 2 dead letter(s) (2 via v1): 2 delivered, 0 dead again")
    assert _sent(seeded, "dead1:") == [
        ("dead1:input:token-billing-tokens", "v1"),
        ("dead1:output:token-billing-tokens", "v1"),
    ]


def test_replay_of_older_rows_rejected_synchronously_needs_api_v1(cli: Cli, seeded: Seeded) -> None:
    """Rows from a file older than `events.api`: the CLI's --api, but a synchronous
    rejection only comes from v1, so the v2 default never replays it."""
    with sqlite3.connect(seeded.path) as db:
        db.execute("UPDATE events SET api=NULL")
    seeded.fake.create_customer("cus_missing")
    r = cli("replay", "--json", "--timeout", "20", *seeded.flags())
    assert r.code == 1, r.out + r.err
    assert (r.json()["requeued"], r.json()["held_back_unknown_api"]) == (0, 2)
    assert _sent(seeded, "dead1:") == []
    status = cli("status", "--json", "--outbox", str(seeded.path)).json()
    assert status["counts"]["dead"] == 2

    v1 = cli("replay", "--api", "v1", "--json", "--timeout", "20", *seeded.flags())
    assert v1.code == 0, v1.out + v1.err
    assert v1.json()["by_api"] == {"v1": {"delivered": 2, "dead": 0, "pending": 0}}
    assert _sent(seeded, "dead1:") == [
        ("dead1:input:token-billing-tokens", "v1"),
        ("dead1:output:token-billing-tokens", "v1"),
    ]


def test_flush_sends_each_pending_event_through_its_own_api(cli: Cli, seeded: Seeded) -> None:
    down = TokenMeter(
        api_key=KEY,
        api_base=f"http://127.0.0.1:{dead_port()}",
        outbox_path=seeded.path,
        api="v2",
        retry_base_delay=0.05,
    )
    down.record(
        Usage(
            customer_id="cus_known",
            model="openai/gpt-4o",
            input_tokens=5,
            output_tokens=1,
            request_id="pend2",
        )
    )
    assert not down.flush(0.5)
    down.close(timeout=0.0)
    r = cli("flush", "--api", "v1", "--timeout", "20", *seeded.flags())
    assert r.code == 0, r.out + r.err
    assert _sent(seeded, "pend") == [
        ("pend1:input:token-billing-tokens", "v1"),
        ("pend1:output:token-billing-tokens", "v1"),
        ("pend2:input:token-billing-tokens", "v2"),
        ("pend2:output:token-billing-tokens", "v2"),
    ]
