"""Model-name normalisation and token types: the two dimensions every event carries.

Names follow Stripe's own LLM token meter (`normalizeModelName` in `@stripe/token-meter`),
so prices made for Stripe's token billing match events sent from Python unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal

TokenTypes = Literal["basic", "detailed"]
"""`basic`: input / output. `detailed`: input / cached_input / cache_write / output / reasoning."""

ModelNormalizer = Callable[[str | None, str], str]

_ANTHROPIC_DATE: Final = re.compile(r"-\d{8}$")
_ANTHROPIC_LATEST: Final = re.compile(r"-latest$")
_ANTHROPIC_VERSION: Final = re.compile(r"(-[a-z]+)?-(\d+)-(\d+)")
_OPENAI_DATE: Final = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_OPENAI_KEEP: Final = frozenset({"gpt-4o-2024-05-13"})

# What frameworks report, mapped to one provider name. Hosted variants (azure, bedrock,
# vertex) stay distinct: their prices differ from the first-party API's.
_PROVIDER_ALIASES: Final[dict[str, str]] = {
    "openai": "openai",
    "chatopenai": "openai",
    "openai_chat": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "chatanthropic": "anthropic",
    "anthropic_chat": "anthropic",
    "azure": "azure",
    "azure_openai": "azure",
    "azureopenai": "azure",
    "azurechatopenai": "azure",
    "azure_ai": "azure",
    "google": "google",
    "gemini": "google",
    "google_genai": "google",
    "google-genai": "google",
    "googlegenai": "google",
    "google_ai": "google",
    "chatgooglegenerativeai": "google",
    "vertex_ai": "vertex_ai",
    "vertexai": "vertex_ai",
    "vertex": "vertex_ai",
    "google_vertexai": "vertex_ai",
    "chatvertexai": "vertex_ai",
    "vertex_ai_beta": "vertex_ai",
    "bedrock": "bedrock",
    "bedrock_converse": "bedrock",
    "amazon_bedrock": "bedrock",
    "aws_bedrock": "bedrock",
    "bedrockconverse": "bedrock",
    "chatbedrock": "bedrock",
    "chatbedrockconverse": "bedrock",
    "mistral": "mistral",
    "mistralai": "mistral",
    "chatmistralai": "mistral",
    "groq": "groq",
    "chatgroq": "groq",
    "cohere": "cohere",
    "ollama": "ollama",
    "chatollama": "ollama",
    "deepseek": "deepseek",
    "xai": "xai",
    "together_ai": "together_ai",
    "together": "together_ai",
    "fireworks_ai": "fireworks_ai",
    "fireworks": "fireworks_ai",
    "openrouter": "openrouter",
    "huggingface": "huggingface",
    "perplexity": "perplexity",
}

HOSTED_PROVIDERS: Final = frozenset({"azure", "bedrock", "vertex_ai"})
"""Clouds that serve other companies' models at their own prices. Their integrations report
the API they speak as the answer's provider (LangChain's AzureChatOpenAI: `openai`), so the
integration's own name for them is the one to bill under."""

# Model families only one first-party API serves under these names. Open-weight families
# (gpt-oss, llama, mistral...) are served by many hosts at different prices: not guessed.
_FAMILIES: Final = (
    (re.compile(r"(gpt-(?!oss)|chatgpt-|o\d+(-|$)|text-embedding-)"), "openai"),
    (re.compile(r"claude-"), "anthropic"),
    (re.compile(r"gemini-"), "google"),
)


def normalize_provider(provider: str | None) -> str | None:
    """One name per provider (`ChatOpenAI`, `openai_chat` -> `openai`; azure stays `azure`)."""
    if not provider:
        return None
    key = provider.strip().lower()
    return _PROVIDER_ALIASES.get(key, key)


def known_provider(name: object) -> str | None:
    """`name` normalised when it is a provider name real integrations use, else None.

    Tells a name an integration chose (`openai`, `amazon_bedrock`, `google_genai`) from one
    a framework made up, e.g. LangChain's class-name default for a custom model.
    """
    if not isinstance(name, str):
        return None
    return _PROVIDER_ALIASES.get(name.strip().lower())


def infer_provider(model: object) -> str | None:
    """The provider of a model family only its maker serves (`gpt-4o` -> `openai`), else None.

    For a call that names no provider; a name that already has a `provider/` prefix, or a
    family several hosts serve, gives None.
    """
    if not isinstance(model, str) or "/" in model:
        return None
    name = model.strip().lower()
    for family, provider in _FAMILIES:
        if family.match(name):
            return provider
    return None


def _normalize_anthropic(model: str) -> str:
    model = _ANTHROPIC_DATE.sub("", model)
    model = _ANTHROPIC_LATEST.sub("", model)
    return _ANTHROPIC_VERSION.sub(r"\1-\2.\3", model)


def _normalize_openai(model: str) -> str:
    return model if model in _OPENAI_KEEP else _OPENAI_DATE.sub("", model)


def normalize_model(provider: str | None, model: str) -> str:
    """`provider/model`, normalised exactly like Stripe's own token meter.

    >>> normalize_model("anthropic", "claude-3-5-sonnet-20241022")
    'anthropic/claude-3.5-sonnet'
    >>> normalize_model("openai", "gpt-4o-2024-08-06")
    'openai/gpt-4o'
    >>> normalize_model("ChatOpenAI", "openai/gpt-4o-2024-05-13")
    'openai/gpt-4o-2024-05-13'
    >>> normalize_model(None, "anthropic/claude-opus-4-1")
    'anthropic/claude-opus-4.1'

    A model that already carries a provider prefix (LiteLLM's `openai/gpt-4o`) is never
    prefixed twice; without any provider the name is returned as given.
    """
    key = (provider, model)
    found = _NORMALIZED.get(key)
    if found is None:
        found = _normalize_model(provider, model)
        if len(_NORMALIZED) >= _NORMALIZED_MAX:
            _NORMALIZED.clear()  # a run of distinct names; the common ones come back at once
        _NORMALIZED[key] = found
    return found


_NORMALIZED: dict[tuple[str | None, str], str] = {}
"""A few models serve most calls: their names are normalised once (0.63 -> 0.06 us)."""
_NORMALIZED_MAX: Final = 4096


def _normalize_model(provider: str | None, model: str) -> str:
    name = model.strip()
    prov = normalize_provider(provider)
    if "/" in name:
        head, _, tail = name.partition("/")
        head_norm = normalize_provider(head)
        if prov is None or head_norm == prov or head.lower() in _PROVIDER_ALIASES:
            # "openai/gpt-4o" with provider openai (or none): the prefix is the provider.
            # A known provider prefix under another reported provider (LiteLLM routing
            # "openai/..." through a proxy) also names the model's real provider.
            prov, name = head_norm, tail
    if prov is None:
        return name
    if prov == "anthropic":
        name = _normalize_anthropic(name)
    elif prov == "openai":
        name = _normalize_openai(name)
    return f"{prov}/{name}"


def keep_model(provider: str | None, model: str) -> str:
    """A `ModelNormalizer` that only joins `provider/model` and changes nothing else."""
    prov = normalize_provider(provider)
    if prov is None or "/" in model:
        return model
    return f"{prov}/{model}"
