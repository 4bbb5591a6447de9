"""Cost events: a priced TokenMeter sends each call's marked-up cost, in micro-units, to
FakeStripe through the real SDK, beside its token events; and tells its guard.

Prices per 1M tokens are micro-units per token, so every expected value below is the
plain sum of count * price, marked up and rounded half up once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import GuardBinding, Pricing, TokenMeter, Usage
from stripe_token_meter.errors import ConfigurationError, InvalidIdentifier

MeterFactory = Callable[..., TokenMeter]
COST = "token-billing-cost"
TOKENS = "token-billing-tokens"
PRICES = {
    "openai/gpt-4o": {"input": "2.50", "cached_input": "1.25", "output": "10.00"},
    "anthropic/claude-3.5-sonnet": {
        "input": "3",
        "cached_input": "0.30",
        "cache_write": "3.75",
        "output": "15",
        "reasoning": "20",
    },
}


@pytest.fixture
def cost_meter(fake_stripe: Any) -> None:
    fake_stripe.create_meter(COST)


def _costs(fake: Any, name: str = COST) -> list[tuple[str, str, int]]:
    return sorted((e.customer, e.payload["model"], e.value) for e in fake.events(event_name=name))


def _gpt(rid: str, customer: str = "cus_a", **counts: int) -> Usage:
    return Usage(model="gpt-4o-2024-08-06", provider="openai", customer_id=customer,
                 request_id=rid, **counts)  # fmt: skip


@pytest.mark.parametrize("api", ["v2", "v1"])
@pytest.mark.usefixtures("cost_meter")
def test_each_priced_call_sends_one_cost_event(
    make_meter: MeterFactory, fake_stripe: Any, api: str
) -> None:
    meter = make_meter(api=api, pricing=Pricing(PRICES, markup_percent=20))
    meter.record(_gpt("r1", input_tokens=1234, output_tokens=567))
    meter.record(
        Usage(
            model="claude-3-5-sonnet-20241022",
            provider="anthropic",
            customer_id="cus_b",
            request_id="r2",
            input_tokens=100,
            cached_input_tokens=1000,
            cache_write_tokens=200,
            output_tokens=50,
            reasoning_tokens=30,
            dimensions={"feature": "chat"},
        )
    )
    assert meter.flush(10)
    # basic: prompt tokens at input, completion tokens at output, +20 %
    # gpt-4o: (1234 * 2.5 + 567 * 10) * 1.2 = 8755 * 1.2 = 10506
    # claude: (1300 * 3 + 80 * 15) * 1.2 = 5100 * 1.2 = 6120
    assert _costs(fake_stripe) == [
        ("cus_a", "openai/gpt-4o", 10_506),
        ("cus_b", "anthropic/claude-3.5-sonnet", 6_120),
    ]
    by_id = {e.identifier: e for e in fake_stripe.events(event_name=COST)}
    assert set(by_id) == {f"r1:cost:{COST}", f"r2:cost:{COST}"}
    assert by_id[f"r1:cost:{COST}"].payload == {
        "stripe_customer_id": "cus_a",
        "value": "10506",
        "model": "openai/gpt-4o",
    }
    assert by_id[f"r2:cost:{COST}"].payload == {
        "feature": "chat",
        "stripe_customer_id": "cus_b",
        "value": "6120",
        "model": "anthropic/claude-3.5-sonnet",
    }
    token_events = fake_stripe.events(event_name=TOKENS)
    assert len(token_events) == 4  # the token events are unchanged
    tokens_by_rid = {e.identifier.split(":")[0]: e.timestamp for e in token_events}
    assert by_id[f"r1:cost:{COST}"].timestamp == tokens_by_rid["r1"]
    assert meter.stats()["unpriced_models"] == []


@pytest.mark.usefixtures("cost_meter")
def test_detailed_prices_each_type_with_fallbacks(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(token_types="detailed", pricing=Pricing(PRICES))
    # gpt-4o has no cache_write (-> input 2.5) nor reasoning (-> output 10) price:
    # 100 * 2.5 + 1000 * 1.25 + 200 * 2.5 + 50 * 10 + 30 * 10 = 2800
    meter.record(
        _gpt(
            "d1",
            input_tokens=100,
            cached_input_tokens=1000,
            cache_write_tokens=200,
            output_tokens=50,
            reasoning_tokens=30,
        )
    )
    # claude, every type priced: 100*3 + 1000*0.3 + 200*3.75 + 50*15 + 30*20 = 2700
    meter.record(
        Usage(
            model="anthropic/claude-3.5-sonnet",
            customer_id="cus_b",
            request_id="d2",
            input_tokens=100,
            cached_input_tokens=1000,
            cache_write_tokens=200,
            output_tokens=50,
            reasoning_tokens=30,
        )
    )
    # rounding: 1 input token of gpt-4o is 2.5 micros -> 3 (half up); 1 cached -> 1.25 -> 1
    meter.record(_gpt("d3", customer="cus_c", input_tokens=1))
    meter.record(_gpt("d4", customer="cus_d", cached_input_tokens=1))
    assert meter.flush(10)
    assert _costs(fake_stripe) == [
        ("cus_a", "openai/gpt-4o", 2_800),
        ("cus_b", "anthropic/claude-3.5-sonnet", 2_700),
        ("cus_c", "openai/gpt-4o", 3),
        ("cus_d", "openai/gpt-4o", 1),
    ]
    assert all("token_type" not in e.payload for e in fake_stripe.events(event_name=COST))


@pytest.mark.usefixtures("cost_meter")
def test_unpriced_and_zero_cost_calls_send_tokens_only(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    pricing = Pricing({**PRICES, "openai/free": {"input": "0", "output": "0"}})
    meter = make_meter(pricing=pricing)
    meter.record(_gpt("p1", input_tokens=10, output_tokens=1))
    meter.record(Usage(model="mistral/large", customer_id="cus_a", request_id="u1",
                       input_tokens=7, output_tokens=3))  # fmt: skip
    meter.record(Usage(model="openai/o9", customer_id="cus_a", request_id="u2", input_tokens=5))
    meter.record(Usage(model="openai/free", customer_id="cus_a", request_id="z1", input_tokens=9))
    assert meter.flush(10)
    assert _costs(fake_stripe) == [("cus_a", "openai/gpt-4o", 35)]
    assert sorted(e.identifier for e in fake_stripe.events(event_name=TOKENS)) == [
        f"p1:input:{TOKENS}",
        f"p1:output:{TOKENS}",
        f"u1:input:{TOKENS}",
        f"u1:output:{TOKENS}",
        f"u2:input:{TOKENS}",
        f"z1:input:{TOKENS}",
    ]
    assert meter.stats()["unpriced_models"] == ["mistral/large", "openai/o9"]


@pytest.mark.usefixtures("cost_meter")
def test_a_replayed_call_gives_the_same_cost_identifier(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter(pricing=Pricing(PRICES), cost_event_name="llm-cost")
    fake_stripe.create_meter("llm-cost")
    for _ in range(3):
        meter.record(_gpt("same", input_tokens=400, output_tokens=100))
    assert meter.flush(10)
    events = fake_stripe.events(event_name="llm-cost")
    assert [(e.identifier, e.value) for e in events] == [("same:cost:llm-cost", 2_000)]
    assert fake_stripe.events(event_name=COST) == []
    assert meter.stats()["duplicates"] == 6  # 2 token events + 1 cost event, twice


def test_cost_event_name_is_checked(tmp_path: Path) -> None:
    pricing = Pricing(PRICES)
    with pytest.raises(ConfigurationError, match="must differ from event_name"):
        TokenMeter(outbox_path=tmp_path / "a.db", pricing=pricing, cost_event_name=TOKENS)
    with pytest.raises(InvalidIdentifier, match="cost_event_name: must be at most 100"):
        TokenMeter(outbox_path=tmp_path / "b.db", pricing=pricing, cost_event_name="c" * 101)
    with pytest.raises(ConfigurationError, match="cost events need prices"):
        TokenMeter(outbox_path=tmp_path / "c.db", cost_event_name="llm-cost")
    with pytest.raises(ConfigurationError, match="pricing: must be a stripe_token_meter"):
        TokenMeter(outbox_path=tmp_path / "d.db", pricing=PRICES)  # type: ignore[arg-type]
    meter = TokenMeter(outbox_path=tmp_path / "e.db", pricing=pricing)
    assert meter.cost_event_name == COST
    meter.close()
    assert TokenMeter(outbox_path=tmp_path / "f.db").cost_event_name is None


class LedgerGuard:
    """A guard keeping its own spend ledger: the meter's collaborator in these tests."""

    def __init__(self, fail_record: bool = False, fail_bind: bool = False) -> None:
        self.bindings: list[GuardBinding] = []
        self.costs: list[tuple[str, int]] = []
        self.closed = 0
        self.fail_record = fail_record
        self.fail_bind = fail_bind

    def reserve(self, customer_id: str, model: str | None) -> None:
        return None

    def bind(self, binding: GuardBinding) -> None:
        self.bindings.append(binding)
        if self.fail_bind:
            raise RuntimeError("bind failed")

    def record_cost(self, customer_id: str, micros: int) -> None:
        self.costs.append((customer_id, micros))
        if self.fail_record:
            raise RuntimeError("ledger down")

    def close(self) -> None:
        self.closed += 1


@pytest.mark.usefixtures("cost_meter")
def test_the_guard_is_bound_told_each_cost_and_closed(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    guard = LedgerGuard()
    outbox = tmp_path / "guarded.sqlite3"
    meter = make_meter(
        pricing=Pricing(PRICES, markup_percent="12.5", currency="USD"),
        guard=guard,
        outbox_path=outbox,
    )
    assert guard.bindings == [
        GuardBinding(
            outbox=outbox,
            cost_event_name=COST,
            currency="usd",
            api_key="sk_test_fake",
            api_base=fake_stripe.url,
            stripe_client=None,
        )
    ]
    meter.record(_gpt("g1", input_tokens=1000, output_tokens=100))  # 3500 * 1.125 = 3937.5
    meter.record(_gpt("g2", customer="cus_b", input_tokens=3))  # 7.5 * 1.125 = 8.4375
    meter.record(Usage(model="mistral/large", customer_id="cus_a", request_id="g3",
                       input_tokens=5))  # fmt: skip
    meter.record(model="openai/gpt-4o", request_id="g4", input_tokens=5)  # no customer: rejected
    assert meter.flush(10)
    assert sorted(guard.costs) == [("cus_a", 3_938), ("cus_b", 8)]
    assert _costs(fake_stripe) == [("cus_a", "openai/gpt-4o", 3_938), ("cus_b", "openai/gpt-4o", 8)]
    assert meter.stats()["invalid"] == 1
    meter.close()
    meter.close()
    assert guard.closed == 1


def test_guard_failures_are_contained(
    make_meter: MeterFactory, fake_stripe: Any, tmp_path: Path
) -> None:
    fake_stripe.create_meter(COST)
    client = fake_stripe.client()
    guard = LedgerGuard(fail_record=True, fail_bind=True)
    meter = make_meter(stripe_client=client, pricing=Pricing(PRICES), guard=guard)
    [binding] = guard.bindings
    assert (binding.api_key, binding.stripe_client) == (None, client)
    meter.record(_gpt("f1", input_tokens=10))
    assert meter.flush(10)
    assert guard.costs == [("cus_a", 25)]
    assert _costs(fake_stripe) == [("cus_a", "openai/gpt-4o", 25)]  # still billed
    stats = meter.stats()
    assert stats["adapter_errors"] == 2  # bind and record_cost, each counted


def test_a_meter_without_pricing_binds_no_cost(tmp_path: Path) -> None:
    guard = LedgerGuard()
    meter = TokenMeter(outbox_path=tmp_path / "o.db", guard=guard)
    meter.record(Usage(model="openai/gpt-4o", customer_id="cus_a", request_id="n1",
                       input_tokens=10))  # fmt: skip
    assert meter.flush(10)
    meter.close()
    assert guard.bindings == [
        GuardBinding(
            outbox=tmp_path / "o.db",
            cost_event_name=None,
            currency="usd",
            api_key=None,
            api_base=None,
            stripe_client=None,
        )
    ]
    assert guard.costs == [] and guard.closed == 1


def test_the_local_ledger_keeps_cost_rows(local_meter: MeterFactory) -> None:
    meter = local_meter(pricing=Pricing(PRICES))
    meter.record(_gpt("l1", input_tokens=4, output_tokens=2))  # 10 + 20
    assert meter.flush(10)
    assert meter.stats()["local"] == 3
    rows = meter._outbox.report_rows()
    assert sorted((m, t, v) for _, m, t, _, _, v in rows) == [
        ("openai/gpt-4o", "cost", 30),
        ("openai/gpt-4o", "input", 4),
        ("openai/gpt-4o", "output", 2),
    ]


WRITER = textwrap.dedent(
    """
    import os
    from stripe_token_meter import Pricing, TokenMeter, Usage
    pricing = Pricing({"openai/gpt-4o": {"input": "2.50", "output": "10"}}, markup_percent=50)
    meter = TokenMeter(api_key="sk_test_fake", api_base=os.environ["URL"],
                       outbox_path=os.environ["OUTBOX"], pricing=pricing,
                       cost_event_name="writer-cost", token_types="detailed")
    for i in range(5):
        meter.record(Usage(model="openai/gpt-4o", customer_id="cus_w", input_tokens=100,
                           cached_input_tokens=40, output_tokens=10, request_id=f"w-{i}"))
    os._exit(0)
    """
)


@pytest.mark.subprocess
def test_a_taken_over_journal_is_priced_as_its_writer_priced(
    fake_stripe: Any, tmp_path: Path
) -> None:
    """The writer died before its worker stored anything: a meter with other prices (and
    one with none) takes the journal over and sends the writer's costs."""
    fake_stripe.create_meter("writer-cost")
    outbox = tmp_path / "outbox.sqlite3"
    env = dict(os.environ, URL=fake_stripe.url, OUTBOX=str(outbox))
    subprocess.run([sys.executable, "-c", WRITER], env=env, check=True, timeout=60)
    guard = LedgerGuard()
    reader = TokenMeter(
        api_key="sk_test_fake",
        api_base=fake_stripe.url,
        outbox_path=outbox,
        pricing=Pricing({"openai/gpt-4o": {"input": "1", "output": "1"}}),
        guard=guard,
    )
    assert reader.flush(30)
    reader.close()
    # detailed, cached falls back to input: (100 * 2.5 + 40 * 2.5 + 10 * 10) * 1.5 = 675
    assert _costs(fake_stripe, "writer-cost") == [("cus_w", "openai/gpt-4o", 675)] * 5
    assert sorted(e.identifier for e in fake_stripe.events(event_name="writer-cost")) == [
        f"w-{i}:cost:writer-cost" for i in range(5)
    ]
    assert fake_stripe.events(event_name=COST) == []
    assert guard.costs == [("cus_w", 675)] * 5  # the reader's guard hears of them
    types = sorted(e.payload["token_type"] for e in fake_stripe.events(event_name=TOKENS))
    assert types == ["cached_input"] * 5 + ["input"] * 5 + ["output"] * 5


@pytest.mark.usefixtures("cost_meter")
def test_aggregated_costs_sum_per_window(make_meter: MeterFactory, fake_stripe: Any) -> None:
    meter = make_meter(pricing=Pricing(PRICES), aggregate_seconds=3600)
    for i in range(10):
        meter.record(_gpt(f"a{i}", input_tokens=100, output_tokens=10))  # 350 each
    meter.record(_gpt("a3", input_tokens=100, output_tokens=10))  # the same call again
    meter.record(_gpt("b1", customer="cus_b", input_tokens=1))  # 2.5 -> 3
    assert meter.flush(10)
    assert _costs(fake_stripe) == [("cus_a", "openai/gpt-4o", 3_500), ("cus_b", "openai/gpt-4o", 3)]
    assert all(e.identifier.startswith("stmw_") for e in fake_stripe.events(event_name=COST))
    assert all("token_type" not in e.payload for e in fake_stripe.events(event_name=COST))


@pytest.mark.usefixtures("cost_meter")
def test_strict_checks_on_the_caller_but_tells_the_guard_once(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    guard = LedgerGuard()
    meter = make_meter(pricing=Pricing(PRICES), guard=guard, strict=True)
    meter.record(_gpt("s1", input_tokens=10, output_tokens=1))  # 25 + 10
    assert meter.flush(10)
    assert guard.costs == [("cus_a", 35)]
    assert _costs(fake_stripe) == [("cus_a", "openai/gpt-4o", 35)]
