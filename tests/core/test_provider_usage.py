"""One reader for every provider's usage report, dict or SDK object."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from stripe_token_meter import Usage
from stripe_token_meter.provider_usage import read_usage

OPENAI = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "prompt_tokens_details": {"cached_tokens": 600},
    "completion_tokens_details": {"reasoning_tokens": 50},
}
LITELLM_ANTHROPIC = {  # LiteLLM: inclusive prompt_tokens plus the cache counts at top level
    "prompt_tokens": 460,
    "completion_tokens": 25,
    "cache_read_input_tokens": 300,
    "cache_creation_input_tokens": 120,
    "prompt_tokens_details": {"cached_tokens": 300, "cache_creation_tokens": 120},
}
ANTHROPIC = {
    "input_tokens": 40,
    "output_tokens": 25,
    "cache_read_input_tokens": 300,
    "cache_creation_input_tokens": 120,
}
RESPONSES = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "input_tokens_details": {"cached_tokens": 600},
    "output_tokens_details": {"reasoning_tokens": 50},
}
BEDROCK = {  # Converse: camelCase; inputTokens exclude cache reads and writes
    "inputTokens": 40,
    "outputTokens": 25,
    "totalTokens": 485,
    "cacheReadInputTokens": 300,
    "cacheWriteInputTokens": 120,
}
GEMINI = {
    "prompt_token_count": 1000,
    "cached_content_token_count": 600,
    "candidates_token_count": 150,
    "thoughts_token_count": 50,
}


def _obj(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _obj(v) for k, v in value.items()})
    return value


def _usage(report: Any) -> Usage:
    counts, fields = report
    ctor = Usage.from_openai if counts == "openai" else Usage.from_anthropic
    return ctor(model="m", **fields)


@pytest.mark.parametrize("as_object", [False, True])
@pytest.mark.parametrize(
    ("raw", "disjoint"),
    [
        (OPENAI, (400, 600, 0, 150, 50)),
        (RESPONSES, (400, 600, 0, 150, 50)),
        (GEMINI, (400, 600, 0, 150, 50)),
        (LITELLM_ANTHROPIC, (40, 300, 120, 25, 0)),
        (ANTHROPIC, (40, 300, 120, 25, 0)),
        (BEDROCK, (40, 300, 120, 25, 0)),
    ],
)
def test_every_shape_gives_the_same_disjoint_counts(
    raw: dict[str, Any], disjoint: tuple[int, ...], as_object: bool
) -> None:
    report = read_usage(_obj(raw) if as_object else raw)
    assert report is not None
    u = _usage(report)
    assert (
        u.input_tokens,
        u.cached_input_tokens,
        u.cache_write_tokens,
        u.output_tokens,
        u.reasoning_tokens,
    ) == disjoint


@pytest.mark.parametrize("raw", [None, "usage", 5, {}, {"total_tokens": 3}, SimpleNamespace()])
def test_no_usage_is_none(raw: Any) -> None:
    assert read_usage(raw) is None


def test_malformed_counts_are_passed_on_for_the_core_to_reject() -> None:
    assert read_usage({"prompt_tokens": "many"}) == ("openai", {"prompt_tokens": "many"})


def test_any_mapping_and_objects_whose_properties_raise() -> None:
    from collections import UserDict

    assert read_usage(UserDict(ANTHROPIC)) == read_usage(ANTHROPIC)

    class Flaky:
        prompt_tokens = 10

        @property
        def completion_tokens(self) -> int:
            raise RuntimeError("not loaded")

    assert read_usage(Flaky()) == ("openai", {"prompt_tokens": 10})


def test_pydantic_models_are_read_from_their_fields_extras_and_properties() -> None:
    """Provider SDKs' usage objects are pydantic models (LiteLLM's `Usage` keeps Anthropic's
    cache counts as extras); they are read without probing every missing name."""
    from pydantic import BaseModel, ConfigDict

    class Details(BaseModel):
        cached_tokens: int | None = None

    class ProviderUsage(BaseModel):
        model_config = ConfigDict(extra="allow")
        prompt_tokens: int
        completion_tokens: int
        prompt_tokens_details: Details | None = None

        @property
        def completion_tokens_details(self) -> dict[str, int]:
            return {"reasoning_tokens": 5}

    usage = ProviderUsage(
        prompt_tokens=460,
        completion_tokens=25,
        prompt_tokens_details=Details(cached_tokens=300),
        cache_creation_input_tokens=120,  # an extra, as LiteLLM stores it
    )
    assert read_usage(usage) == (
        "openai",
        {
            "prompt_tokens": 460,
            "completion_tokens": 25,
            "cached_tokens": 300,
            "cache_write_tokens": 120,
            "reasoning_tokens": 5,
        },
    )

    class Aliased(BaseModel):  # its own __getattr__ answers names it has no field for
        tokens_in: int

        def __getattr__(self, name: str) -> Any:
            if name == "input_tokens":
                return self.tokens_in
            return super().__getattr__(name)  # type: ignore[misc]

    assert read_usage(Aliased(tokens_in=7)) == ("anthropic", {"input_tokens": 7})


def test_shapes_are_told_apart_in_a_fixed_order() -> None:
    # A report carrying Gemini's counts is read as Gemini's, then OpenAI chat, then
    # input/output; fields of the other shapes are ignored.
    assert read_usage({**GEMINI, "prompt_tokens": 1, "input_tokens": 1}) == read_usage(GEMINI)
    assert read_usage({**OPENAI, "input_tokens": 1}) == read_usage(OPENAI)
    # Only the counts reported are returned (a stream's partial reports merge).
    assert read_usage({"completion_tokens": 5}) == ("openai", {"completion_tokens": 5})
    assert read_usage({"candidates_token_count": 5}) == ("openai", {"completion_tokens": 5})
    assert read_usage({**ANTHROPIC, "inputTokens": 1}) == read_usage(ANTHROPIC)
    assert read_usage({"outputTokens": 5}) == ("anthropic", {"output_tokens": 5})
