"""Small real LangChain models that report usage the way providers do, and their fixtures.

`GenericFakeChatModel` drops usage when streaming, so these subclass `BaseChatModel` /
`BaseLLM` directly: usage on the last stream chunk (OpenAI) or split across chunks
(Anthropic: input at the start, output at the end), `llm_output` usage for plain LLMs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import langchain_stripe
import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import PrivateAttr


class ModelBoom(RuntimeError):
    """The fake provider failed."""


class UsageChat(BaseChatModel):
    """A chat model reporting `usage_metadata` (inclusive totals, like every LangChain model).

    With `tool_name` set it asks for that tool once, then answers once it sees the result.
    """

    model_name: str = "fake-chat-1"
    response_model: str | None = None  # what the "provider" says answered
    provider: str = "fakeai"
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0
    split_usage: bool = False  # stream: input tokens on the first chunk, output on the last
    report_usage: bool = True
    fail: bool = False
    fail_mid_stream: bool = False  # stream: raise after the first chunk
    candidates: int = 1  # n > 1: every candidate carries the request's usage, as ChatOpenAI does
    text: str = "hello there friend"
    tool_name: str | None = None
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "usage-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(
            ls_provider=self.provider, ls_model_name=self.model_name, ls_model_type="chat"
        )

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[Any, AIMessage]:
        return self.bind(tools=[getattr(t, "name", str(t)) for t in tools], **kwargs)

    def usage(self) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
            input_token_details={
                "cache_read": self.cache_read,
                "cache_creation": self.cache_creation,
            },
            output_token_details={"reasoning": self.reasoning},
        )

    def _meta(self) -> dict[str, Any]:
        return {"model_name": self.response_model or self.model_name}

    def _reply(self, messages: list[BaseMessage]) -> tuple[str, list[dict[str, Any]]]:
        self._calls += 1
        if self.fail:
            raise ModelBoom("provider down")
        if self.tool_name and not isinstance(messages[-1], ToolMessage):
            call = {
                "name": self.tool_name,
                "args": {"x": 2},
                "id": f"call_{self._calls}",
                "type": "tool_call",
            }
            return "", [call]
        return self.text, []

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, calls = self._reply(messages)
        msg = AIMessage(
            content=text,
            tool_calls=calls,
            usage_metadata=self.usage() if self.report_usage else None,
            response_metadata=self._meta(),
        )
        return ChatResult(
            generations=[ChatGeneration(message=msg.model_copy()) for _ in range(self.candidates)]
        )

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        text, calls = self._reply(messages)
        words = text.split(" ") if text else [""]
        usage = self.usage() if self.report_usage else None
        for i, word in enumerate(words):
            first, last = i == 0, i == len(words) - 1
            chunk_usage: UsageMetadata | None = None
            if usage is not None and self.split_usage and first:
                chunk_usage = UsageMetadata(
                    input_tokens=usage["input_tokens"],
                    output_tokens=0,
                    total_tokens=usage["input_tokens"],
                    input_token_details=usage["input_token_details"],
                )
            elif usage is not None and self.split_usage and last:
                chunk_usage = UsageMetadata(
                    input_tokens=0,
                    output_tokens=usage["output_tokens"],
                    total_tokens=usage["output_tokens"],
                    output_token_details=usage["output_token_details"],
                )
            elif usage is not None and not self.split_usage and last:
                chunk_usage = usage
            msg = AIMessageChunk(
                content=word + ("" if last else " "),
                usage_metadata=chunk_usage,
                response_metadata=self._meta() if last else {},
                tool_call_chunks=[
                    {"name": c["name"], "args": '{"x": 2}', "id": c["id"], "index": j}
                    for j, c in enumerate(calls)
                ]
                if last
                else [],
            )
            yield ChatGenerationChunk(message=msg)
            if self.fail_mid_stream:
                raise ModelBoom("connection reset mid-stream")

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(messages)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages):
            yield chunk


class UsageLLM(BaseLLM):
    """A plain (completion) LLM reporting `llm_output` usage for the whole batch, like OpenAI's.

    `style="openai"`: `token_usage` with prompt/completion tokens; `"anthropic"`: `usage`
    with raw Anthropic keys (input excludes cache reads).
    """

    model_name: str = "fake-llm-1"
    style: str = "openai"
    prompt_tokens: int = 7
    completion_tokens: int = 3
    cache_read: int = 0
    fail: bool = False

    @property
    def _llm_type(self) -> str:
        return "usage-llm"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.fail:
            raise ModelBoom("provider down")
        n = len(prompts)
        if self.style == "openai":
            out: dict[str, Any] = {
                "token_usage": {
                    "prompt_tokens": self.prompt_tokens * n,
                    "completion_tokens": self.completion_tokens * n,
                    "total_tokens": (self.prompt_tokens + self.completion_tokens) * n,
                    "prompt_tokens_details": {"cached_tokens": self.cache_read * n},
                },
                "model_name": self.model_name,
            }
        else:
            out = {
                "usage": {
                    "input_tokens": self.prompt_tokens * n,
                    "output_tokens": self.completion_tokens * n,
                    "cache_read_input_tokens": self.cache_read * n,
                },
                "model": self.model_name,
            }
        return LLMResult(
            generations=[[Generation(text=f"answer to {p}")] for p in prompts], llm_output=out
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for word in ("a", "b"):
            yield GenerationChunk(text=word)


@pytest.fixture
def chat() -> Callable[..., UsageChat]:
    """`chat(**fields)` -> a `UsageChat`."""
    return UsageChat


@pytest.fixture
def llm() -> Callable[..., UsageLLM]:
    """`llm(**fields)` -> a `UsageLLM`."""
    return UsageLLM


@pytest.fixture
def boom() -> type[Exception]:
    return ModelBoom


@pytest.fixture
def tool_double() -> BaseTool:
    """A tool named `double` for tool-calling loops."""
    from langchain_core.tools import tool

    @tool
    def double(x: int) -> int:
        """Double a number."""
        return 2 * x

    return double


@pytest.fixture(autouse=True)
def _no_global_handler() -> Iterator[None]:
    """No test leaks an `enable()` into the next one."""
    langchain_stripe.disable()
    yield
    langchain_stripe.disable()
