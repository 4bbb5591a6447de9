"""Spans and events that cross threads, as real LlamaIndex produces them.

The handler keeps one span tree behind a lock. A per-thread tracker without a lock would
be wrong here, and these tests pin down why:

* `llama_index.core.async_utils.asyncio_run`, called while an event loop runs, runs the
  coroutine on a worker thread with a copy of the caller's context: the LLM spans it
  opens there have the calling thread's span as parent (an LLM call inside an LLM call
  whose outer span lives on another thread).
* A stream's span enters and exits on the thread that asked for it; its chunks and End
  event arrive on whichever thread consumes it.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llama_index.core.async_utils import asyncio_run
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.llms import ChatMessage, CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llamaindex_stripe import instrument
from pydantic import PrivateAttr
from support.events import event_tuples

CUS = "cus_threads"
MSGS = [ChatMessage(role="user", content="hi there")]


class ThreadHopLLM(CustomLLM):
    """An LLM whose `complete` runs its inner LLM's `acomplete` through `asyncio_run`.

    Called inside a running event loop, that runs the inner call on a worker thread.
    `own_usage`: whether its own response reports usage (else it is a wrapper)."""

    inner: Any = None
    own_usage: bool = False

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="router-1")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        inner = asyncio_run(self.inner.acomplete(prompt))
        raw = None
        if self.own_usage:
            raw = {
                "model": "gpt-4o-2024-08-06",
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            }
        return CompletionResponse(text=inner.text, raw=raw)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class ThreadRecorder(BaseSpanHandler[SimpleSpan]):
    """Notes the thread each span enters and exits on (real dispatcher, nothing mocked)."""

    _entered: dict[str, tuple[str | None, int]] = PrivateAttr(default_factory=dict)
    _exited: dict[str, int] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "ThreadRecorder"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._entered[id_] = (parent_id, threading.get_ident())

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        self._exited[id_] = threading.get_ident()

    def new_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None


def _recorder() -> ThreadRecorder:
    recorder = ThreadRecorder()
    get_dispatcher().add_span_handler(recorder)
    return recorder


def _remove(recorder: ThreadRecorder) -> None:
    d = get_dispatcher()
    d.span_handlers = [h for h in d.span_handlers if h is not recorder]


def _run_in_loop(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return fn()

    return asyncio.run(main())


def test_inner_llm_span_on_another_thread_has_the_outer_span_as_parent(usage_llm: Any) -> None:
    """The concurrency fact the single shared tracker relies on."""
    recorder = _recorder()
    try:
        llm = ThreadHopLLM(inner=usage_llm())
        _run_in_loop(lambda: llm.complete("hi"))
        entered = recorder._entered
        outer = next(i for i in entered if i.startswith("ThreadHopLLM.complete-"))
        inner = next(i for i in entered if i.startswith("UsageLLM.acomplete-"))
        assert entered[inner][0] == outer
        assert entered[inner][1] != entered[outer][1]  # entered on another thread
    finally:
        _remove(recorder)


def test_wrapper_bills_inner_call_made_on_another_thread_once(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    llm = ThreadHopLLM(inner=usage_llm(prompt_tokens=10, completion_tokens=3))
    with meter.customer("cus_scoped"):
        _run_in_loop(lambda: llm.complete("hi"))
    assert meter.flush(5)
    assert event_tuples(fake_stripe) == [
        ("cus_scoped", "openai/gpt-4o", "input", 10),
        ("cus_scoped", "openai/gpt-4o", "output", 3),
    ]
    assert all(i.startswith("ThreadHopLLM.complete-") for i in fake_stripe.identifiers())
    gc.collect()
    assert handler.tracked_spans == 0


def test_outer_usage_wins_over_inner_call_on_another_thread(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    """Never both: the outer call's own usage is billed, the inner one's is not."""
    meter = make_meter(default_customer_id=CUS)
    instrument(meter)
    llm = ThreadHopLLM(inner=usage_llm(prompt_tokens=10, completion_tokens=3), own_usage=True)
    _run_in_loop(lambda: llm.chat(MSGS))
    assert meter.flush(5)
    billed = [(c, kind, n) for c, _model, kind, n in event_tuples(fake_stripe)]
    assert billed == [(CUS, "input", 7), (CUS, "output", 5)]
    assert len(fake_stripe.identifiers()) == 2
    assert meter.stats()["adapter_errors"] == 0


def test_stream_opened_on_one_thread_consumed_on_another(
    make_meter: Callable[..., Any], fake_stripe: Any, usage_llm: Any
) -> None:
    meter = make_meter(default_customer_id=CUS)
    handler = instrument(meter)
    recorder = _recorder()
    try:
        llm = usage_llm(prompt_tokens=4, completion_tokens=2, answers=["a b c d"])
        with ThreadPoolExecutor(1) as opener, ThreadPoolExecutor(1) as consumer:
            streams = [opener.submit(llm.stream_chat, MSGS).result() for _ in range(5)]
            chunks = [consumer.submit(lambda s=s: len(list(s))).result() for s in streams]
            consumer_thread = consumer.submit(threading.get_ident).result()
        assert chunks == [4] * 5
        spans = [i for i in recorder._entered if i.startswith("UsageLLM.stream_chat-")]
        assert len(spans) == 5
        # entered and exited on the opening thread; chunks and End came on the consumer's
        assert all(recorder._exited[i] == recorder._entered[i][1] != consumer_thread for i in spans)
        assert meter.flush(5)
        assert event_tuples(fake_stripe) == sorted(
            [(CUS, "openai/gpt-4o", "input", 4), (CUS, "openai/gpt-4o", "output", 2)] * 5
        )
        assert sorted({i.split(":")[0] for i in fake_stripe.identifiers()}) == sorted(spans)
        del streams
        gc.collect()
        assert handler.tracked_spans == 0
    finally:
        _remove(recorder)
