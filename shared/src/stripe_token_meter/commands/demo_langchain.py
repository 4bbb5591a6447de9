"""The demo's LangChain part: a fake chat model reporting usage, through StripeCallbackHandler.

Why a subclass and not LangChain's fake models: those report no `usage_metadata`; this
one reports it exactly as ChatOpenAI does (cache reads and reasoning in the details), for
`invoke` and for `stream` (usage on the last chunk, which LangChain sums).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..meter import TokenMeter
from ._demo_calls import (
    CallUsage,
    FrameworkRun,
    FrameworkUnavailable,
    plain_usage,
    reasoning_usage,
    split,
)

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel
    from langchain_core.language_models.base import LangSmithParams
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_stripe import StripeCallbackHandler
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise FrameworkUnavailable(f"{exc.name or exc}: pip install langchain-stripe") from None

PLAIN_MODEL = "gpt-4o-2024-08-06"
REASONING_MODEL = "o3-mini-2025-01-31"


class DemoChatModel(BaseChatModel):
    """Answers instantly and reports the usage it was given, like ChatOpenAI would."""

    model_name: str = PLAIN_MODEL
    usage: CallUsage = CallUsage(100, 20)

    @property
    def _llm_type(self) -> str:
        return "stripe-token-meter-demo"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"
        params["ls_model_name"] = self.model_name
        return params

    def _usage_metadata(self) -> UsageMetadata:
        u = self.usage
        return {
            "input_tokens": u.prompt_tokens,
            "output_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "input_token_details": {"cache_read": u.cached_tokens},
            "output_token_details": {"reasoning": u.reasoning_tokens},
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content="Here is the summary you asked for.",
            usage_metadata=self._usage_metadata(),
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for word in ("Thinking", " it", " through..."):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=self._usage_metadata(),
                response_metadata={"model_name": self.model_name},
            )
        )


def run(meter: TokenMeter, customer_id: str, calls: int) -> FrameworkRun:
    """`invoke` a chat model, then `stream` a reasoning model; the handler names the customer."""
    result = FrameworkRun("langchain", customer_id, models=[PLAIN_MODEL, REASONING_MODEL])
    handler = StripeCallbackHandler(meter, customer_id=customer_id)
    config: Any = {"callbacks": [handler]}
    plain, streamed = split(calls)
    start = time.perf_counter()
    for i in range(plain):
        model = DemoChatModel(model_name=PLAIN_MODEL, usage=plain_usage(i, 1800, 350, 1024))
        model.invoke("Summarise this support ticket.", config=config)
        result.calls += 1
    for i in range(streamed):
        model = DemoChatModel(model_name=REASONING_MODEL, usage=reasoning_usage(i, 900, 1200, 800))
        for _ in model.stream("Plan the refactoring step by step.", config=config):
            pass
        result.calls += 1
        result.streamed += 1
    result.seconds = time.perf_counter() - start
    return result
