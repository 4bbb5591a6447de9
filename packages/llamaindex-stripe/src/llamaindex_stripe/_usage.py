"""Token usage, model and provider out of LlamaIndex responses and LLM classes.

LlamaIndex has no usage field of its own: each integration leaves the provider's answer
in `response.raw` (a dict or the provider SDK's pydantic object) and some copy counts
into `response.additional_kwargs`. One source is read, never both: `raw["usage"]` /
`raw["usage_metadata"]` (or a stream event's `message.usage` / `metadata.usage`) first,
`additional_kwargs` only when raw has none.

Counts are passed to the meter as reported, in the shape the provider uses; the core's
`Usage.from_openai` / `Usage.from_anthropic` turn them into disjoint counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from stripe_token_meter.provider_usage import UsageReport as Found
from stripe_token_meter.provider_usage import field
from stripe_token_meter.provider_usage import read_usage as usage_fields

if TYPE_CHECKING:
    from ._billing import Call

UNKNOWN_MODEL: Final = "unknown"  # LLMMetadata's default model_name

# LlamaIndex's own response classes: pydantic models, never mappings, whose `raw` and
# `additional_kwargs` are plain attributes (read without `field`'s mapping test).
_RESPONSES: Final = frozenset({ChatResponse, CompletionResponse})


def _raw(response: Any) -> Any:
    if type(response) in _RESPONSES:
        return response.raw
    return field(response, "raw")


def _getter(obj: Any) -> Callable[[Any, str], Any]:
    """`field`, or for a plain dict (as most `raw` are) `dict.get`, which is the same there."""
    return dict.get if type(obj) is dict else field


def response_usage(response: Any) -> Found | None:
    """The usage a ChatResponse / CompletionResponse reports, or None."""
    if response is None:
        return None
    raw = _raw(response)
    get = _getter(raw)
    for key in ("usage", "usage_metadata"):
        found = usage_fields(get(raw, key))
        if found is not None:
            return found
    # Anthropic's stream opens with `message_start`, whose usage sits in its message;
    # Bedrock Converse's stream ends with a `metadata` event that carries it.
    for key in ("message", "metadata"):
        found = usage_fields(field(get(raw, key), "usage"))
        if found is not None:
            return found
    extra = (
        response.additional_kwargs
        if type(response) in _RESPONSES
        else field(response, "additional_kwargs")
    )
    if isinstance(extra, Mapping) and extra:
        found = usage_fields(extra)
        if found is not None:
            return found
        for key in ("usage", "usage_metadata"):
            found = usage_fields(extra.get(key))
            if found is not None:
                return found
    return None


def response_model(response: Any) -> str | None:
    """The model the provider says answered (what was billed), if the response names it."""
    if response is None:
        return None
    raw = _raw(response)
    if raw is None:
        return None
    return _named_model(raw) or _named_model(_getter(raw)(raw, "message"))


def _named_model(source: Any) -> str | None:
    get = _getter(source)
    for key in ("model", "model_version", "model_name"):
        value = get(source, key)
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


_PROVIDER_OF: dict[type, str | None] = {}
_PROVIDER_OF_MAX: Final = 1024  # classes remembered (cleared past this: classes made at run time)


def class_provider(cls: type | None) -> str | None:
    """Provider of an LLM class: a known class in its MRO, else its `llama_index.llms.<pkg>`."""
    if cls is None:
        return None
    try:
        return _PROVIDER_OF[cls]
    except KeyError:
        pass
    provider = _class_provider(cls)
    if len(_PROVIDER_OF) >= _PROVIDER_OF_MAX:
        _PROVIDER_OF.clear()
    _PROVIDER_OF[cls] = provider
    return provider


def _class_provider(cls: type) -> str | None:
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


_LLM_CLASSES: dict[type, bool] = {}  # class -> is a BaseLLM (isinstance goes through ABCMeta)
_LLM_CLASSES_MAX: Final = 1024


def is_llm(instance: object) -> bool:
    """Whether a span's instance is a LlamaIndex LLM (cached per class: spans are many)."""
    cls = type(instance)
    known = _LLM_CLASSES.get(cls)
    if known is not None:
        return known
    llm = isinstance(instance, BaseLLM)
    if getattr(instance, "__class__", None) is cls:  # not a proxy: its class decides
        if len(_LLM_CLASSES) >= _LLM_CLASSES_MAX:
            _LLM_CLASSES.clear()
        _LLM_CLASSES[cls] = llm
    return llm


class LlamaReading:
    """The billing state machine's `Reading` of LlamaIndex LLMs and responses."""

    is_llm = staticmethod(is_llm)
    usage = staticmethod(response_usage)
    model = staticmethod(response_model)

    @staticmethod
    def name(call: Call, answered: str | None) -> tuple[str, str | None]:
        """(model, provider) of a call that reported usage."""
        cls = type(call.instance) if call.instance is not None else None
        provider = class_provider(cls)
        if answered and provider is not None:
            # What `model_and_provider` returns whenever both are known: the model the
            # response names and the LLM class's provider.
            return answered, provider
        # Otherwise the configured model counts. `metadata` is a property that builds a
        # pydantic object, so it is read only here.
        configured = call.model_name
        if configured is None and call.instance is not None:
            configured = getattr(getattr(call.instance, "metadata", None), "model_name", None)
        return model_and_provider(answered, configured, cls, call.class_name)

    @staticmethod
    def missing(call: Call, abandoned: bool) -> tuple[str, str]:
        """(source, fix) for a call that ended without usage: the fix names the likely cause."""
        source = f"LlamaIndex {call.class_name or 'LLM'}"
        if abandoned:
            return source, (
                "consume LlamaIndex streams to the end: providers report usage with the last chunk"
            )
        provider = class_provider(type(call.instance)) if call.instance is not None else None
        if call.stream and provider in ("openai", "azure"):
            return source, (
                "LlamaIndex's OpenAI LLMs do not ask for usage when streaming: pass "
                "additional_kwargs={'stream_options': {'include_usage': True}} to the LLM"
            )
        if provider == "mock":
            return source, "MockLLM never reports usage; use an LLM whose responses carry it"
        return source, (
            "make the LLM's responses carry the provider's usage in response.raw['usage'] "
            "(OpenAI or Anthropic shape), raw['usage_metadata'] (Gemini) or "
            "additional_kwargs prompt_tokens/completion_tokens"
        )


LLAMA: Final = LlamaReading()
"""The one `Reading` the handlers give their tracker."""
