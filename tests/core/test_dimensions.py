"""Model names as Stripe's own token meter writes them."""

from __future__ import annotations

import pytest
from stripe_token_meter import normalize_model, normalize_provider


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
