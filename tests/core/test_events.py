"""Usage -> meter events: exact payloads, zero types left out, stable identifiers."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from stripe_token_meter import (
    InvalidDimension,
    TokenMeter,
    Usage,
    build_events,
    make_identifier,
    normalize_model,
)

USAGE = Usage.from_openai(
    model="gpt-4o-2024-08-06",
    provider="openai",
    prompt_tokens=100,
    completion_tokens=50,
    cached_tokens=30,
    reasoning_tokens=10,
    dimensions={"feature": "chat"},
)


def _build(mode: str, **kw: str) -> list:  # type: ignore[type-arg]
    return build_events(
        USAGE,
        customer_id="cus_1",
        request_id="run-1",
        timestamp=time.time(),
        event_name="ev",
        token_types=mode,
        normalizer=normalize_model,
        **kw,  # type: ignore[arg-type]
    )


def test_basic_events() -> None:
    events = _build("basic")
    assert [(e.token_type, e.value) for e in events] == [("input", 100), ("output", 50)]
    assert events[0].payload == {
        "feature": "chat",
        "stripe_customer_id": "cus_1",
        "value": "100",
        "model": "openai/gpt-4o",
        "token_type": "input",
    }
    assert [e.identifier for e in events] == ["run-1:input:ev", "run-1:output:ev"]


def test_detailed_events_sum_to_basic_total() -> None:
    events = _build("detailed")
    assert [(e.token_type, e.value) for e in events] == [
        ("input", 70),
        ("cached_input", 30),
        ("output", 40),
        ("reasoning", 10),
    ]
    assert sum(e.value for e in events) == sum(e.value for e in _build("basic"))


def test_payload_keys_configurable() -> None:
    e = _build("basic", customer_key="customer", value_key="tokens")[0]
    assert e.payload["customer"] == "cus_1" and e.payload["tokens"] == "100"
    assert "stripe_customer_id" not in e.payload and "value" not in e.payload


def test_long_identifiers_are_hashed_deterministically() -> None:
    long_id = "x" * 200
    a, b = make_identifier(long_id, "input", "ev"), make_identifier(long_id, "input", "ev")
    assert a == b and len(a) <= 100 and a.startswith("stm_")
    assert make_identifier(long_id, "output", "ev") != a
    assert make_identifier(long_id, "input", "other") != a
    assert make_identifier("r", "input", "ev") == "r:input:ev"


def test_a_normaliser_that_makes_an_unsendable_model_is_refused(
    local_meter: Callable[..., TokenMeter],
) -> None:
    def bad(provider: str | None, model: str) -> str:
        return f"{provider}\n{model}"

    with pytest.raises(InvalidDimension) as err:
        build_events(
            USAGE,
            customer_id="cus_1",
            request_id="run-1",
            timestamp=time.time(),
            event_name="ev",
            token_types="basic",
            normalizer=bad,
        )
    assert (err.value.code, err.value.field) == ("invalid_dimension", "model")
    assert err.value.message == (
        "the normaliser turned 'gpt-4o-2024-08-06' into 'openai\\ngpt-4o-2024-08-06', which "
        "is not a string free of control or invisible characters; fix the normalize_models "
        "callable"
    )
    meter = local_meter(normalize_models=bad)
    meter.record(model="m", provider="p", customer_id="cus_a", input_tokens=1, request_id="r")
    assert meter.flush(5)
    assert meter._outbox.query("SELECT code, field FROM rejected") == [
        ("invalid_dimension", "model")
    ]
    assert meter._outbox.query("SELECT COUNT(*) FROM events") == [(0,)]
