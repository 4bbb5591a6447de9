"""Caller overhead: what billing costs the thread that made the LLM call.

1. `TokenMeter.record()` alone, per call (perf_counter_ns around each call), worker running,
   in both forms: `record(Usage)` and `record(counts="openai", **fields)` (what adapters use).
2. One LLM call through each framework with its fake model: no handler, a no-op handler
   (the framework's own dispatch cost: the floor), and the Stripe adapter. Reported as
   microseconds added over no handler, and as a ratio.

All meters are ledger meters (no key, temp outbox): delivery is not what is measured here.
Adapters that are not importable yet are skipped with a message.

    uv run python benchmarks/caller_overhead.py [--quick] [--runs N]
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

RECORD_TARGET = c.Target("<=", 2.0)


@dataclass
class Settings:
    rounds: int = 4
    """Blocks per condition per run (conditions alternate block by block)."""
    litellm_settle: float = 0.3
    """Seconds LiteLLM's callback threads get to finish before the meter is flushed."""


SETTINGS = Settings()
ADAPTER_TARGET = c.Target("<=", 15.0)
CUSTOMER = "cus_benchcaller"


def ledger_meter(tmp: Path, name: str) -> Any:
    from stripe_token_meter import TokenMeter

    return TokenMeter(outbox_path=tmp / f"{name}.sqlite3", default_customer_id=CUSTOMER)


def null_meter(tmp: Path, name: str) -> Any:
    """A TokenMeter whose record() and record_later() only count: the adapter's own code,
    without the meter's worker thread (which competes with the caller for the GIL while it
    reads and stores records)."""
    from stripe_token_meter import TokenMeter

    class NullMeter(TokenMeter):
        null_records = 0

        def record(self, *args: Any, **kwargs: Any) -> None:
            self.null_records += 1

        def record_later(self, *args: Any) -> None:
            self.null_records += 1

    return NullMeter(outbox_path=tmp / f"{name}-null.sqlite3", default_customer_id=CUSTOMER)


# ---------------------------------------------------------------------------- record()


def bench_record(report: c.Report, tmp: Path, runs: int, calls: int, burst: int) -> None:
    """Per-call cost of both record() forms, interleaved in each run."""
    from stripe_token_meter import Usage

    meter = ledger_meter(tmp, "record")
    pc = time.perf_counter_ns
    medians: dict[str, list[float]] = {"usage": [], "openai": []}
    p99: dict[str, list[float]] = {"usage": [], "openai": []}
    meter.record(Usage(model="gpt-4o", input_tokens=1, request_id="warm"))  # starts the worker
    meter.flush()
    for run in range(runs):
        for form in ("usage", "openai") if run % 2 == 0 else ("openai", "usage"):
            samples: list[int] = []
            for b in range(calls // burst):
                rids = [c.request_id(f"{form}-{run}-{b}", i) for i in range(burst)]
                if form == "usage":
                    usages = [
                        Usage(
                            model="gpt-4o-2024-08-06",
                            provider="openai",
                            customer_id=CUSTOMER,
                            input_tokens=100,
                            output_tokens=20,
                            request_id=rid,
                        )
                        for rid in rids
                    ]
                    for u in usages:
                        t0 = pc()
                        meter.record(u)
                        t1 = pc()
                        samples.append(t1 - t0)
                else:
                    for rid in rids:
                        t0 = pc()
                        meter.record(
                            counts="openai",
                            model="gpt-4o-2024-08-06",
                            provider="openai",
                            prompt_tokens=100,
                            completion_tokens=20,
                            cached_tokens=30,
                            cache_write_tokens=0,
                            reasoning_tokens=5,
                            customer_id=None,
                            request_id=rid,
                            fallback_customer_id=CUSTOMER,
                        )
                        t1 = pc()
                        samples.append(t1 - t0)
                # the worker drains between bursts, as it would between real LLM calls
                meter.flush(timeout=30)
            medians[form].append(statistics.median(samples) / 1000)
            p99[form].append(c.percentile(samples, 99) / 1000)
    stats = meter.stats()
    meter.close()
    report.add(
        c.Result("record(Usage) per call", c.summarize(medians["usage"]), "us", RECORD_TARGET)
    )
    report.add(
        c.Result(
            'record(counts="openai", **fields) per call',
            c.summarize(medians["openai"]),
            "us",
            RECORD_TARGET,
        )
    )
    report.add(c.Result("record(Usage) p99", c.summarize(p99["usage"]), "us"))
    report.add(c.Result('record(counts="openai") p99', c.summarize(p99["openai"]), "us"))
    expected = 1 + runs * 2 * (calls // burst) * burst  # the warm-up record has one event
    report.check(
        "every record() reached the ledger",
        stats["recorded"] == expected and stats["local"] == expected * 2 - 1,
        f"recorded={stats['recorded']} local events={stats['local']} expected {expected} records",
    )


# ---------------------------------------------------------------------------- adapters


@dataclass
class Condition:
    """One way of making the LLM call: no handler, a no-op handler, or the adapter."""

    name: str
    attach: Callable[[], None]
    detach: Callable[[], None]


def compare(
    call: Callable[[], Any],
    conditions: list[Condition],
    runs: int,
    calls: int,
    settle: Callable[[], None],
    scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
    rounds: int | None = None,
) -> dict[str, list[float]]:
    """Median per-call microseconds per condition per run.

    Each run alternates the conditions in `rounds` blocks (rotating which goes first), so
    slow drift of the machine affects every condition alike.
    """
    pc = time.perf_counter_ns
    rounds = rounds or SETTINGS.rounds
    out: dict[str, list[float]] = {cond.name: [] for cond in conditions}
    order = itertools.cycle(range(len(conditions)))
    block = max(1, calls // rounds)
    warm = max(3, block // 20)
    for _ in range(runs):
        samples: dict[str, list[int]] = {cond.name: [] for cond in conditions}
        for _ in range(rounds):
            start = next(order)
            for k in range(len(conditions)):
                cond = conditions[(start + k) % len(conditions)]
                cond.attach()
                try:
                    with scope():
                        for _ in range(warm):  # warm-up after (re)attaching
                            call()
                        settle()
                        gc.collect()
                        got = [0] * block
                        for i in range(block):
                            t0 = pc()
                            call()
                            got[i] = pc() - t0
                    # before detaching: LiteLLM reads its callback list when the (off-thread)
                    # success handler runs, so detaching first would drop the last records
                    settle()
                finally:
                    cond.detach()
                samples[cond.name].extend(got)
        for name, got in samples.items():
            out[name].append(statistics.median(got) / 1000)
    return out


def calls_made(runs: int, calls: int) -> int:
    """How many calls `compare` makes per condition (for the one-record-per-call checks)."""
    rounds = SETTINGS.rounds
    block = max(1, calls // rounds)
    return runs * rounds * (block + max(3, block // 20))


def report_adapter(
    report: c.Report, label: str, times: dict[str, list[float]], floor_name: str
) -> None:
    none, noop, stripe = times["none"], times["noop"], times["stripe"]
    report.add(c.Result(f"{label}: LLM call, no handler", c.summarize(none), "us", digits=1))
    floor = [b - a for a, b in zip(none, noop, strict=True)]
    added = [b - a for a, b in zip(none, stripe, strict=True)]
    own = [b - a for a, b in zip(noop, stripe, strict=True)]
    ratio = [b / a for a, b in zip(none, stripe, strict=True)]
    report.add(c.Result(f"{label}: floor ({floor_name}) added", c.summarize(floor), "us", digits=1))
    report.add(
        c.Result(
            f"{label}: Stripe adapter added", c.summarize(added), "us", ADAPTER_TARGET, digits=1
        )
    )
    report.add(c.Result(f"{label}: adapter over the floor", c.summarize(own), "us", digits=1))
    if "stripe_null" in times:
        code = [b - a for a, b in zip(noop, times["stripe_null"], strict=True)]
        worker = [b - a for a, b in zip(times["stripe_null"], stripe, strict=True)]
        report.add(
            c.Result(
                f"{label}: of which the adapter's own code (record() stubbed)",
                c.summarize(code),
                "us",
                digits=1,
            )
        )
        report.add(
            c.Result(
                f"{label}: of which record() + the meter's worker thread",
                c.summarize(worker),
                "us",
                digits=1,
                note="GIL contention while the worker stores records",
            )
        )
    report.add(
        c.Result(f"{label}: ratio with adapter / without", c.summarize(ratio), "x", digits=3)
    )


def skip(report: c.Report, label: str, exc: BaseException) -> None:
    msg = f"{label}: SKIPPED, adapter not importable yet ({type(exc).__name__}: {exc})"
    print(f"  {msg}", flush=True)
    report.checks.append((f"{label} adapter present", True, "skipped: " + str(exc)[:80]))


def check_one_record_per_call(report: c.Report, framework: str, meter: Any, expected: int) -> None:
    """Close the meter; every LLM call must have become exactly one valid record with usage."""
    stats = meter.stats()
    meter.close()
    report.check(
        f"{framework}: one record per LLM call",
        stats["recorded"] == expected and stats["invalid"] == 0 and stats["no_usage"] == 0,
        f"recorded={stats['recorded']} expected={expected} invalid={stats['invalid']} "
        f"no_usage={stats['no_usage']} adapter_errors={stats['adapter_errors']}",
    )


def bench_langchain(report: c.Report, tmp: Path, runs: int, calls: int) -> None:
    try:
        from langchain_stripe import StripeCallbackHandler
    except ImportError as exc:
        skip(report, "LangChain", exc)
        return
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class NoopHandler(BaseCallbackHandler):
        """Attached but does nothing: LangChain's own dispatch cost."""

    class NoopChatHandler(BaseCallbackHandler):
        """Also implements on_chat_model_start, as the adapter does (no on_llm_start fallback)."""

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            return None

    def messages() -> Iterator[AIMessage]:
        while True:  # a fresh message per call, as a provider would return
            yield AIMessage(
                content="ok",
                usage_metadata={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
                response_metadata={"model_name": "gpt-4o-2024-08-06"},
            )

    model = GenericFakeChatModel(messages=messages())
    meter = ledger_meter(tmp, "langchain")
    handler = StripeCallbackHandler(meter, customer_id=CUSTOMER)
    nulled = null_meter(tmp, "langchain")
    handler_null = StripeCallbackHandler(nulled, customer_id=CUSTOMER)
    noop = NoopHandler()
    config: dict[str, Any] = {}

    def use(callbacks: list[Any]) -> Callable[[], None]:
        def attach() -> None:
            config.clear()
            if callbacks:
                config["callbacks"] = callbacks

        return attach

    # The floor handler implements on_chat_model_start as the adapter does: a plain
    # BaseCallbackHandler also pays LangChain's fallback to on_llm_start, which the adapter
    # never pays, so measuring over it would flatter the adapter by ~6 us.
    conditions = [
        Condition("none", use([]), config.clear),
        Condition("noop", use([NoopChatHandler()]), config.clear),
        Condition("noop_plain", use([noop]), config.clear),
        Condition("stripe", use([handler]), config.clear),
        Condition("stripe_null", use([handler_null]), config.clear),
    ]
    times = compare(
        lambda: model.invoke("hi", config=config),  # type: ignore[arg-type]
        conditions,
        runs,
        calls,
        lambda: meter.flush(timeout=30),
    )
    report_adapter(report, "LangChain invoke", times, "no-op handler with on_chat_model_start")
    alt = [b - a for a, b in zip(times["none"], times["noop_plain"], strict=True)]
    report.add(
        c.Result(
            "LangChain invoke: a plain no-op BaseCallbackHandler added",
            c.summarize(alt),
            "us",
            digits=1,
            note="pays LangChain's NotImplementedError fallback to on_llm_start",
        )
    )
    check_one_record_per_call(report, "LangChain", meter, calls_made(runs, calls))


def bench_litellm(report: c.Report, tmp: Path, runs: int, calls: int) -> None:
    try:
        from litellm_stripe import StripeLogger
    except ImportError as exc:
        skip(report, "LiteLLM", exc)
        return
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    class NoopLogger(CustomLogger):
        """A CustomLogger whose hooks are LiteLLM's own no-ops: LiteLLM's dispatch cost."""

    meter = ledger_meter(tmp, "litellm")
    logger = StripeLogger(meter)
    logger_null = StripeLogger(null_meter(tmp, "litellm"))
    noop = NoopLogger()
    messages = [{"role": "user", "content": "hi"}]
    reset: Callable[[], None] = litellm.logging_callback_manager._reset_all_callbacks

    def use(callbacks: list[Any]) -> Callable[[], None]:
        def attach() -> None:
            reset()
            litellm.callbacks = list(callbacks)

        return attach

    def detach() -> None:
        reset()

    def settle() -> None:
        # LiteLLM runs success callbacks on its own threads; let them finish, then drain.
        time.sleep(SETTINGS.litellm_settle)
        meter.flush(timeout=30)

    def call() -> Any:
        # mock_response as a string: a fresh ModelResponse (fresh id) with usage per call
        return litellm.completion(
            model="openai/gpt-4o",
            messages=messages,
            mock_response="ok",
            metadata={"stripe_customer_id": CUSTOMER},
        )

    class TimedLogger(StripeLogger):  # type: ignore[misc]
        """The adapter's hooks timed where LiteLLM runs them (caller or its own threads), in
        thread CPU time (waiting for the GIL excluded; each reading costs ~1 us here), summed
        per LLM call; the median leaves out calls where a garbage collection of LiteLLM's
        large heap happened to run inside a hook. LiteLLM's own jitter (hundreds of us per
        call) hides a difference of a few us in caller time."""

        spent: ClassVar[dict[str, int]] = {}
        captured: ClassVar[list[Any]] = []

        def _add(self, kwargs: Any, ns: int) -> None:
            key = str(kwargs.get("litellm_call_id")) if isinstance(kwargs, dict) else "?"
            self.spent[key] = self.spent.get(key, 0) + ns

        def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
            t = time.thread_time_ns()
            super().log_pre_api_call(model, messages, kwargs)
            self._add(kwargs, time.thread_time_ns() - t)

        def _on_success(self, kwargs: Any, response_obj: Any, end_time: Any) -> None:
            # Where every success lands (LiteLLM's thread path or its logger hooks).
            t = time.thread_time_ns()
            super()._on_success(kwargs, response_obj, end_time)
            self._add(kwargs, time.thread_time_ns() - t)
            if not self.captured:
                self.captured.append((kwargs, response_obj, end_time))

    timed = TimedLogger(null_meter(tmp, "litellm-timed"))
    conditions = [
        Condition("none", use([]), detach),
        Condition("noop", use([noop]), detach),
        Condition("stripe", use([logger]), detach),
        Condition("stripe_null", use([logger_null]), detach),
        Condition("timed", use([timed]), detach),
    ]
    times = compare(call, conditions, runs, calls, settle)
    report_adapter(report, "LiteLLM completion (caller time)", times, "no-op CustomLogger")
    per_call = [ns / 1000 for ns in TimedLogger.spent.values()]
    report.add(
        c.Result(
            "LiteLLM: the adapter's own hooks, CPU time in place (record() stubbed)",
            c.summarize(per_call),
            "us",
            ADAPTER_TARGET,
            digits=1,
            note=f"per LLM call (median and spread over {len(per_call):,} calls): pre-call hook "
            "on the caller, success hooks (thread path and logger: both fire, one records) on "
            "LiteLLM's thread",
        )
    )
    warm_litellm(report, tmp, StripeLogger, TimedLogger.captured)
    settle()
    check_one_record_per_call(report, "LiteLLM", meter, calls_made(runs, calls))


def warm_litellm(report: c.Report, tmp: Path, logger_cls: Any, captured: list[Any]) -> None:
    """The same hooks called back to back on one real call's arguments (caches warm, no
    LiteLLM in between): the adapter's code alone. A fresh logger per call, so each first
    success records and the second is the duplicate it is in LiteLLM."""
    if not captured:
        return
    kwargs, response, end = captured[0]
    meter = null_meter(tmp, "litellm-warm")
    n = 2_000
    per_run: list[float] = []
    for _ in range(5):
        # thread_fallback=False: no thread path registered in LiteLLM's global lists
        loggers = [logger_cls(meter, thread_fallback=False) for _ in range(n)]
        t0 = time.perf_counter_ns()
        for lg in loggers:
            lg.log_pre_api_call(kwargs.get("model"), [], kwargs)
            lg._on_success(kwargs, response, end)
            lg._on_success(kwargs, response, end)
        per_run.append((time.perf_counter_ns() - t0) / n / 1000)
    report.add(
        c.Result(
            "LiteLLM: the adapter's own hooks, warm (record() stubbed)",
            c.summarize(per_run),
            "us",
            ADAPTER_TARGET,
            digits=1,
            note="one real call's arguments, hooks back to back: pre-call + two successes",
        )
    )


def bench_llamaindex(report: c.Report, tmp: Path, runs: int, calls: int) -> None:
    try:
        from llamaindex_stripe import instrument, uninstrument
    except ImportError as exc:
        skip(report, "LlamaIndex", exc)
        return
    from llama_index.core.base.llms.types import ChatMessage, CompletionResponse
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.span import SimpleSpan
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
    from llama_index.core.llms import MockLLM
    from llama_index.core.llms.callbacks import llm_completion_callback

    class UsageMockLLM(MockLLM):
        """MockLLM whose answer carries OpenAI-shaped usage in `raw`, as a provider's does."""

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            return CompletionResponse(
                text="ok",
                raw={
                    "model": "gpt-4o-2024-08-06",
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                },
            )

    class NoopEventHandler(BaseEventHandler):
        """Attached but does nothing: LlamaIndex's own dispatch cost."""

        @classmethod
        def class_name(cls) -> str:
            return "NoopEventHandler"

        def handle(self, event: Any, **kwargs: Any) -> None:
            return None

    class NoopSpanHandler(BaseSpanHandler[SimpleSpan]):
        """Opens and closes spans, keeps nothing: the span-handler half of the floor."""

        @classmethod
        def class_name(cls) -> str:
            return "NoopSpanHandler"

        def new_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
            return None

        def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> Any:
            return None

        def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> Any:
            return None

    dispatcher = get_dispatcher()
    llm = UsageMockLLM(max_tokens=None)
    meter = ledger_meter(tmp, "llamaindex")
    noop_event = NoopEventHandler()
    noop_span = NoopSpanHandler()
    state: dict[str, Any] = {}

    def attach_noop() -> None:
        dispatcher.add_event_handler(noop_event)
        dispatcher.add_span_handler(noop_span)

    def detach_noop() -> None:
        dispatcher.event_handlers.remove(noop_event)
        dispatcher.span_handlers.remove(noop_span)

    def attach_stripe() -> None:
        state["handler"] = instrument(meter)

    def detach_stripe() -> None:
        uninstrument(state.pop("handler"))

    nulled = null_meter(tmp, "llamaindex")

    def attach_null() -> None:
        state["handler"] = instrument(nulled)

    conditions = [
        Condition("none", lambda: None, lambda: None),
        Condition("noop", attach_noop, detach_noop),
        Condition("stripe", attach_stripe, detach_stripe),
        Condition("stripe_null", attach_null, detach_stripe),
    ]
    msgs = [ChatMessage(role="user", content="hi")]
    # Two shapes: `complete` is one LLM call (one span, one Start/End pair), as every
    # provider LLM's `chat` and `complete` are (OpenAI's, for one); `chat` on a CustomLLM
    # runs `complete` inside it: two nested LLM calls, billed once (so is Anthropic's
    # `complete`, which runs `chat`).
    shapes: list[tuple[str, Callable[[], Any]]] = [
        ("LlamaIndex MockLLM.complete (1 LLM call)", lambda: llm.complete("hi")),
        (
            "LlamaIndex MockLLM.chat (2 nested LLM calls)",
            lambda: llm.chat(msgs),
        ),
    ]
    for label, call in shapes:
        times = compare(
            call,
            conditions,
            runs,
            calls,
            lambda: meter.flush(timeout=30),
            scope=lambda: meter.customer(CUSTOMER),
        )
        report_adapter(report, label, times, "no-op event + span handler")
    check_one_record_per_call(report, "LlamaIndex", meter, len(shapes) * calls_made(runs, calls))


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--only", choices=["record", "langchain", "litellm", "llamaindex"], action="append"
    )
    args = p.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 7)
    if quick:
        SETTINGS.rounds, SETTINGS.litellm_settle = 1, 0.05
    only = set(args.only or ["record", "langchain", "litellm", "llamaindex"])
    c.header("caller overhead", quick)
    print(
        f"  timer overhead (empty perf_counter_ns pair): {c.timer_overhead_ns():.0f} ns", flush=True
    )
    report = c.Report("Caller overhead")
    with tempfile.TemporaryDirectory(prefix="stm-bench-") as d:
        tmp = Path(d)
        if "record" in only:
            bench_record(report, tmp, runs, calls=2_000 if quick else 50_000, burst=1_000)
        if "langchain" in only:
            c.wait_quiet(quick=quick)
            bench_langchain(report, tmp, runs, calls=100 if quick else 2_000)
        if "litellm" in only:
            c.wait_quiet(quick=quick)
            bench_litellm(report, tmp, runs, calls=40 if quick else 2_000)
        if "llamaindex" in only:
            c.wait_quiet(quick=quick)
            bench_llamaindex(report, tmp, runs, calls=100 if quick else 2_000)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
