"""Small real LlamaIndex LLMs that report usage the way providers do, and their fixtures.

`UsageLLM` is a `CustomLLM`: like `MockLLM`, its `chat()` runs `complete()` inside (two
LLM spans per call) and its async methods run the sync ones, so every test through it
also checks the nested-span dedupe. Usage goes into `response.raw` in the shape of one
provider (OpenAI, Anthropic, Gemini), or into `additional_kwargs`, as integrations do.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import llamaindex_stripe
import pytest
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from pydantic import Field, PrivateAttr


class ModelBoom(RuntimeError):
    """The fake provider failed."""


def _objects(value: Any) -> Any:
    """Dicts -> attribute objects, like a provider SDK's pydantic response."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _objects(v) for k, v in value.items()})
    return value


class UsageLLM(CustomLLM):
    """A CustomLLM reporting provider-shaped usage in `raw` (or `additional_kwargs`).

    `shape`: "openai" (inclusive prompt/completion totals), "anthropic" (`prompt_tokens`
    is the uncached input, cache counts apart), "gemini" (`usage_metadata`, thoughts apart
    from candidates), "bedrock" (Converse's camelCase `usage`; a stream's comes in its
    `metadata` event), "kwargs" (only `additional_kwargs` prompt/completion tokens) or
    "none". Streams report it on the last chunk; Anthropic splits it like its API does
    (input on `message_start`, output on `message_delta`). `answers` are returned in turn.
    """

    model_name: str = "openai/gpt-4o"
    response_model: str | None = "gpt-4o-2024-08-06"
    shape: str = "openai"
    prompt_tokens: int = 100
    completion_tokens: int = 20
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    as_objects: bool = False
    answers: list[str] = Field(default_factory=lambda: ["hello there friend"])
    fail: bool = False
    fail_mid_stream: bool = False
    _calls: int = PrivateAttr(default=0)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model_name, is_chat_model=False)

    @property
    def calls(self) -> int:
        return self._calls

    def _answer(self) -> str:
        if self.fail:
            raise ModelBoom("provider down")
        text = self.answers[min(self._calls, len(self.answers) - 1)]
        self._calls += 1
        return text

    def usage_raw(self) -> dict[str, Any]:
        model = self.response_model
        if self.shape == "openai":
            return {
                "id": "chatcmpl-1",
                "model": model,
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                    "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                },
            }
        if self.shape == "anthropic":
            return {"id": "msg_1", "model": model, "usage": self._anthropic_usage()}
        if self.shape == "gemini":
            return {
                "model_version": model,
                "usage_metadata": {
                    "prompt_token_count": self.prompt_tokens,
                    "candidates_token_count": self.completion_tokens,
                    "thoughts_token_count": self.reasoning_tokens,
                    "cached_content_token_count": self.cached_tokens,
                    "total_token_count": self.prompt_tokens
                    + self.completion_tokens
                    + self.reasoning_tokens,
                },
            }
        if self.shape == "bedrock":  # Converse: `dict(response)`, no model named
            return {"output": {"message": {"role": "assistant"}}, "usage": self._bedrock_usage()}
        return {"model": model} if model else {}

    def _bedrock_usage(self) -> dict[str, Any]:
        return {
            "inputTokens": self.prompt_tokens,
            "outputTokens": self.completion_tokens,
            "totalTokens": self.prompt_tokens
            + self.completion_tokens
            + self.cached_tokens
            + self.cache_write_tokens,
            "cacheReadInputTokens": self.cached_tokens,
            "cacheWriteInputTokens": self.cache_write_tokens,
        }

    def _anthropic_usage(self, output_tokens: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens if output_tokens is None else output_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
        }

    def _kwargs(self) -> dict[str, Any]:
        if self.shape != "kwargs":
            return {}
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    def _raw(self, raw: dict[str, Any]) -> Any:
        return _objects(raw) if self.as_objects else raw

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = self._answer()
        raw = self.usage_raw() if self.shape != "kwargs" else None
        return CompletionResponse(
            text=text, raw=self._raw(raw) if raw else raw, additional_kwargs=self._kwargs()
        )

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        text = self._answer()
        words = text.split(" ")

        def gen() -> CompletionResponseGen:
            so_far = ""
            for i, word in enumerate(words):
                first, last = i == 0, i == len(words) - 1
                delta = word if last else word + " "
                so_far += delta
                raw: Any = {"type": "chunk"}
                extra: dict[str, Any] = {}
                if self.shape == "anthropic":
                    if first:  # message_start: input, cache counts and 1 output token
                        raw = {
                            "type": "message_start",
                            "message": {
                                "model": self.response_model,
                                "usage": self._anthropic_usage(1),
                            },
                        }
                    elif last:
                        raw = {
                            "type": "message_delta",
                            "usage": {"output_tokens": self.completion_tokens},
                        }
                elif self.shape == "bedrock" and last:  # converse_stream's metadata event
                    raw = {"metadata": {"usage": self._bedrock_usage(), "metrics": {}}}
                elif last:
                    raw = self.usage_raw() if self.shape != "kwargs" else None
                    extra = self._kwargs()
                if self.fail_mid_stream and last:
                    raise ModelBoom("connection reset")
                yield CompletionResponse(
                    text=so_far,
                    delta=delta,
                    raw=self._raw(raw) if raw else raw,
                    additional_kwargs=extra,
                )

        return gen()


class WrapperLLM(CustomLLM):
    """An LLM made of another LLM (a router or fallback): reports no usage of its own."""

    inner: Any = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="router-1")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        first = self.inner.complete(prompt)
        second = self.inner.complete(prompt)
        return CompletionResponse(text=first.text + second.text)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            for chunk in self.inner.stream_complete(prompt):
                yield CompletionResponse(text=chunk.text, delta=chunk.delta)

        return gen()


@pytest.fixture
def usage_llm() -> Callable[..., UsageLLM]:
    """`usage_llm(**fields)` -> a `UsageLLM`."""
    return UsageLLM


@pytest.fixture
def wrapper_llm() -> Callable[..., WrapperLLM]:
    return WrapperLLM


@pytest.fixture
def boom() -> type[Exception]:
    return ModelBoom


@pytest.fixture(autouse=True)
def _isolated_dispatcher() -> Iterator[None]:
    """The root dispatcher is process-global: no test leaks a handler into the next."""
    llamaindex_stripe.uninstrument()
    yield
    llamaindex_stripe.uninstrument()
    gc.collect()
