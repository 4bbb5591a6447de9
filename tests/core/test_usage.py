"""Usage validation and the two provider shapes: every rule has a named error."""

from __future__ import annotations

import math
import time

import pytest
from stripe_token_meter import (
    InvalidCustomer,
    InvalidDimension,
    InvalidIdentifier,
    InvalidTimestamp,
    InvalidTokenCount,
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
