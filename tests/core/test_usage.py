"""Usage validation and the two provider shapes: every rule has a named error."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from stripe_token_meter import (
    InvalidCustomer,
    InvalidDimension,
    InvalidIdentifier,
    InvalidTimestamp,
    InvalidTokenCount,
    TokenMeter,
    Usage,
)


def test_disjoint_fields_and_totals() -> None:
    u = Usage(
        model="m",
        input_tokens=70,
        cached_input_tokens=30,
        cache_write_tokens=5,
        output_tokens=40,
        reasoning_tokens=10,
    )
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (105, 50, 155)


def test_from_openai_is_inclusive() -> None:
    u = Usage.from_openai(
        model="gpt-4o",
        prompt_tokens=100,
        completion_tokens=50,
        cached_tokens=30,
        reasoning_tokens=10,
    )
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens) == (
        70,
        30,
        40,
        10,
    )
    assert u.prompt_tokens == 100 and u.completion_tokens == 50


def test_from_anthropic_is_exclusive() -> None:
    u = Usage.from_anthropic(
        model="claude",
        input_tokens=50,
        output_tokens=30,
        cache_read_input_tokens=200,
        cache_creation_input_tokens=100,
    )
    assert (u.input_tokens, u.cached_input_tokens, u.cache_write_tokens, u.output_tokens) == (
        50,
        200,
        100,
        30,
    )
    assert u.prompt_tokens == 350


def test_openai_shape_rejects_exclusive_numbers() -> None:
    with pytest.raises(InvalidTokenCount, match=r"use Usage\.from_anthropic") as e:
        Usage.from_openai(model="m", prompt_tokens=10, cached_tokens=20)
    assert e.value.field == "cached_tokens"
    with pytest.raises(InvalidTokenCount, match="reasoning_tokens"):
        Usage.from_openai(model="m", completion_tokens=1, reasoning_tokens=2)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (-1, ">= 0"),
        (1.5, "whole number"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (True, "bool"),
        (10**15, "15 digits"),
        ("12", "must be an int"),
        (None, "must be an int"),
    ],
)
def test_bad_counts_name_field_and_rule(value: object, rule: str) -> None:
    with pytest.raises(InvalidTokenCount, match=rule) as e:
        Usage(model="m", output_tokens=value)  # type: ignore[arg-type]
    assert e.value.field == "output_tokens"
    assert e.value.code == "invalid_token_count"


def test_whole_float_is_accepted_as_int() -> None:
    u = Usage(model="m", input_tokens=12.0)  # type: ignore[arg-type]
    assert u.input_tokens == 12 and type(u.input_tokens) is int


@pytest.mark.parametrize("customer", ["123", "cus_", "cus_ab-c", "user_1", "", "cus_a b"])
def test_customer_must_be_a_stripe_id(customer: str) -> None:
    with pytest.raises(InvalidCustomer, match="customer_resolver"):
        Usage(model="m", customer_id=customer)


def test_timestamp_window() -> None:
    now = time.time()
    Usage(model="m", timestamp=now - 34 * 86400)
    Usage(model="m", timestamp=now + 200)
    with pytest.raises(InvalidTimestamp, match="35 days"):
        Usage(model="m", timestamp=now - 36 * 86400)
    with pytest.raises(InvalidTimestamp, match="5 minutes"):
        Usage(model="m", timestamp=now + 600)
    with pytest.raises(InvalidTimestamp):
        Usage(model="m", timestamp="yesterday")  # type: ignore[arg-type]


def test_identifiers_and_dimensions() -> None:
    with pytest.raises(InvalidIdentifier):
        Usage(model="")
    with pytest.raises(InvalidIdentifier, match="100"):
        Usage(model="x" * 101)
    with pytest.raises(InvalidIdentifier):
        Usage(model="m", request_id="")
    with pytest.raises(InvalidDimension, match="reserved"):
        Usage(model="m", dimensions={"model": "x"})
    with pytest.raises(InvalidDimension, match="non-empty string"):
        Usage(model="m", dimensions={"feature": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidDimension, match="keys"):
        Usage(model="m", dimensions={1: "x"})  # type: ignore[dict-item]
    assert Usage(model="m", dimensions={"feature": "chat"}).dimensions == {"feature": "chat"}


# Control (Cc), format (Cf) and line/paragraph separator (Zl, Zp) characters, ASCII and not.
INVISIBLE = [
    ("\x00", "U+0000"),
    ("\n", "U+000A"),
    ("\t", "U+0009"),
    ("\x7f", "U+007F"),
    ("\x85", "U+0085"),
    ("\u200b", "U+200B"),
    ("\u202e", "U+202E"),
    ("\ufeff", "U+FEFF"),
    ("\u2028", "U+2028"),
    ("\u2029", "U+2029"),
]


@pytest.mark.parametrize(("char", "code"), INVISIBLE)
def test_model_and_provider_refuse_control_and_invisible_characters(char: str, code: str) -> None:
    with pytest.raises(InvalidIdentifier) as model_err:
        Usage(model=f"gpt-4o{char}x")
    assert (model_err.value.code, model_err.value.field) == ("invalid_identifier", "model")
    assert model_err.value.message == (
        "must not contain control or invisible characters (NUL, newline, tab, zero-width...), "
        f"got {code} at index 6 in {f'gpt-4o{char}x'!r}; strip them before recording"
    )
    with pytest.raises(InvalidIdentifier) as provider_err:
        Usage(model="gpt-4o", provider=f"{char}openai")
    assert provider_err.value.field == "provider"
    assert f"got {code} at index 0" in provider_err.value.message


@pytest.mark.parametrize(("char", "code"), INVISIBLE)
def test_dimension_keys_and_values_refuse_control_and_invisible_characters(
    char: str, code: str
) -> None:
    with pytest.raises(InvalidDimension) as key_err:
        Usage(model="m", dimensions={f"fea{char}ture": "chat"})
    assert (key_err.value.code, key_err.value.field) == ("invalid_dimension", "dimensions")
    assert key_err.value.message == (
        f"key {f'fea{char}ture'!r} must not contain control or invisible characters (NUL, "
        f"newline, tab, zero-width...), got {code} at index 3; strip them before recording"
    )
    with pytest.raises(InvalidDimension) as value_err:
        Usage(model="m", dimensions={"feature": f"chat{char}"})
    assert value_err.value.message == (
        "value of 'feature' must not contain control or invisible characters (NUL, newline, "
        f"tab, zero-width...), got {code} at index 4; strip them before recording"
    )


def test_visible_text_in_any_script_is_accepted() -> None:
    u = Usage(
        model="modèle-日本語 v2",
        provider="opénai",
        dimensions={"fonctionnalité": "recherche avancée", "emoji": "🔎"},
        request_id="req\n1",  # request ids are hashed into identifiers, never refused
    )
    assert (u.model, u.request_id) == ("modèle-日本語 v2", "req\n1")
    assert u.dimensions == {"fonctionnalité": "recherche avancée", "emoji": "🔎"}


def test_refused_characters_through_record_are_dead_lettered(
    local_meter: Callable[..., TokenMeter],
) -> None:
    meter = local_meter()
    common: dict[str, Any] = {"customer_id": "cus_a", "input_tokens": 5}
    meter.record(model="gpt-4o\x00", request_id="nul", **common)
    meter.record(model="gpt-4o", provider="open\nai", request_id="newline", **common)
    meter.record(model="gpt-4o", dimensions={"feature\u2028": "x"}, request_id="sep", **common)
    meter.record(model="gpt-4o", dimensions={"feature": "a\u200bb"}, request_id="zw", **common)
    meter.record(Usage(model="gpt-4o", request_id="ok", **common))
    assert meter.flush(5)
    rejected = meter._outbox._query("SELECT code, field, message, record FROM rejected ORDER BY id")
    assert [(code, field) for code, field, _, _ in rejected] == [
        ("invalid_identifier", "model"),
        ("invalid_identifier", "provider"),
        ("invalid_dimension", "dimensions"),
        ("invalid_dimension", "dimensions"),
    ]
    assert [json.loads(r[3])["request_id"] for r in rejected] == ["nul", "newline", "sep", "zw"]
    assert "got U+0000 at index 6" in rejected[0][2]
    assert "got U+000A at index 4" in rejected[1][2]
    assert "key 'feature\\u2028'" in rejected[2][2] and "U+2028 at index 7" in rejected[2][2]
    assert "value of 'feature'" in rejected[3][2] and "U+200B at index 1" in rejected[3][2]
    events = meter._outbox._query("SELECT identifier, model, value FROM events")
    assert events == [("ok:input:token-billing-tokens", "gpt-4o", 5)]
    stats = meter.stats()
    assert (stats["dead_lettered"], stats["events"]) == (4, 1)


def test_refused_characters_raise_in_strict_mode(local_meter: Callable[..., TokenMeter]) -> None:
    meter = local_meter(strict=True)
    with pytest.raises(InvalidIdentifier, match="model: must not contain control"):
        meter.record(model="gpt\r4o", customer_id="cus_a", input_tokens=1)
    with pytest.raises(InvalidDimension, match="value of 'team'"):
        meter.record(model="m", customer_id="cus_a", input_tokens=1, dimensions={"team": "\x1b"})
