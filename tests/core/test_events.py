"""Usage -> meter events: exact payloads, zero types left out, stable identifiers."""

from __future__ import annotations

import hashlib
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


def _hashed(ident: str) -> str:
    return "stm_" + hashlib.sha256(ident.encode("utf-8")).hexdigest()


def test_identifiers_are_kept_only_as_printable_ascii_of_at_most_100_bytes() -> None:
    # 78 characters but 198 bytes in UTF-8 (87 and 207 with the rest): Stripe counts bytes.
    wide = "请" * 60 + "x" * 18
    assert (len(wide), len(wide.encode("utf-8"))) == (78, 198)
    assert make_identifier(wide, "input", "ev") == _hashed(f"{wide}:input:ev")
    short = "réq-1"  # 5 characters, 6 bytes: not ASCII, hashed however short
    assert make_identifier(short, "input", "ev") == _hashed("réq-1:input:ev")
    for control in ("run\n1", "run\x001", "run\x7f1", "run\t1"):
        assert make_identifier(control, "output", "ev") == _hashed(f"{control}:output:ev")
    exactly_100 = "a" * (100 - len(":input:ev"))
    assert make_identifier(exactly_100, "input", "ev") == f"{exactly_100}:input:ev"
    assert make_identifier(exactly_100 + "a", "input", "ev") == _hashed(f"{exactly_100}a:input:ev")
    assert make_identifier("run 1~!", "input", "ev") == "run 1~!:input:ev"  # printable ASCII
    assert make_identifier("d4f1c2a0-1b2c-4d5e-8f90-123456789abc", "input", "ev") == (
        "d4f1c2a0-1b2c-4d5e-8f90-123456789abc:input:ev"
    )


def test_identifiers_through_the_meter(local_meter: Callable[..., TokenMeter]) -> None:
    meter = local_meter()
    wide = "请求" * 26 + "-" * 26  # 78 characters, 182 bytes
    assert (len(wide), len(wide.encode("utf-8"))) == (78, 182)
    for rid in (wide, "line\nbreak", "plain-1"):
        meter.record(model="m", customer_id="cus_a", input_tokens=2, request_id=rid)
    assert meter.flush(5)
    rows = meter._outbox._query("SELECT identifier FROM events ORDER BY id")
    assert [r[0] for r in rows] == [
        _hashed(f"{wide}:input:token-billing-tokens"),
        _hashed("line\nbreak:input:token-billing-tokens"),
        "plain-1:input:token-billing-tokens",
    ]


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
    assert meter._outbox._query("SELECT code, field FROM rejected") == [
        ("invalid_dimension", "model")
    ]
    assert meter._outbox._query("SELECT COUNT(*) FROM events") == [(0,)]
