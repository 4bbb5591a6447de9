"""Model names as Stripe's own token meter writes them."""

from __future__ import annotations

import pytest
from stripe_token_meter import normalize_model, normalize_provider
from stripe_token_meter.dimensions import infer_provider, known_provider


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3.5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-latest", "anthropic/claude-3.5-sonnet"),
        ("anthropic", "claude-opus-4-1", "anthropic/claude-opus-4.1"),
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5"),
        ("anthropic", "claude-3-7-sonnet-20250219", "anthropic/claude-3.7-sonnet"),
        ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"),
        ("openai", "gpt-4o-mini", "openai/gpt-4o-mini"),
        ("openai", "o3-mini-2025-01-31", "openai/o3-mini"),
        ("ChatOpenAI", "gpt-4o", "openai/gpt-4o"),
        ("openai", "openai/gpt-4o-2024-08-06", "openai/gpt-4o"),
        (None, "openai/gpt-4o", "openai/gpt-4o"),
        (None, "anthropic/claude-3-5-haiku-20241022", "anthropic/claude-3.5-haiku"),
        ("azure_openai", "gpt-4o-2024-08-06", "azure/gpt-4o-2024-08-06"),
        ("azure", "gpt-4o", "azure/gpt-4o"),
        ("google_genai", "gemini-2.0-flash-001", "google/gemini-2.0-flash-001"),
        (
            "bedrock",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (None, "my-model", "my-model"),
    ],
)
def test_normalize_model(provider: str | None, model: str, expected: str) -> None:
    assert normalize_model(provider, model) == expected


def test_provider_aliases_keep_hosted_variants_distinct() -> None:
    assert normalize_provider("ChatOpenAI") == "openai"
    assert normalize_provider("azure_openai") == "azure"
    assert normalize_provider("AzureChatOpenAI") == "azure"
    assert normalize_provider("vertexai") == "vertex_ai"
    assert normalize_provider(None) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai", "openai"),
        ("ChatOpenAI", "openai"),
        ("azure", "azure"),
        ("amazon_bedrock", "bedrock"),
        ("bedrock_converse", "bedrock"),  # ChatBedrockConverse's model_provider
        ("google_genai", "google"),
        ("google_vertexai", "vertex_ai"),
        ("mistralai", "mistral"),
        ("huggingface", "huggingface"),
        ("mycompanymodel", None),  # LangChain's class-name default for a custom model
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_known_provider(name: object, expected: str | None) -> None:
    assert known_provider(name) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-2024-08-06", "openai"),
        ("GPT-4o", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("o1", "openai"),
        ("o3-mini-2025-01-31", "openai"),
        ("text-embedding-3-small", "openai"),
        ("claude-3-5-sonnet-20241022", "anthropic"),
        ("gemini-2.0-flash-001", "google"),
        ("gpt-oss-120b", None),  # open weights: many hosts, many prices
        ("llama-3.1-8b", None),
        ("omni-large", None),
        ("openai/gpt-4o", None),  # already prefixed: normalize_model reads the prefix
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", None),  # Bedrock's id, not Anthropic's
        ("inhouse-7b", None),
    ],
)
def test_infer_provider_from_model_families_only_their_maker_serves(
    model: str, expected: str | None
) -> None:
    assert infer_provider(model) == expected
