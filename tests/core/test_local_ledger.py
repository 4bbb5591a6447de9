"""No key: the embedded local ledger. record() never raises; bad input is kept with its reason."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stripe_token_meter import InvalidTokenCount, InvalidUsage, MissingCustomer, TokenMeter, Usage

MeterFactory = Callable[..., TokenMeter]


def _rows(meter: TokenMeter) -> list[tuple[Any, ...]]:
    return meter._outbox._query(
        "SELECT customer_id, model, token_type, value, status FROM events ORDER BY id"
    )


def test_no_key_records_to_local_ledger(local_meter: MeterFactory) -> None:
    meter = local_meter()
    meter.record(
        Usage(
            customer_id="cus_a",
            model="openai/gpt-4o",
            input_tokens=1200,
            output_tokens=300,
            request_id="r1",
        )
    )
    meter.record(
        counts="anthropic",
        model="claude-3-5-sonnet-20241022",
        provider="anthropic",
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=100,
        customer_id="cus_b",
        request_id="r2",
    )
    assert meter.flush(5)
    assert _rows(meter) == [
        ("cus_a", "openai/gpt-4o", "input", 1200, "local"),
        ("cus_a", "openai/gpt-4o", "output", 300, "local"),
        ("cus_b", "anthropic/claude-3.5-sonnet", "input", 110, "local"),
        ("cus_b", "anthropic/claude-3.5-sonnet", "output", 5, "local"),
    ]
    s = meter.stats()
    assert (
        s["mode"],
        s["recorded"],
        s["events"],
        s["local"],
        s["pending"],
        s["dead_lettered"],
    ) == ("local", 2, 4, 4, 0, 0)


def test_same_request_id_is_never_counted_twice(local_meter: MeterFactory) -> None:
    meter = local_meter()
    for _ in range(3):
        meter.record(Usage(customer_id="cus_a", model="m", input_tokens=5, request_id="same"))
    assert meter.flush(5)
    assert _rows(meter) == [("cus_a", "m", "input", 5, "local")]
    assert meter.stats()["duplicates"] == 2


def test_customer_precedence(local_meter: MeterFactory) -> None:
    meter = local_meter(default_customer_id="cus_default")
    meter.record(model="m", input_tokens=1, request_id="1")
    meter.record(model="m", input_tokens=2, request_id="2", fallback_customer_id="cus_handler")
    with meter.customer("cus_scope"):
        meter.record(model="m", input_tokens=3, request_id="3", fallback_customer_id="cus_handler")
        meter.record(model="m", input_tokens=4, request_id="4", customer_id="cus_call")
    assert meter.flush(5)
    assert [(r[0], r[3]) for r in _rows(meter)] == [
        ("cus_default", 1),
        ("cus_handler", 2),
        ("cus_scope", 3),
        ("cus_call", 4),
    ]


def test_scope_follows_tasks_and_copied_contexts(local_meter: MeterFactory) -> None:
    meter = local_meter()

    async def call(customer: str, n: int) -> None:
        with meter.customer(customer):
            await asyncio.sleep(0.001)
            meter.record(model="m", input_tokens=n, request_id=f"task-{n}")

    async def main() -> None:
        await asyncio.gather(*(call(f"cus_t{i}", i) for i in range(1, 6)))

    asyncio.run(main())
    with meter.customer("cus_pool"), concurrent.futures.ThreadPoolExecutor(2) as pool:
        ctx = contextvars.copy_context()
        pool.submit(
            ctx.run, lambda: meter.record(model="m", input_tokens=9, request_id="pool")
        ).result()
    assert meter.flush(5)
    assert sorted((r[0], r[3]) for r in _rows(meter)) == sorted(
        [(f"cus_t{i}", i) for i in range(1, 6)] + [("cus_pool", 9)]
    )


def test_missing_customer_is_dead_lettered(local_meter: MeterFactory) -> None:
    meter = local_meter()
    meter.record(model="m", input_tokens=10, request_id="r")
    assert meter.flush(5)
    assert _rows(meter) == []
    rejected = meter._outbox._query("SELECT code, field FROM rejected")
    assert rejected == [("missing_customer", "customer_id")]
    assert meter.stats()["dead_lettered"] == 1


def test_strict_mode_raises_into_caller(local_meter: MeterFactory) -> None:
    meter = local_meter(strict=True)
    with pytest.raises(MissingCustomer):
        meter.record(model="m", input_tokens=1)
    with pytest.raises(InvalidTokenCount):
        meter.record(model="m", input_tokens=-1, customer_id="cus_a")
    meter.record(model="m", input_tokens=1, customer_id="cus_a", request_id="ok")
    assert meter.flush(5)
    assert _rows(meter) == [("cus_a", "m", "input", 1, "local")]


def test_a_usage_with_fields_beside_it_is_rejected_not_half_read(
    local_meter: MeterFactory,
) -> None:
    """`record(Usage(...), customer_id=...)` used to drop the fields silently."""
    meter = local_meter()
    meter.record(Usage(model="m", input_tokens=3, request_id="r"), customer_id="cus_a")
    assert meter.flush(5)
    assert _rows(meter) == []
    [(code, field, message)] = meter._outbox._query("SELECT code, field, message FROM rejected")
    assert (code, field) == ("invalid_usage", "fields")
    assert "['customer_id']" in message and "Usage(..., customer_id=" in message
    strict = local_meter(strict=True)
    with pytest.raises(InvalidUsage, match="fields"):
        strict.record(Usage(model="m", input_tokens=3), customer_id="cus_a")


def test_record_after_close_goes_straight_to_outbox(local_meter: MeterFactory) -> None:
    meter = local_meter()
    meter.close()
    meter.record(model="m", input_tokens=4, customer_id="cus_late", request_id="late")
    assert _rows(meter) == [("cus_late", "m", "input", 4, "local")]


def test_zero_usage_sends_nothing(local_meter: MeterFactory) -> None:
    meter = local_meter(token_types="detailed")
    meter.record(model="m", customer_id="cus_a", request_id="zero")
    meter.record(model="m", customer_id="cus_a", output_tokens=3, request_id="one")
    assert meter.flush(5)
    assert _rows(meter) == [("cus_a", "m", "output", 3, "local")]
    assert meter.stats()["empty"] == 1


_bad_count = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=10**15),
    st.just(math.nan),
    st.just(math.inf),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
)
_field = st.sampled_from(
    [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=_field, value=_bad_count)
def test_bad_counts_never_raise_and_are_dead_lettered(
    local_meter: MeterFactory, field: str, value: object
) -> None:
    meter = local_meter()
    meter.record(model="m", customer_id="cus_a", **{field: value})
    meter.record(model="m", customer_id="not-a-customer", input_tokens=1)
    meter.record(model="m", customer_id="cus_a", input_tokens=1, timestamp=1.0)
    meter.record(model="m", customer_id="cus_a", input_tokens=1, dimensions={"k": 1})
    meter.record(model="m", customer_id="cus_a", not_a_field=1)
    meter.record("not a usage")  # type: ignore[arg-type]
    assert meter.flush(5)
    codes = [r[0] for r in meter._outbox._query("SELECT code FROM rejected ORDER BY id")]
    assert codes == [
        "invalid_token_count",
        "invalid_customer",
        "invalid_timestamp",
        "invalid_dimension",
        "invalid_usage",
        "invalid_usage",
    ]
    assert _rows(meter) == []
    meter.close()
