"""CreditGuard: refuses a customer's calls once their credit is spent, from memory only.

The cost per call is the issue's acceptance case: gpt-4o, 1,234 input and 567 output
tokens at $2.50 / $10.00 per 1M plus 20 % markup = 10,506 micro-dollars.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import CreditExhausted, CreditGuard
from stripe_token_meter.guard import GuardBinding
from stripe_token_meter.storage import open_store
from stripe_token_meter.testing import FakeStripe
from support.events import stored_event

COST = 10_506
MODEL = "openai/gpt-4o"
BALANCE = ("GET", "/v1/billing/credit_balance_summary")


def _binding(
    fake: FakeStripe | None = None, outbox: Path | None = None, cost_event: str | None = None
) -> GuardBinding:
    return GuardBinding(
        outbox=outbox,
        cost_event_name=cost_event,
        currency="usd",
        api_key=None,
        api_base=None,
        stripe_client=fake.client() if fake is not None else None,
    )


def _until(predicate: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def _spend_loop(guard: CreditGuard, customer: str, limit: int = 500) -> int:
    """Sequential calls, each costed by the 'worker' right after it ends; calls made."""
    for n in range(limit):
        try:
            hold = guard.reserve(customer, MODEL)
        except CreditExhausted as exc:
            assert exc.customer_id == customer and exc.currency == "usd"
            assert exc.remaining <= 0
            return n
        assert hold is not None
        hold.release()
        guard.record_cost(customer, COST)
    raise AssertionError("never refused")


def _record(meter: Any, request_id: str) -> None:
    """One gpt-4o call of 1,234 prompt and 567 completion tokens for cus_x: 10,506 micros."""
    from stripe_token_meter import Usage

    meter.record(
        Usage(
            model="gpt-4o",
            provider="openai",
            customer_id="cus_x",
            request_id=request_id,
            input_tokens=1_234,
            output_tokens=567,
        )
    )


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as f:
        f.auto_customers = True
        yield f


def test_a_dollar_buys_96_calls_then_credit_exhausted() -> None:
    guard = CreditGuard({"cus_x": "1.00", "cus_zero": "0"})
    assert _spend_loop(guard, "cus_x") == 96  # 95 x 10,506 < 1,000,000 < 96 x 10,506
    assert guard.remaining("cus_x") == Decimal(1_000_000 - 96 * COST) / 1_000_000
    with pytest.raises(CreditExhausted) as e:
        guard.reserve("cus_x", MODEL)
    assert e.value.remaining == Decimal("-0.008576")
    assert "cus_x" in str(e.value) and "USD" in str(e.value)
    with pytest.raises(CreditExhausted):  # no credit: refused on the first call
        guard.reserve("cus_zero", MODEL)
    assert guard.stats()["refused"] == 2 + 1


def test_costs_arriving_late_still_count_the_calls_released_before_them() -> None:
    guard = CreditGuard({"cus_x": "1.00"})
    first = guard.reserve("cus_x", MODEL)
    assert first is not None
    first.release()
    guard.record_cost("cus_x", COST)  # one cost known: the estimate per call
    pending = 0  # the worker lags: no cost arrives while the loop runs
    with pytest.raises(CreditExhausted):
        for _ in range(500):
            hold = guard.reserve("cus_x", MODEL)
            assert hold is not None
            hold.release()
            hold.release()  # idempotent
            pending += 1
    assert pending == 95  # 1 + 95 calls: reservations alone stop the loop
    for _ in range(pending):
        guard.record_cost("cus_x", COST)
    assert guard.remaining("cus_x") == Decimal(1_000_000 - 96 * COST) / 1_000_000


def test_calls_made_before_any_cost_is_known_count_once_one_is(monkeypatch: Any) -> None:
    from stripe_token_meter import credit_guard

    monkeypatch.setattr(credit_guard, "FIRST_CALL_WAIT_SECONDS", 0.05)
    guard = CreditGuard({"cus_x": "1.00"})
    started = time.monotonic()
    for _ in range(50):  # the worker has not priced anything yet: no estimate
        hold = guard.reserve("cus_x", MODEL)
        assert hold is not None
        hold.release()
    assert 0.05 <= time.monotonic() - started < 0.5  # the second call waited, once
    guard.record_cost("cus_x", COST)  # the first cost: the 49 others now count as much
    assert guard.remaining("cus_x") == Decimal(1_000_000 - 50 * COST) / 1_000_000
    assert _spend_loop(guard, "cus_x") == 46


def test_a_released_call_whose_cost_never_comes_stops_counting(monkeypatch: Any) -> None:
    from stripe_token_meter import credit_guard

    monkeypatch.setattr(credit_guard, "COST_WAIT_SECONDS", 0.05)
    guard = CreditGuard({"cus_x": "0.02"})
    first = guard.reserve("cus_x", MODEL)
    assert first is not None
    first.release()
    guard.record_cost("cus_x", COST)  # 9,494 left
    hold = guard.reserve("cus_x", MODEL)
    assert hold is not None
    hold.release()
    with pytest.raises(CreditExhausted):  # reserved 10,506 while its cost is awaited
        guard.reserve("cus_x", MODEL)
    time.sleep(0.06)
    assert guard.reserve("cus_x", MODEL) is not None  # no cost came: the reservation ends


def test_dict_customers_not_listed_follow_on_unavailable() -> None:
    assert CreditGuard({"cus_x": "1"}).reserve("cus_other", MODEL) is None
    with pytest.raises(CreditExhausted) as e:
        CreditGuard({"cus_x": "1"}, on_unavailable="deny").reserve("cus_other", MODEL)
    assert e.value.remaining == 0


def test_reservations_follow_the_model_and_customer() -> None:
    guard = CreditGuard({"cus_a": "0.05", "cus_b": "1"})
    h = guard.reserve("cus_b", "openai/gpt-4o-mini")
    assert h is not None
    h.release()
    guard.record_cost("cus_b", 40_000)  # the mini call cost 0.04
    h = guard.reserve("cus_b", MODEL)
    assert h is not None
    h.release()
    guard.record_cost("cus_b", 1_000)
    # cus_a has never called: it reserves what anyone's gpt-4o-mini call cost
    held = guard.reserve("cus_a", "openai/gpt-4o-mini")
    assert guard.remaining("cus_a") == Decimal("0.01")
    assert held is not None
    held.release()
    guard.record_cost("cus_a", 40_000)
    assert guard.remaining("cus_a") == Decimal("0.01")


def test_stripe_source_reads_the_grants_once_per_window(fake: FakeStripe) -> None:
    fake.grant_credit("cus_x", 100)  # $1.00
    guard = CreditGuard("stripe", refresh_seconds=60)
    guard.bind(_binding(fake))
    first = guard.reserve("cus_x", MODEL)  # unknown yet: allowed, fetched in the background
    assert first is not None
    first.release()
    _until(lambda: guard.remaining("cus_x") is not None)
    guard.record_cost("cus_x", COST)
    assert _spend_loop(guard, "cus_x") == 95  # 1 + 95: as with a dict budget of $1.00
    assert fake.requests[BALANCE] == 1
    fake.create_customer("cus_none")
    guard.prefetch(["cus_none"])
    _until(lambda: guard.remaining("cus_none") is not None)
    with pytest.raises(CreditExhausted):  # no grant: refused on the first call
        guard.reserve("cus_none", MODEL)
    guard.close()


def test_one_balance_request_per_customer_per_window_under_8_threads(fake: FakeStripe) -> None:
    customers = [f"cus_t{i}" for i in range(4)]
    for c in customers:
        fake.grant_credit(c, 10_000)  # $100 each: never exhausted here
    guard = CreditGuard("stripe", refresh_seconds=60)
    guard.bind(_binding(fake))
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            for i in range(200):
                c = customers[(k + i) % 4]
                hold = guard.reserve(c, MODEL)
                assert hold is not None
                hold.release()
                guard.record_cost(c, COST)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _until(lambda: all(guard.remaining(c) is not None for c in customers))
    time.sleep(0.05)
    assert fake.requests[BALANCE] == 4
    assert guard.stats()["requests"] == 4
    # 1,600 calls of 10,506 over 4 customers
    assert (
        sum(guard.remaining(c) or 0 for c in customers)
        == Decimal(400) - Decimal(1_600 * COST) / 1_000_000
    )
    guard.close()


def test_a_low_estimate_refreshes_sooner_once(fake: FakeStripe, monkeypatch: Any) -> None:
    from stripe_token_meter import credit_guard

    monkeypatch.setattr(credit_guard, "MIN_LOW_REFRESH_SECONDS", 0.0)
    fake.grant_credit("cus_x", 100)
    guard = CreditGuard("stripe", refresh_seconds=60)
    guard.bind(_binding(fake))
    guard.prefetch(["cus_x"])
    _until(lambda: guard.remaining("cus_x") is not None)
    guard.record_cost("cus_x", 950_000)  # 5 % left: below 10 % of the balance
    for _ in range(3):
        hold = guard.reserve("cus_x", MODEL)
        assert hold is not None
        hold.release()
        guard.record_cost("cus_x", 1)
        _until(lambda: fake.requests[BALANCE] == 2)
    time.sleep(0.05)
    assert fake.requests[BALANCE] == 2  # once per window, not once per call
    guard.close()


def test_a_credit_grant_webhook_refreshes_at_once(fake: FakeStripe) -> None:
    fake.grant_credit("cus_x", 1)  # one cent
    guard = CreditGuard("stripe", refresh_seconds=3600)
    guard.bind(_binding(fake))
    guard.prefetch(["cus_x"])
    _until(lambda: guard.remaining("cus_x") is not None)
    guard.record_cost("cus_x", COST)
    with pytest.raises(CreditExhausted):
        guard.reserve("cus_x", MODEL)
    fake.grant_credit("cus_x", 500)  # the customer tops up
    event = fake.credit_events()[-1]
    assert guard.handle_event({"type": "customer.created", "data": {"object": {}}}) is False
    assert guard.handle_event(event) is True
    _until(lambda: (guard.remaining("cus_x") or 0) > 0)
    assert guard.remaining("cus_x") == Decimal(5_010_000 - COST) / 1_000_000
    assert guard.reserve("cus_x", MODEL) is not None
    assert fake.requests[BALANCE] == 2
    guard.close()


def test_stripe_event_objects_are_understood(fake: FakeStripe) -> None:
    import stripe

    fake.grant_credit("cus_x", 100)
    guard = CreditGuard("stripe")
    guard.bind(_binding(fake))
    event = stripe.Event.construct_from(
        {
            "id": "evt_1",
            "object": "event",
            "type": "billing.alert.triggered",
            "data": {"object": {"object": "billing.alert_triggered", "customer": "cus_x"}},
        },
        "sk_test_fake",
    )
    assert guard.handle_event(event) is True
    _until(lambda: guard.remaining("cus_x") == Decimal(1))
    guard.close()


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_on_unavailable_with_stripe_down(fake: FakeStripe, policy: Any) -> None:
    binding = _binding(fake)  # its client points at the server about to go away
    fake.stop()
    guard = CreditGuard("stripe", on_unavailable=policy, refresh_seconds=60)
    guard.bind(binding)
    if policy == "allow":
        assert guard.reserve("cus_x", MODEL) is not None
    else:
        with pytest.raises(CreditExhausted) as e:
            guard.reserve("cus_x", MODEL)
        assert e.value.remaining == 0 and e.value.reason is not None
        assert "Stripe did not give" in str(e.value) and "no credit left" not in str(e.value)
    _until(lambda: guard.stats().get("errors", 0) == 1)
    assert guard.remaining("cus_x") is None
    if policy == "allow":
        assert guard.reserve("cus_x", MODEL) is not None  # still unknown, still allowed
    else:
        with pytest.raises(CreditExhausted):
            guard.reserve("cus_x", MODEL)
    guard.close()


def test_restart_remembers_the_periods_spending(tmp_path: Path) -> None:
    outbox = tmp_path / "o.sqlite3"
    store = open_store(outbox)
    now = int(time.time())
    cost = "token-billing-cost"
    store.add(
        [
            stored_event(f"r{i}", event_name=cost, customer="cus_x", value=COST, timestamp=now - 1)
            for i in range(90)
        ]
    )
    store.close()
    guard = CreditGuard({"cus_x": "1.00"}, period_start=lambda t: float(now - 3600))
    guard.bind(_binding(outbox=outbox, cost_event=cost))
    assert guard.wait_loaded(5)
    assert guard.remaining("cus_x") == Decimal(1_000_000 - 90 * COST) / 1_000_000
    assert _spend_loop(guard, "cus_x") == 6
    guard.close()
    # Spending before the period started is forgotten.
    fresh = CreditGuard({"cus_x": "1.00"}, period_start=lambda t: float(now))
    fresh.bind(_binding(outbox=outbox, cost_event=cost))
    assert fresh.wait_loaded(5)
    assert fresh.remaining("cus_x") == Decimal(1)
    fresh.close()


def test_a_new_period_starts_from_zero_spent() -> None:
    period = [1_000.0]
    guard = CreditGuard({"cus_x": "0.02"}, period_start=lambda t: period[0])
    assert _spend_loop(guard, "cus_x") == 2
    period[0] = 2_000.0  # the month turns
    guard._wake.set()  # the guard's thread checks at least once a minute; now, for the test
    _until(lambda: guard.remaining("cus_x") == Decimal("0.02"))
    assert _spend_loop(guard, "cus_x") == 2
    guard.close()


def test_the_second_call_waits_for_the_first_calls_cost_once() -> None:
    guard = CreditGuard({"cus_x": "1.00"})
    first = guard.reserve("cus_x", MODEL)
    assert first is not None
    first.release()  # ended; the worker prices it 50 ms later
    worker = threading.Timer(0.05, guard.record_cost, ("cus_x", COST))
    worker.start()
    started = time.monotonic()
    second = guard.reserve("cus_x", MODEL)
    waited = time.monotonic() - started
    worker.join()
    assert 0.04 <= waited < 0.5
    assert second is not None
    second.release()
    guard.record_cost("cus_x", COST)
    assert _spend_loop(guard, "cus_x") == 94  # 2 + 94 = 96, as without the worker's lag


def test_a_customer_whose_first_call_is_in_flight_does_not_wait() -> None:
    guard = CreditGuard({"cus_x": "1.00"})
    first = guard.reserve("cus_x", MODEL)  # a long call, still running
    started = time.monotonic()
    for _ in range(5):
        assert guard.reserve("cus_x", MODEL) is not None
    assert time.monotonic() - started < 0.05
    assert first is not None


@pytest.mark.parametrize("bad", ["ten", "-1", "NaN", 1.5])
def test_a_budget_must_be_a_decimal_amount(bad: Any) -> None:
    from stripe_token_meter import ConfigurationError

    with pytest.raises(ConfigurationError, match="cus_x"):
        CreditGuard({"cus_x": bad})


def test_a_model_whose_cost_never_comes_is_waited_for_once(monkeypatch: Any) -> None:
    from stripe_token_meter import credit_guard

    monkeypatch.setattr(credit_guard, "FIRST_CALL_WAIT_SECONDS", 0.05)
    guard = CreditGuard({"cus_a": "1", "cus_b": "1"})
    started = time.monotonic()
    for customer in ("cus_a", "cus_b"):
        for _ in range(3):  # an unpriced model: the worker never records a cost
            hold = guard.reserve(customer, "acme/unpriced")
            assert hold is not None
            hold.release()
    assert 0.05 <= time.monotonic() - started < 0.1  # cus_a's second call only


# ---------------------------------------------------------------------- with a real TokenMeter

PRICES = {"openai/gpt-4o": {"input": "2.50", "cached_input": "1.25", "output": "10.00"}}
COST_EVENT = "token-billing-cost"


@pytest.mark.parametrize("source", ["dict", "stripe"])
def test_acceptance_a_dollar_of_credit_stops_a_real_meter_after_96_calls(
    make_meter: Any, fake_stripe: FakeStripe, source: str
) -> None:
    from stripe_token_meter import Pricing

    fake_stripe.create_meter(COST_EVENT)
    if source == "stripe":
        fake_stripe.grant_credit("cus_x", 100)  # $1.00
        guard = CreditGuard("stripe")
    else:
        guard = CreditGuard({"cus_x": "1.00", "cus_broke": "0"})
    meter = make_meter(
        pricing=Pricing(PRICES, markup_percent=20), cost_event_name=COST_EVENT, guard=guard
    )
    calls = 0
    with pytest.raises(CreditExhausted) as refused:
        for i in range(1_000):  # a tight loop: no provider, the worker prices behind it
            hold = meter.before_call("cus_x", model=MODEL)
            _record(meter, f"call-{i}")
            if hold is not None:
                hold.release()
            calls += 1
    assert calls in (95, 96)
    assert refused.value.customer_id == "cus_x" and refused.value.remaining <= 0
    assert meter.flush(30)
    costs = [e.value for e in fake_stripe.events(event_name=COST_EVENT)]
    assert costs == [COST] * calls and sum(costs) == calls * COST
    assert fake_stripe.requests[BALANCE] == (1 if source == "stripe" else 0)
    with pytest.raises(CreditExhausted):
        meter.before_call("cus_x", model=MODEL)
    if source == "stripe":
        fake_stripe.create_customer("cus_broke")  # no grant: no credit
    with pytest.raises(CreditExhausted):  # refused on its first call, no prefetch needed
        meter.before_call("cus_broke", model=MODEL)
    assert fake_stripe.requests[BALANCE] == (2 if source == "stripe" else 0)


def test_a_restarted_meter_remembers_what_was_spent(
    make_meter: Any, fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    from stripe_token_meter import Pricing

    fake_stripe.create_meter(COST_EVENT)
    outbox = tmp_path / "shared.sqlite3"
    pricing = Pricing(PRICES, markup_percent=20)
    first = make_meter(
        outbox_path=outbox,
        pricing=pricing,
        cost_event_name=COST_EVENT,
        guard=CreditGuard({"cus_x": "1.00"}),
    )
    for i in range(90):
        _record(first, f"a-{i}")
    assert first.flush(30)
    first.close()
    guard = CreditGuard({"cus_x": "1.00"})
    second = make_meter(
        outbox_path=outbox, pricing=pricing, cost_event_name=COST_EVENT, guard=guard
    )
    assert guard.wait_loaded(5)
    assert guard.remaining("cus_x") == Decimal(1_000_000 - 90 * COST) / 1_000_000
    calls = 0
    with pytest.raises(CreditExhausted):
        for i in range(100):
            hold = second.before_call("cus_x", model=MODEL)
            _record(second, f"b-{i}")
            if hold is not None:
                hold.release()
            calls += 1
    assert calls in (5, 6)  # 90 + 6 = 96 at most, as in one process


def test_deny_waits_for_a_funded_customers_first_balance(fake: FakeStripe) -> None:
    """`on_unavailable="deny"` must not refuse a paying customer because its balance was
    not fetched yet: the first call waits (once, bounded) for Stripe's answer."""
    fake.grant_credit("cus_paid", 500)
    guard = CreditGuard("stripe", on_unavailable="deny")
    guard.bind(_binding(fake))
    hold = guard.reserve("cus_paid", MODEL)
    assert hold is not None
    hold.release()
    assert guard.remaining("cus_paid") == Decimal(5)
    assert fake.requests[BALANCE] == 1
    guard.close()


def test_a_restarted_meter_refuses_a_spent_customer_on_its_first_call(
    make_meter: Any, fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    """No window at start-up: the first call waits for the period's spending to load."""
    from stripe_token_meter import Pricing

    fake_stripe.create_meter(COST_EVENT)
    outbox = tmp_path / "shared.sqlite3"
    pricing = Pricing(PRICES, markup_percent=20)
    first = make_meter(outbox_path=outbox, pricing=pricing, cost_event_name=COST_EVENT)
    for i in range(96):  # 96 x 10,506 > $1.00
        _record(first, f"a-{i}")
    assert first.flush(30)
    first.close()
    for _ in range(3):  # each restart, at once
        guard = CreditGuard({"cus_x": "1.00"})
        meter = make_meter(
            outbox_path=outbox, pricing=pricing, cost_event_name=COST_EVENT, guard=guard
        )
        with pytest.raises(CreditExhausted):
            meter.before_call("cus_x", model=MODEL)
        meter.close()


def test_a_forked_child_guards_with_its_own_thread(fake: FakeStripe) -> None:
    """gunicorn --preload forks after the app built its meter: the child's guard must
    still read balances (the parent's thread and lock do not survive the fork)."""
    import os

    fake.grant_credit("cus_paid", 500)
    guard = CreditGuard("stripe")
    guard.bind(_binding(fake))
    hold = guard.reserve("cus_paid", MODEL)  # the parent's thread reads cus_paid
    assert hold is not None
    hold.release()
    assert fake.requests[BALANCE] == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        code = 1
        try:
            try:
                guard.reserve("cus_zero", MODEL)
                verdict = "allowed"
            except CreditExhausted:
                verdict = "refused"
            paid = guard.reserve("cus_paid", MODEL)
            os.write(write, f"{verdict} {paid is not None}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "refused True"  # cus_zero's balance was read in the child
    assert fake.requests[BALANCE] == 2
    guard.close()
