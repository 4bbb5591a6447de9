"""The adapter kit against a real TokenMeter on a SQLite outbox (the embedded local ledger)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import (
    ConfigurationError,
    CreditExhausted,
    InvalidCustomer,
    MissingCustomer,
    TokenMeter,
)
from stripe_token_meter.adapter_kit import (
    CUSTOMER_KEY,
    DEFAULT_MAX_TRACKED,
    DIMENSIONS_KEY,
    AdapterKit,
    AdapterOptions,
    InFlight,
    call_customer,
    merge_dimensions,
)

MeterFactory = Callable[..., TokenMeter]


def _rows(meter: TokenMeter) -> list[tuple[Any, ...]]:
    return meter._outbox._query(
        "SELECT customer_id, token_type, value FROM events ORDER BY customer_id, token_type"
    )


def _rejected(meter: TokenMeter) -> list[tuple[Any, ...]]:
    return meter._outbox._query("SELECT code, field FROM rejected")


# -- keys and options ------------------------------------------------------------------


def test_keys_are_the_documented_ones() -> None:
    assert (CUSTOMER_KEY, DIMENSIONS_KEY) == ("stripe_customer_id", "stripe_dimensions")


def test_options_are_checked_once_and_copied() -> None:
    dims = {"tier": "pro"}
    options = AdapterOptions.check(customer_id="cus_a", dimensions=dims, max_tracked=5)
    dims["tier"] = "free"
    assert options == AdapterOptions("cus_a", {"tier": "pro"}, 5)
    with pytest.raises(TypeError):
        options.dimensions["tier"] = "free"  # type: ignore[index]
    assert AdapterOptions.check() == AdapterOptions(None, {}, DEFAULT_MAX_TRACKED)
    assert AdapterOptions.check(customer_id="").customer_id is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"customer_id": "user-42"}, "customer_id"),
        ({"dimensions": {"model": "x"}}, "dimensions"),
        ({"dimensions": {"tier": ""}}, "dimensions"),
        ({"dimensions": "tier=pro"}, "dimensions"),
        ({"max_tracked": 0}, "max_tracked"),
        ({"max_tracked": True}, "max_tracked"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        AdapterOptions.check(**kwargs)


# -- customer precedence ---------------------------------------------------------------


def test_call_customer_reads_the_key() -> None:
    assert call_customer({CUSTOMER_KEY: "cus_x", "other": 1}) == "cus_x"
    assert call_customer(None) is None
    assert call_customer({}) is None
    assert call_customer({CUSTOMER_KEY: ""}) is None
    assert call_customer({CUSTOMER_KEY: None}) is None
    assert call_customer({CUSTOMER_KEY: 42}) == "42"  # dead-lettered, never rerouted


def test_precedence_per_call_scope_adapter_default(local_meter: MeterFactory) -> None:
    meter = local_meter(default_customer_id="cus_default")
    options = AdapterOptions.check(customer_id="cus_adapter")

    def bill(metadata: dict[str, Any] | None, rid: str) -> None:
        meter.record(
            customer_id=call_customer(metadata),
            fallback_customer_id=options.customer_id,
            model="m",
            input_tokens=int(rid),
            request_id=rid,
        )

    with meter.customer("cus_scope"):
        bill({CUSTOMER_KEY: "cus_call"}, "1")  # per-call beats the scope
        bill({}, "2")  # the scope beats the adapter's
    bill(None, "3")  # the adapter's beats the default
    meter.record(model="m", input_tokens=4, request_id="4")  # no adapter: the default
    bill({CUSTOMER_KEY: 42}, "5")  # a bad per-call id is dead-lettered, not rerouted
    assert meter.flush(5)
    assert _rows(meter) == [
        ("cus_adapter", "input", 3),
        ("cus_call", "input", 1),
        ("cus_default", "input", 4),
        ("cus_scope", "input", 2),
    ]
    assert _rejected(meter) == [("invalid_customer", "customer_id")]


# -- dimensions ------------------------------------------------------------------------


def test_merge_overlays_the_call_on_the_adapter() -> None:
    options = AdapterOptions.check(dimensions={"tier": "pro", "region": "eu"})
    assert merge_dimensions(options, {"tier": "free", "feature": "chat"}) == {
        "tier": "free",
        "region": "eu",
        "feature": "chat",
    }
    for nothing in (None, {}, ""):
        merged = merge_dimensions(options, nothing)
        assert merged == {"tier": "pro", "region": "eu"}
        assert merged is not options.dimensions  # the caller may keep it; options stay fixed
    assert merge_dimensions(options, "not-a-dict") == "not-a-dict"


def test_a_non_mapping_is_dead_lettered_with_a_named_error(local_meter: MeterFactory) -> None:
    meter = local_meter()
    options = AdapterOptions.check(customer_id="cus_a", dimensions={"tier": "pro"})
    for rid, per_call in (("ok", {"feature": "chat"}), ("bad", ["feature", "chat"])):
        meter.record(
            fallback_customer_id=options.customer_id,
            model="m",
            input_tokens=3,
            request_id=rid,
            dimensions=merge_dimensions(options, per_call),
        )
    assert meter.flush(5)
    assert _rows(meter) == [("cus_a", "input", 3)]
    payload = json.loads(meter._outbox._query("SELECT payload FROM events")[0][0])
    assert (payload["tier"], payload["feature"]) == ("pro", "chat")
    assert _rejected(meter) == [("invalid_dimension", "dimensions")]
    assert meter.stats()["invalid"] == 1


# -- calls in flight -------------------------------------------------------------------


def test_in_flight_evicts_the_oldest_and_tells_on_evict() -> None:
    evicted: list[str] = []
    calls: InFlight[int, str] = InFlight(3, evicted.append)
    for i in range(5):
        calls.put(i, f"v{i}")
    assert (len(calls), list(calls), evicted) == (3, [2, 3, 4], ["v0", "v1"])
    assert 3 in calls and 0 not in calls
    assert calls.pop(3) == "v3" and calls.pop(3) is None and calls.pop(9, "d") == "d"
    calls.put(2, "again")  # an existing key is replaced, not evicted
    assert dict(calls) == {2: "again", 4: "v4"} and calls == {2: "again", 4: "v4"}
    assert evicted == ["v0", "v1"]


def test_in_flight_contains_a_failing_on_evict() -> None:
    def boom(value: str) -> None:
        raise RuntimeError(value)

    calls: InFlight[str, str] = InFlight(1, boom)
    calls.put("a", "1")
    calls.put("b", "2")  # evicts "a"; boom is contained
    assert list(calls) == ["b"]


def test_in_flight_is_thread_safe_and_bounded() -> None:
    evicted: list[int] = []
    popped: list[int] = []
    calls: InFlight[tuple[int, int], int] = InFlight(100, evicted.append)

    def work(t: int) -> None:
        for i in range(2_000):
            calls.put((t, i), i)
            if i % 2 and calls.pop((t, i)) is not None:
                popped.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads mid-operation as often as possible
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    # every entry is still there, popped or evicted: exactly once, never lost or doubled
    assert len(calls) <= 100 and len(calls) + len(evicted) + len(popped) == 8_000
    assert list(calls)[-1] in {(t, 1_998) for t in range(4)} | {(t, 1_999) for t in range(4)}


# -- containment and the strict rule ---------------------------------------------------


def test_failures_are_counted_under_source_and_where(local_meter: MeterFactory) -> None:
    meter = local_meter()
    kit = AdapterKit(meter, AdapterOptions.check(), "my-adapter")
    kit.failed("on_end", KeyError("usage"))
    kit.failed("on_start", InvalidCustomer("customer_id", "bad"))
    stats = meter.stats()
    assert stats["adapter_errors"] == 2
    assert "my-adapter.on_start: InvalidCustomer" in stats["last_error"]


def test_strict_meter_reraises_after_counting(local_meter: MeterFactory) -> None:
    meter = local_meter(strict=True)
    kit = AdapterKit(meter, AdapterOptions.check(), "my-adapter")
    with pytest.raises(MissingCustomer):
        kit.failed("on_end", MissingCustomer("customer_id", "none"))
    with pytest.raises(TypeError):
        kit.failed("on_end", TypeError("not LiteLLM's kwargs"))
    assert meter.stats()["adapter_errors"] == 2


# -- the pre-call hook -----------------------------------------------------------------


class Hold:
    def __init__(self, guard: Budget, customer: str) -> None:
        self.guard, self.customer = guard, customer

    def release(self) -> None:
        self.guard.released.append(self.customer)


class Budget:
    """A small real guard: `cus_broke` has no credit, `cus_boom`'s ledger is down."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []
        self.released: list[str] = []

    def reserve(self, customer_id: str, model: str | None) -> Hold | None:
        self.asked.append((customer_id, model))
        if customer_id == "cus_broke":
            raise CreditExhausted(customer_id, Decimal("-0.25"), "usd")
        if customer_id == "cus_boom":
            raise RuntimeError("ledger down")
        if customer_id == "cus_free":
            return None
        return Hold(self, customer_id)


def test_reserve_and_release(local_meter: MeterFactory) -> None:
    guard = Budget()
    meter = local_meter(guard=guard, default_customer_id="cus_default")
    kit = AdapterKit(meter, AdapterOptions.check(customer_id="cus_adapter"), "a")
    assert kit.guarded
    kit.reserve("r1", "cus_call", model="gpt-4o-2024-08-06", provider="openai")
    with meter.customer("cus_scope"):
        kit.reserve("r2", None)  # the scope outranks the adapter's customer
    kit.reserve("r3", None, model="")  # the adapter's customer; an empty model is none
    kit.reserve("r4", "cus_free")  # no hold, but asked: not asked twice
    assert guard.asked == [
        ("cus_call", "openai/gpt-4o"),
        ("cus_scope", None),
        ("cus_adapter", None),
        ("cus_free", None),
    ]
    assert kit.open_holds == 4 and kit.reserved("r4") and not kit.reserved("r9")
    for key in ("r1", "r2", "r3", "r4", "r1", "r9"):  # idempotent, unknown keys ignored
        kit.release(key)
    assert guard.released == ["cus_call", "cus_scope", "cus_adapter"]
    assert kit.open_holds == 0
    kit.reserve(None, "cus_call")  # no key to release it by: released at once
    assert guard.released[-1] == "cus_call" and kit.open_holds == 0


def test_refusal_propagates_anything_else_is_contained(local_meter: MeterFactory) -> None:
    guard = Budget()
    meter = local_meter(guard=guard)
    kit = AdapterKit(meter, AdapterOptions.check(), "a")
    with pytest.raises(CreditExhausted) as err:
        kit.reserve("r1", "cus_broke")
    assert err.value.remaining == Decimal("-0.25") and not kit.reserved("r1")
    kit.reserve("r2", "cus_boom")  # the meter contains a broken guard: the call goes on
    assert meter.stats()["adapter_errors"] == 1
    kit.reserve("r3", None)  # nobody to ask about: no hold, not an error
    assert guard.asked == [("cus_broke", None), ("cus_boom", None)]
    assert meter.stats()["adapter_errors"] == 1


def test_lost_ends_release_the_oldest_holds(local_meter: MeterFactory) -> None:
    guard = Budget()
    meter = local_meter(guard=guard)
    kit = AdapterKit(meter, AdapterOptions.check(max_tracked=3), "a")
    for i in range(5):
        kit.reserve(i, f"cus_{i}")
    assert kit.open_holds == 3
    assert guard.released == ["cus_0", "cus_1"]


def test_no_guard_no_hold(local_meter: MeterFactory) -> None:
    meter = local_meter(default_customer_id="cus_default")
    kit = AdapterKit(meter, AdapterOptions.check(), "a")
    assert not kit.guarded
    kit.reserve("r1", "cus_a")  # nothing to ask: nothing kept
    assert kit.open_holds == 0 and not kit.reserved("r1")
    kit.release("r1")


def test_call_customer_under_another_key() -> None:
    assert call_customer({"tenant": "cus_t", CUSTOMER_KEY: "cus_x"}, "tenant") == "cus_t"
    assert call_customer({CUSTOMER_KEY: "cus_x"}, "tenant") is None


def test_a_strict_error_is_counted_once_through_nested_containment(
    local_meter: MeterFactory,
) -> None:
    meter = local_meter(strict=True)
    kit = AdapterKit(meter, AdapterOptions.check(), "my-adapter")
    with pytest.raises(KeyError):
        try:
            kit.failed("customer_resolver", KeyError("users"))
        except KeyError as exc:
            kit.failed("on_start", exc)  # the outer handler of the same callback
    assert meter.stats()["adapter_errors"] == 1


# -- the README's example adapter --------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "shared" / "README.md"


def test_readme_example_adapter_runs_and_bills(tmp_path: Path) -> None:
    """shared/README.md "Writing an adapter": the example runs as written and bills the
    named customer with merged dimensions, and the unseen start with the adapter's."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Writing an adapter") :]
    block = re.search(r"```py\n(.*?)```", section, re.DOTALL)
    assert block is not None
    outbox = tmp_path / "outbox.sqlite3"
    env = dict(os.environ, STRIPE_TOKEN_METER_OUTBOX=str(outbox))
    env.pop("STRIPE_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-c", block.group(1)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meter = TokenMeter(outbox_path=outbox)
    try:
        rows = meter._outbox._query(
            "SELECT customer_id, token_type, value, payload FROM events"
            " ORDER BY customer_id, token_type"
        )
    finally:
        meter.close()
    assert [r[:3] for r in rows] == [
        ("cus_123", "input", 12),
        ("cus_123", "output", 3),
        ("cus_fallback", "input", 5),
        ("cus_fallback", "output", 1),
    ]
    dims = [(p.get("app"), p.get("feature")) for p in (json.loads(r[3]) for r in rows)]
    assert dims == [("docs", "chat")] * 2 + [("docs", None)] * 2
