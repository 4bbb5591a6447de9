"""Read a provider's own usage report (dict or SDK object) into `TokenMeter.record()` fields.

Every framework passes some provider's raw usage through somewhere (LangChain's
`llm_output`, LiteLLM's `usage`, LlamaIndex's `response.raw`). The shapes differ in what
their counts include, so they are recognised here, once, and handed to the core's matching
constructor: `"openai"` for inclusive totals, `"anthropic"` for exclusive input counts.
Only reported fields are returned (so a stream's partial reports can be merged); the core
fills the rest with 0 and validates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

Counts = Literal["openai", "anthropic"]
UsageReport = tuple[Counts, dict[str, Any]]
"""`(counts, fields)`: `meter.record(counts=counts, **fields, ...)`."""

_NOT_USAGE = (str, bytes, int, float)


def field(obj: Any, key: str) -> Any:
    """`obj[key]` for mappings, `obj.key` for objects (pydantic, provider SDK types)."""
    if obj is None:
        return None
    if type(obj) is dict or isinstance(obj, Mapping):  # the exact-type test skips the ABC check
        return obj.get(key)
    props = _model_properties(type(obj))
    if props is not None and key not in props:
        return _model_values(obj).get(key)
    try:
        return getattr(obj, key, None)
    except Exception:  # a property that raises: treat as absent
        return None


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


def _getter(usage: Any) -> Callable[[str], Any] | None:
    """`field(usage, key)` as a one-argument function, the type test done once per report."""
    if type(usage) is dict:
        return usage.get
    if isinstance(usage, _NOT_USAGE):
        return None
    if isinstance(usage, Mapping):
        return usage.get
    props = _model_properties(type(usage))
    if props is not None:
        return _model_getter(usage, props)

    def attr(key: str) -> Any:
        try:
            return getattr(usage, key, None)
        except Exception:  # a property that raises: treat as absent
            return None

    return attr


_MODEL_PROPERTIES: dict[type, frozenset[str] | None] = {}
_MODEL_PROPERTIES_MAX = 1024


def _model_properties(cls: type) -> frozenset[str] | None:
    """For a pydantic v2 model class, the names its properties answer; else None. Cached."""
    try:
        return _MODEL_PROPERTIES[cls]
    except KeyError:
        pass
    found: frozenset[str] | None = None
    getattr_owner = next((k for k in cls.__mro__ if "__getattr__" in vars(k)), None)
    if any("__pydantic_fields__" in vars(k) for k in cls.__mro__) and (
        getattr_owner is None or getattr_owner.__module__.startswith("pydantic.")
    ):  # a model whose own __getattr__ makes up names keeps the attribute path
        found = frozenset(
            name for k in cls.__mro__ for name, v in vars(k).items() if isinstance(v, property)
        )
    if len(_MODEL_PROPERTIES) >= _MODEL_PROPERTIES_MAX:
        _MODEL_PROPERTIES.clear()
    _MODEL_PROPERTIES[cls] = found
    return found


def _model_values(model: Any) -> dict[str, Any]:
    """A pydantic model's fields and extras, where pydantic keeps them.

    `getattr` of a name a model lacks goes through pydantic's `__getattr__` and an
    AttributeError: 2.2 us for each of the ~8 names tried per report (read_usage of a
    LiteLLM `Usage`: 10 us).
    """
    values: dict[str, Any] = getattr(model, "__dict__", None) or {}
    extra = getattr(model, "__pydantic_extra__", None)
    return {**values, **extra} if extra else values


def _model_getter(model: Any, props: frozenset[str]) -> Callable[[str], Any]:
    """`field(model, key)` for one pydantic model, its values read once per report."""
    values = _model_values(model)

    def get(key: str) -> Any:
        if key in props:
            return field(model, key)  # a property: read as an attribute
        return values.get(key)

    return get


def _gemini(get: Callable[[str], Any], prompt: Any, candidates: Any) -> UsageReport:
    # `usage_metadata`: prompt_token_count includes cached content; thoughts are billed as
    # output but reported apart from candidates; tool-use prompts are input.
    out: dict[str, Any] = {}
    thoughts = get("thoughts_token_count")
    value = _sum(prompt, get("tool_use_prompt_token_count"))
    if value is not None:
        out["prompt_tokens"] = value
    value = _sum(candidates, thoughts)
    if value is not None:
        out["completion_tokens"] = value
    value = get("cached_content_token_count")
    if value is not None:
        out["cached_tokens"] = value
    if thoughts is not None:
        out["reasoning_tokens"] = thoughts
    return "openai", out


def _openai_chat(get: Callable[[str], Any], prompt: Any, completion: Any) -> UsageReport:
    # Chat Completions and every OpenAI-compatible server (LiteLLM for all providers):
    # prompt_tokens include cache reads and writes, completion_tokens include reasoning.
    out: dict[str, Any] = {}
    if prompt is not None:
        out["prompt_tokens"] = prompt
    if completion is not None:
        out["completion_tokens"] = completion
    details = get("prompt_tokens_details")
    value = field(details, "cached_tokens")
    if value is None:
        value = get("cache_read_input_tokens")
    if value is not None:
        out["cached_tokens"] = value
    value = get("cache_creation_input_tokens")
    if value is None and details is not None:
        value = field(details, "cache_creation_tokens")
        if value is None:
            value = field(details, "cache_write_tokens")
    if value is not None:
        out["cache_write_tokens"] = value
    details = get("completion_tokens_details")
    if details is not None:
        value = field(details, "reasoning_tokens")
        if value is not None:
            out["reasoning_tokens"] = value
    return "openai", out


def _input_output(get: Callable[[str], Any], inp: Any, output: Any) -> UsageReport:
    out: dict[str, Any] = {}
    input_details = get("input_tokens_details")
    output_details = get("output_tokens_details")
    if input_details is not None or output_details is not None:
        # OpenAI Responses API: input_tokens/output_tokens, inclusive like chat.
        _put(out, "prompt_tokens", inp)
        _put(out, "completion_tokens", output)
        _put(out, "cached_tokens", field(input_details, "cached_tokens"))
        _put(out, "reasoning_tokens", field(output_details, "reasoning_tokens"))
        return "openai", out
    # Anthropic Messages: input_tokens exclude cache reads and cache writes.
    return _exclusive(
        get("cache_read_input_tokens"), get("cache_creation_input_tokens"), inp, output
    )


def _exclusive(cache_read: Any, cache_write: Any, inp: Any, output: Any) -> UsageReport:
    """Input counts that exclude cache reads and writes (Anthropic, Bedrock Converse)."""
    out: dict[str, Any] = {}
    _put(out, "input_tokens", inp)
    _put(out, "output_tokens", output)
    _put(out, "cache_read_input_tokens", cache_read)
    _put(out, "cache_creation_input_tokens", cache_write)
    return "anthropic", out


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    # Counts are passed on as reported (None: absent): the core validates them, and
    # dead-letters a malformed one with its reason instead of it being taken for "no usage".
    if value is not None:
        out[key] = value


def read_usage(usage: Any) -> UsageReport | None:
    """Recognise one usage report: OpenAI chat or Responses, Anthropic, Gemini or Bedrock.

    >>> read_usage({"prompt_tokens": 100, "completion_tokens": 20,
    ...             "prompt_tokens_details": {"cached_tokens": 30}})
    ('openai', {'prompt_tokens': 100, 'completion_tokens': 20, 'cached_tokens': 30})
    >>> read_usage({"input_tokens": 50, "output_tokens": 30, "cache_read_input_tokens": 200})
    ('anthropic', {'input_tokens': 50, 'output_tokens': 30, 'cache_read_input_tokens': 200})
    >>> read_usage("not usage") is None
    True
    """
    if usage is None:
        return None
    get = _getter(usage)
    if get is None:
        return None
    # The shapes are told apart by their two main counts, in this order (a report that has
    # Gemini's is Gemini's, whatever else it has).
    a, b = get("prompt_token_count"), get("candidates_token_count")
    if a is not None or b is not None:
        return _gemini(get, a, b)
    a, b = get("prompt_tokens"), get("completion_tokens")
    if a is not None or b is not None:
        return _openai_chat(get, a, b)
    a, b = get("input_tokens"), get("output_tokens")
    if a is not None or b is not None:
        return _input_output(get, a, b)
    a, b = get("inputTokens"), get("outputTokens")
    if a is not None or b is not None:
        # Bedrock Converse (`converse`'s `usage`, `converse_stream`'s `metadata.usage`).
        return _exclusive(get("cacheReadInputTokens"), get("cacheWriteInputTokens"), a, b)
    return None
