"""The demo's LlamaIndex part: a CustomLLM reporting OpenAI-shaped raw usage, via instrument().

Why a CustomLLM: LlamaIndex's MockLLM reports no usage; real integrations leave the
provider's answer in `response.raw`, which this one does, for `chat` and `stream_chat`
(usage on the last chunk). The customer comes from a `meter.customer()` scope.
"""

from __future__ import annotations

import time
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
    from llama_index.core.base.llms.types import (
        ChatMessage,
        CompletionResponse,
        CompletionResponseGen,
        LLMMetadata,
    )
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llamaindex_stripe import instrument, uninstrument
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise FrameworkUnavailable(f"{exc.name or exc}: pip install llamaindex-stripe") from None

PLAIN_MODEL = "openai/gpt-4.1-mini-2025-04-14"
REASONING_MODEL = "openai/o3-2025-04-16"


class DemoLLM(CustomLLM):
    """Answers instantly; `raw` carries the usage the way OpenAI's API reports it."""

    model: str = PLAIN_MODEL
    usage: CallUsage = CallUsage(100, 20)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, is_chat_model=False)

    def _raw(self) -> dict[str, Any]:
        u = self.usage
        return {
            "model": self.model.partition("/")[2],
            "usage": {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            },
        }

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="The answer is in section 3.", raw=self._raw())

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        words = ["Let", " me", " reason", " about", " it."]

        def gen() -> CompletionResponseGen:
            text = ""
            for n, word in enumerate(words, 1):
                text += word
                raw = self._raw() if n == len(words) else {"model": self._raw()["model"]}
                yield CompletionResponse(text=text, delta=word, raw=raw)

        return gen()


def run(meter: TokenMeter, customer_id: str, calls: int) -> FrameworkRun:
    """`chat`, then `stream_chat` a reasoning model, inside `meter.customer(...)`."""
    result = FrameworkRun("llamaindex", customer_id, models=[PLAIN_MODEL, REASONING_MODEL])
    handler = instrument(meter)
    messages = [ChatMessage(role="user", content="What does the contract say about renewals?")]
    plain, streamed = split(calls)
    start = time.perf_counter()
    try:
        with meter.customer(customer_id):
            for i in range(plain):
                DemoLLM(model=PLAIN_MODEL, usage=plain_usage(i, 2_500, 400, 1_024)).chat(messages)
                result.calls += 1
            for i in range(streamed):
                llm = DemoLLM(model=REASONING_MODEL, usage=reasoning_usage(i, 1_500, 2_000, 1_400))
                for _ in llm.stream_chat(messages):
                    pass
                result.calls += 1
                result.streamed += 1
    finally:
        result.seconds = time.perf_counter() - start
        uninstrument(handler)
    return result
