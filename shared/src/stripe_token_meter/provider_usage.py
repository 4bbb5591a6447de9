"""Read a provider's own usage report (dict or SDK object) into `TokenMeter.record()` fields.

Every framework passes some provider's raw usage through somewhere (LangChain's
`llm_output`, LiteLLM's `usage`, LlamaIndex's `response.raw`). The shapes differ in what
their counts include, so they are recognised here, once, and handed to the core's matching
constructor: `"openai"` for inclusive totals, `"anthropic"` for exclusive input counts.
Only reported fields are returned (so a stream's partial reports can be merged); the core
fills the rest with 0 and validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Counts = Literal["openai", "anthropic"]
UsageReport = tuple[Counts, dict[str, Any]]
"""`(counts, fields)`: `meter.record(counts=counts, **fields, ...)`."""


def field(obj: Any, key: str) -> Any:
    """`obj[key]` for mappings, `obj.key` for objects (pydantic, provider SDK types)."""
    if obj is None:
        return None
    if type(obj) is dict or isinstance(obj, Mapping):  # the exact-type test skips the ABC check
        return obj.get(key)
    try:
        return getattr(obj, key, None)
    except Exception:  # a property that raises: treat as absent
        return None


def _count(value: Any) -> Any:
    """A reported count as is (None when absent): the core validates it, and dead-letters a
    malformed one with its reason instead of it being mistaken for "no usage"."""
    return value


def _sum(a: Any, b: Any) -> Any:
    """a + b for counts reported apart; a malformed part is passed on for the core to reject."""
    if a is None or b is None:
        return b if a is None else a
    numeric = (int, float)
    if (
        isinstance(a, numeric)
        and isinstance(b, numeric)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a + b
    return b if isinstance(a, numeric) and not isinstance(a, bool) else a


def _first(*values: Any) -> Any:
    for value in values:
        value = _count(value)
        if value is not None:
            return value
    return None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    value = _count(value)
    if value is not None:
        out[key] = value


def _gemini(usage: Any) -> UsageReport | None:
    # `usage_metadata`: prompt_token_count includes cached content; thoughts are billed as
    # output but reported apart from candidates; tool-use prompts are input.
    prompt = _count(field(usage, "prompt_token_count"))
    candidates = _count(field(usage, "candidates_token_count"))
    if prompt is None and candidates is None:
        return None
    out: dict[str, Any] = {}
    thoughts = _count(field(usage, "thoughts_token_count"))
    tool_prompt = _count(field(usage, "tool_use_prompt_token_count"))
    _put(out, "prompt_tokens", _sum(prompt, tool_prompt))
    _put(out, "completion_tokens", _sum(candidates, thoughts))
    _put(out, "cached_tokens", field(usage, "cached_content_token_count"))
    _put(out, "reasoning_tokens", thoughts)
    return "openai", out


def _openai_chat(usage: Any) -> UsageReport | None:
    # Chat Completions and every OpenAI-compatible server (LiteLLM for all providers):
    # prompt_tokens include cache reads and writes, completion_tokens include reasoning.
    prompt = _count(field(usage, "prompt_tokens"))
    completion = _count(field(usage, "completion_tokens"))
    if prompt is None and completion is None:
        return None
    details = field(usage, "prompt_tokens_details")
    out: dict[str, Any] = {}
    _put(out, "prompt_tokens", prompt)
    _put(out, "completion_tokens", completion)
    _put(
        out,
        "cached_tokens",
        _first(field(details, "cached_tokens"), field(usage, "cache_read_input_tokens")),
    )
    _put(
        out,
        "cache_write_tokens",
        _first(
            field(usage, "cache_creation_input_tokens"),
            field(details, "cache_creation_tokens"),
            field(details, "cache_write_tokens"),
        ),
    )
    _put(
        out,
        "reasoning_tokens",
        field(field(usage, "completion_tokens_details"), "reasoning_tokens"),
    )
    return "openai", out


def _input_output(usage: Any) -> UsageReport | None:
    if (
        _count(field(usage, "input_tokens")) is None
        and _count(field(usage, "output_tokens")) is None
    ):
        return None
    out: dict[str, Any] = {}
    input_details = field(usage, "input_tokens_details")
    output_details = field(usage, "output_tokens_details")
    if input_details is not None or output_details is not None:
        # OpenAI Responses API: input_tokens/output_tokens, inclusive like chat.
        _put(out, "prompt_tokens", field(usage, "input_tokens"))
        _put(out, "completion_tokens", field(usage, "output_tokens"))
        _put(out, "cached_tokens", field(input_details, "cached_tokens"))
        _put(out, "reasoning_tokens", field(output_details, "reasoning_tokens"))
        return "openai", out
    # Anthropic Messages: input_tokens exclude cache reads and cache writes.
    _put(out, "input_tokens", field(usage, "input_tokens"))
    _put(out, "output_tokens", field(usage, "output_tokens"))
    _put(out, "cache_read_input_tokens", field(usage, "cache_read_input_tokens"))
    _put(out, "cache_creation_input_tokens", field(usage, "cache_creation_input_tokens"))
    return "anthropic", out


def read_usage(usage: Any) -> UsageReport | None:
    """Recognise one usage report: OpenAI chat, OpenAI Responses, Anthropic or Gemini shape.

    >>> read_usage({"prompt_tokens": 100, "completion_tokens": 20,
    ...             "prompt_tokens_details": {"cached_tokens": 30}})
    ('openai', {'prompt_tokens': 100, 'completion_tokens': 20, 'cached_tokens': 30})
    >>> read_usage({"input_tokens": 50, "output_tokens": 30, "cache_read_input_tokens": 200})
    ('anthropic', {'input_tokens': 50, 'output_tokens': 30, 'cache_read_input_tokens': 200})
    >>> read_usage("not usage") is None
    True
    """
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return None
    return _gemini(usage) or _openai_chat(usage) or _input_output(usage)
