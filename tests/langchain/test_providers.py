"""Which provider a LangChain run is billed under: never a custom model's class name.

LangChain makes `ls_provider` up from the class name for models that do not set it
(`MyCompanyModel` -> `mycompanymodel`). These run real `BaseChatModel` subclasses through
LangChain's own callback machinery and check the `model` dimension Stripe receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import AzureChatOpenAI
from langchain_stripe import StripeCallbackHandler
from stripe_token_meter import TokenMeter
from support.events import event_tuples
from support.providers import OpenAIServer

MeterFactory = Callable[..., TokenMeter]
CUS = "cus_custom"


class MyCompanyModel(BaseChatModel):
    """A company's own chat model class, as users write them: no `_get_ls_params` override."""

    answer_model: str = "gpt-4o-2024-08-06"
    answer_provider: str | None = "openai"  # response_metadata["model_provider"], if any
    candidates: int = 1

    @property
    def _llm_type(self) -> str:
        return "my-company"

    def _usage(self) -> UsageMetadata:
        return UsageMetadata(input_tokens=12, output_tokens=3, total_tokens=15)

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"model_name": self.answer_model}
        if self.answer_provider is not None:
            meta["model_provider"] = self.answer_provider
        return meta

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        msg = AIMessage("hi", usage_metadata=self._usage(), response_metadata=self._meta())
        return ChatResult(
            generations=[ChatGeneration(message=msg.model_copy()) for _ in range(self.candidates)]
        )

    def _chunks(self) -> Iterator[ChatGenerationChunk]:
        # As ChatOpenAI streams: model_provider on every chunk (LangChain merges equal ones),
        # the model name once, on the last.
        first = {"model_provider": self.answer_provider} if self.answer_provider else {}
        yield ChatGenerationChunk(message=AIMessageChunk("h", response_metadata=first))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                "i", usage_metadata=self._usage(), response_metadata=self._meta()
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            yield chunk


class AcmeGateway(MyCompanyModel):
    """A custom model that names its own provider (`acme`), as integrations should."""

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_provider="acme", ls_model_name="acme-large", ls_model_type="chat")


def _events(model: str) -> list[tuple[str, str, str, int]]:
    return [(CUS, model, "input", 12), (CUS, model, "output", 3)]


def _run(model: BaseChatModel, how: str, handler: StripeCallbackHandler) -> None:
    cfg: Any = {"callbacks": [handler], "metadata": {"stripe_customer_id": CUS}}
    if how == "invoke":
        model.invoke("hello", config=cfg)
    elif how == "stream":
        assert "".join(str(c.content) for c in model.stream("hello", config=cfg)) == "hi"
    elif how == "astream":

        async def consume() -> None:
            async for _ in model.astream("hello", config=cfg):
                pass

        asyncio.run(consume())
    else:
        assert how == "ainvoke"
        asyncio.run(model.ainvoke("hello", config=cfg))


def test_langchain_would_name_the_provider_after_the_class() -> None:
    """The premise: LangChain's own default for a custom class is its lowercased name."""
    params = MyCompanyModel()._get_ls_params()
    assert params["ls_provider"] == "mycompanymodel"


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream"])
def test_custom_model_bills_under_the_provider_its_answer_names(
    make_meter: MeterFactory, fake_stripe: Any, how: str
) -> None:
    meter = make_meter()
    _run(MyCompanyModel(), how, StripeCallbackHandler(meter))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _events("openai/gpt-4o")


def test_several_candidates_read_on_the_callers_path_too(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    """n > 1 is read by `extract_usage` on the callback's thread, not by the worker."""
    meter = make_meter()
    _run(MyCompanyModel(candidates=3), "invoke", StripeCallbackHandler(meter))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _events("openai/gpt-4o")


@pytest.mark.parametrize(
    ("answer_model", "expected"),
    [
        ("gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("o3-mini-2025-01-31", "openai/o3-mini"),
        ("claude-3-5-sonnet-20241022", "anthropic/claude-3.5-sonnet"),
        ("gemini-2.0-flash-001", "google/gemini-2.0-flash-001"),
        ("anthropic/claude-3-5-haiku-20241022", "anthropic/claude-3.5-haiku"),
        # Nothing names the provider: the model as reported, never `mycompanymodel/...`.
        ("inhouse-7b", "inhouse-7b"),
        ("gpt-oss-120b", "gpt-oss-120b"),  # open weights, many hosts: not guessed
    ],
)
def test_without_a_provider_in_the_answer_the_model_family_names_it(
    make_meter: MeterFactory, fake_stripe: Any, answer_model: str, expected: str
) -> None:
    meter = make_meter()
    model = MyCompanyModel(answer_model=answer_model, answer_provider=None)
    _run(model, "invoke", StripeCallbackHandler(meter))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _events(expected)


def test_a_provider_the_integration_set_itself_is_kept(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    meter = make_meter()
    handler = StripeCallbackHandler(meter)
    _run(AcmeGateway(answer_model="acme-large", answer_provider=None), "invoke", handler)
    # The answer's model_provider still comes first: it says who answered.
    _run(AcmeGateway(answer_model="gpt-4o-2024-08-06"), "invoke", handler)
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == sorted(
        _events("acme/acme-large") + _events("openai/gpt-4o")
    )


def test_azure_stays_azure_though_its_answers_say_openai(
    make_meter: MeterFactory, fake_stripe: Any
) -> None:
    """The real AzureChatOpenAI: `ls_provider` azure, `model_provider` openai; Azure's prices."""
    meter = make_meter()
    handler = StripeCallbackHandler(meter, customer_id=CUS)
    with OpenAIServer(prompt_tokens=12, completion_tokens=3) as server:
        model = AzureChatOpenAI(
            azure_endpoint=f"http://127.0.0.1:{server.port}",
            azure_deployment="gpt4o-prod",
            api_version="2024-10-21",
            api_key="test-key",
            max_retries=0,
        )
        reply = model.invoke("hello", config={"callbacks": [handler]})
    assert reply.response_metadata["model_provider"] == "openai"
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == _events("azure/gpt-4o-2024-08-06")
