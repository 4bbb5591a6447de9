"""Token usage, model and provider out of LlamaIndex responses and LLM classes.

LlamaIndex has no usage field of its own: each integration leaves the provider's answer
in `response.raw` (a dict or the provider SDK's pydantic object) and some copy counts
into `response.additional_kwargs`. One source is read, never both: `raw["usage"]` /
`raw["usage_metadata"]` first, `additional_kwargs` only when raw has none.

Counts are passed to the meter as reported, in the shape the provider uses; the core's
`Usage.from_openai` / `Usage.from_anthropic` turn them into disjoint counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

Counts = Literal["openai", "anthropic"]
Found = tuple[Counts, dict[str, Any]]
"""(shape, fields present in the report): only reported fields, so stream parts merge."""

UNKNOWN_MODEL: Final = "unknown"  # LLMMetadata's default model_name


def field(obj: Any, key: str) -> Any:
    """`obj[key]` for mappings, `obj.key` for objects (pydantic, provider SDK types)."""
    if obj is None:
        return None
    if type(obj) is dict or isinstance(obj, Mapping):
        return obj.get(key)
    try:
        return getattr(obj, key, None)
    except Exception:  # a property that raises: treat as absent
        return None


def _count(value: Any) -> Any:
    """A reported count (int or float; the core checks it is whole), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    value = _count(value)
    if value is not None:
        out[key] = value


def usage_fields(usage: Any) -> Found | None:
    """Recognise one usage report: OpenAI, OpenAI Responses, Anthropic or Gemini shape."""
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return None
    out: dict[str, Any] = {}
    # Gemini `usage_metadata`: prompt_token_count includes cached content; thoughts are
    # billed as output but reported apart from candidates; tool-use prompts are input.
    prompt = _count(field(usage, "prompt_token_count"))
    candidates = _count(field(usage, "candidates_token_count"))
    if prompt is not None or candidates is not None:
        thoughts = _count(field(usage, "thoughts_token_count"))
        tool_prompt = _count(field(usage, "tool_use_prompt_token_count"))
        if prompt is not None or tool_prompt is not None:
            out["prompt_tokens"] = (prompt or 0) + (tool_prompt or 0)
        if candidates is not None or thoughts is not None:
            out["completion_tokens"] = (candidates or 0) + (thoughts or 0)
        _put(out, "cached_tokens", field(usage, "cached_content_token_count"))
        _put(out, "reasoning_tokens", thoughts)
        return "openai", out
    # OpenAI chat completions (and every OpenAI-compatible server): inclusive totals.
    if (
        _count(field(usage, "prompt_tokens")) is not None
        or _count(field(usage, "completion_tokens")) is not None
    ):
        _put(out, "prompt_tokens", field(usage, "prompt_tokens"))
        _put(out, "completion_tokens", field(usage, "completion_tokens"))
        prompt_details = field(usage, "prompt_tokens_details")
        _put(out, "cached_tokens", field(prompt_details, "cached_tokens"))
        _put(out, "cache_write_tokens", field(prompt_details, "cache_write_tokens"))
        _put(
            out,
            "reasoning_tokens",
            field(field(usage, "completion_tokens_details"), "reasoning_tokens"),
        )
        return "openai", out
    if (
        _count(field(usage, "input_tokens")) is not None
        or _count(field(usage, "output_tokens")) is not None
    ):
        input_details = field(usage, "input_tokens_details")
        output_details = field(usage, "output_tokens_details")
        if input_details is not None or output_details is not None:
            # OpenAI Responses API: input_tokens/output_tokens, but inclusive like chat.
            _put(out, "prompt_tokens", field(usage, "input_tokens"))
            _put(out, "completion_tokens", field(usage, "output_tokens"))
            _put(out, "cached_tokens", field(input_details, "cached_tokens"))
            _put(out, "reasoning_tokens", field(output_details, "reasoning_tokens"))
            return "openai", out
        # Anthropic: input_tokens exclude cache reads and cache writes.
        _put(out, "input_tokens", field(usage, "input_tokens"))
        _put(out, "output_tokens", field(usage, "output_tokens"))
        _put(out, "cache_read_input_tokens", field(usage, "cache_read_input_tokens"))
        _put(out, "cache_creation_input_tokens", field(usage, "cache_creation_input_tokens"))
        return "anthropic", out
    return None


def response_usage(response: Any) -> Found | None:
    """The usage a ChatResponse / CompletionResponse reports, or None."""
    if response is None:
        return None
    raw = field(response, "raw")
    for key in ("usage", "usage_metadata"):
        found = usage_fields(field(raw, key))
        if found is not None:
            return found
    # Anthropic's stream opens with `message_start`, whose usage sits in its message.
    found = usage_fields(field(field(raw, "message"), "usage"))
    if found is not None:
        return found
    extra = field(response, "additional_kwargs")
    if isinstance(extra, Mapping) and extra:
        found = usage_fields(extra)
        if found is not None:
            return found
        for key in ("usage", "usage_metadata"):
            found = usage_fields(extra.get(key))
            if found is not None:
                return found
    return None


def merge(old: Found | None, new: Found) -> Found:
    """Usage across a stream's chunks: Anthropic splits it (input first, output last),
    so its fields merge; every other shape reports running totals, so the latest wins."""
    if old is not None and old[0] == new[0] == "anthropic":
        return "anthropic", {**old[1], **new[1]}
    return new


def response_model(response: Any) -> str | None:
    """The model the provider says answered (what was billed), if the response names it."""
    raw = field(response, "raw")
    for source in (raw, field(raw, "message")):
        for key in ("model", "model_version", "model_name"):
            value = field(source, key)
            if isinstance(value, str) and value.strip():
                return value
    return None


# LLM class -> provider, for the classes LlamaIndex ships. None: the class talks to
# whatever server it is pointed at (the model name may carry the provider instead).
_CLASS_PROVIDERS: Final[dict[str, str | None]] = {
    "OpenAI": "openai",
    "OpenAIResponses": "openai",
    "OpenAIMultiModal": "openai",
    "AzureOpenAI": "azure",
    "AzureOpenAIResponses": "azure",
    "AzureOpenAIMultiModal": "azure",
    "AzureAICompletionsModel": "azure",
    "Anthropic": "anthropic",
    "Gemini": "google",
    "GoogleGenAI": "google",
    "Vertex": "vertex_ai",
    "Bedrock": "bedrock",
    "BedrockConverse": "bedrock",
    "MistralAI": "mistral",
    "Groq": "groq",
    "Cohere": "cohere",
    "Ollama": "ollama",
    "DeepSeek": "deepseek",
    "TogetherLLM": "together_ai",
    "Fireworks": "fireworks_ai",
    "OpenRouter": "openrouter",
    "MockLLM": "mock",
    "OpenAILike": None,
    "LiteLLM": None,
}
_BASE_CLASSES: Final = frozenset(
    {"LLM", "CustomLLM", "FunctionCallingLLM", "BaseLLM", "StructuredLLM"}
)
_GENERIC_PACKAGES: Final = frozenset(
    {"openai_like", "litellm", "langchain", "custom", "structured"}
)


def class_provider(cls: type | None) -> str | None:
    """Provider of an LLM class: a known class in its MRO, else its `llama_index.llms.<pkg>`."""
    if cls is None:
        return None
    for klass in cls.__mro__:
        name = klass.__name__
        if name in _CLASS_PROVIDERS:
            return _CLASS_PROVIDERS[name]
        if name in _BASE_CLASSES:
            return None
        parts = klass.__module__.split(".")
        if len(parts) > 2 and parts[0] == "llama_index" and parts[1] == "llms":
            return None if parts[2] in _GENERIC_PACKAGES else parts[2]
    return None


def model_and_provider(
    answered: str | None, metadata_model: str | None, cls: type | None, class_name: str | None
) -> tuple[str, str | None]:
    """(model, provider) as reported; the core normalises both.

    Model: the one the response named (`answered`: what was billed), else the LLM's `metadata.model_name`, else
    the LLM class name. Provider: from the LLM class; for classes that do not say, a
    provider prefix on the configured model name ("anthropic/claude-...") is used.
    """
    configured = metadata_model if metadata_model and metadata_model != UNKNOWN_MODEL else None
    model = answered or configured or class_name or UNKNOWN_MODEL
    provider = class_provider(cls)
    if provider is None and configured and "/" in configured and "/" not in model:
        provider = configured.partition("/")[0]
    return model, provider
