"""The LlamaIndex billing state machine, driven directly: no llama_index imports here.

`Tracker` is fed what the handlers would pass it (span ids, parents, tags, responses) and
reads responses through a small `Reading` over dicts, so each rule of the module doc is
checked on its own: one record per outermost call, nested usage only when the outer
call reports none, streams billed once (ended, abandoned, collected, evicted), and the
one path that finishes a call. Records go to a real meter and FakeStripe.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llamaindex_stripe._billing import Call, Tracker
from llamaindex_stripe._streams import merge
from stripe_token_meter import TokenMeter
from stripe_token_meter.adapter_kit import AdapterOptions
from stripe_token_meter.provider_usage import UsageReport, read_usage

CUS, TAGGED, SCOPED = "cus_default", "cus_tagged", "cus_scoped"
MD = {"model_name": "gpt-4o", "class_name": "Model"}


class Model:
    """Stands in for an LLM instance: the tracker only asks the reading about it."""


LLM = Model()


class DictReading:
    """A `Reading` of dict responses: `{"usage": {...openai shape...}, "model": ...}`."""

    def is_llm(self, instance: object) -> bool:
        return isinstance(instance, Model)

    def usage(self, response: object) -> UsageReport | None:
        return read_usage(response.get("usage")) if isinstance(response, dict) else None

    def model(self, response: object) -> str | None:
        return response.get("model") if isinstance(response, dict) else None

    def name(self, call: Call, answered: str | None) -> tuple[str, str | None]:
        return answered or call.model_name or "unknown", "openai"

    def missing(self, call: Call, abandoned: bool) -> tuple[str, str]:
        return f"test {call.class_name}", "consume streams" if abandoned else "report usage"


def resp(prompt: int, completion: int, model: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    if model:
        out["model"] = model
    return out


def billed(fake: Any) -> list[tuple[str, str, str, str, int]]:
    """(request id, customer, model, token type, value) of every event FakeStripe took."""
    return sorted(
        (
            e.identifier.split(":")[0],
            e.customer,
            e.payload["model"],
            e.payload["token_type"],
            e.value,
        )
        for e in fake.events()
    )


def one(rid: str, prompt: int, completion: int, customer: str = CUS) -> list[Any]:
    return [
        (rid, customer, "openai/gpt-4o", "input", prompt),
        (rid, customer, "openai/gpt-4o", "output", completion),
    ]


@pytest.fixture
def meter(make_meter: Callable[..., TokenMeter]) -> TokenMeter:
    return make_meter(default_customer_id=CUS)


@pytest.fixture
def tracker(meter: TokenMeter) -> Tracker:
    return Tracker(meter, DictReading())


def llm_call(
    t: Tracker,
    span: str,
    parent: str | None,
    response: Any,
    tags: dict[str, Any] | None = None,
    inner: Callable[[], None] | None = None,
) -> None:
    """One spanned LLM call as LlamaIndex reports it, running `inner` inside."""
    t.enter(span, parent, LLM)
    t.start(span, tags, MD)
    if inner is not None:
        inner()
    t.end(span, tags, response)
    t.exit(span, response)


def stream(t: Tracker, span: str, gen: Iterator[Any], parent: str | None = None) -> None:
    """An LLM stream's span: Start, then the method returns the generator."""
    t.enter(span, parent, LLM)
    t.start(span, None, MD)
    t.exit(span, gen)


def chunks() -> Iterator[str]:
    yield "chunk"


def test_outermost_call_bills_the_inner_usage_once(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    llm_call(tracker, "out", None, {}, inner=lambda: llm_call(tracker, "in", "out", resp(10, 2)))
    llm_call(
        tracker, "both", None, resp(7, 3), inner=lambda: llm_call(tracker, "x", "both", resp(1, 1))
    )
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("out", 10, 2) + one("both", 7, 3))
    assert tracker.tracked() == 0


def test_same_span_nested_call_reports_to_the_outer(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    tracker.enter("s", None, LLM)
    tracker.start("s", None, MD)
    tracker.start("s", None, MD)  # e.g. chat() running complete() with no span of its own
    tracker.end("s", None, resp(4, 1))
    tracker.end("s", None, {})
    tracker.exit("s", None)
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("s", 4, 1))
    assert tracker.tracked() == 0


def test_stream_is_billed_once_with_the_latest_chunk_usage(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    gen = chunks()
    stream(tracker, "st", gen)
    assert tracker.tracked() == 1 and list(tracker.streams) == ["st"]
    tracker.progress("st", {"text": "a"})
    tracker.progress("st", resp(5, 1))
    tracker.progress("st", resp(5, 4))  # running totals: the latest wins
    tracker.end("st", None, {})
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("st", 5, 4))
    assert tracker.tracked() == 0 and not tracker.streams


def test_anthropic_chunks_merge() -> None:
    first: UsageReport = ("anthropic", {"input_tokens": 50})
    last: UsageReport = ("anthropic", {"output_tokens": 7})
    assert merge(first, last) == ("anthropic", {"input_tokens": 50, "output_tokens": 7})
    assert merge(("openai", {"prompt_tokens": 1}), ("openai", {"prompt_tokens": 2})) == (
        "openai",
        {"prompt_tokens": 2},
    )


def test_abandoned_stream_bills_what_its_chunks_reported(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    gen_a, gen_b = chunks(), chunks()
    stream(tracker, "a", gen_a)
    tracker.progress("a", resp(6, 2))
    tracker.exception("a")  # consumer stopped early
    stream(tracker, "b", gen_b)
    tracker.exception("b")  # no chunk at all: nothing to bill, nothing to warn about
    tracker.exception("a")  # a second exception for a finished stream changes nothing
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("a", 6, 2))
    assert meter.stats()["no_usage"] == 0
    assert tracker.tracked() == 0


def test_collected_stream_is_finished_at_the_next_entry(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    gen = chunks()
    stream(tracker, "g", gen)
    tracker.progress("g", resp(3, 3))
    del gen
    gc.collect()
    assert list(tracker.dead) == ["g"] and tracker.tracked() == 1
    llm_call(tracker, "next", None, resp(1, 1))
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("g", 3, 3) + one("next", 1, 1))
    assert tracker.tracked() == 0 and not tracker.dead


def test_failed_call_bills_the_nested_calls_that_ended(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    tracker.enter("f", None, LLM)
    tracker.start("f", None, MD)
    llm_call(tracker, "ok", "f", resp(8, 2))
    tracker.drop("f")  # raised before its End event
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("f", 8, 2))
    assert meter.stats()["no_usage"] == 0
    assert tracker.tracked() == 0


def test_end_of_an_unknown_span_is_billed_as_it_stands(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    tracker.end("lost", {"stripe_customer_id": TAGGED}, resp(2, 1, model="gpt-4o"))
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("lost", 2, 1, TAGGED))
    assert tracker.tracked() == 0


def test_customer_precedence_and_dimensions(
    make_meter: Callable[..., TokenMeter], fake_stripe: Any
) -> None:
    meter = make_meter()
    options = AdapterOptions.check(customer_id="cus_handler", dimensions={"team": "a"})
    t = Tracker(meter, DictReading(), options)
    tags = {"stripe_customer_id": TAGGED, "stripe_dimensions": {"feature": "x"}}
    with meter.customer(SCOPED):
        llm_call(t, "tagged", None, resp(1, 1), tags=tags)
        llm_call(t, "scoped", None, resp(2, 1))
    llm_call(t, "handler", None, resp(3, 1))
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(
        one("tagged", 1, 1, TAGGED)
        + one("scoped", 2, 1, SCOPED)
        + one("handler", 3, 1, "cus_handler")
    )
    dims = {e.identifier.split(":")[0]: e.payload.get("feature") for e in fake_stripe.events()}
    assert dims == {"tagged": "x", "scoped": None, "handler": None}
    assert {e.payload.get("team") for e in fake_stripe.events()} == {"a"}


def test_non_mapping_call_dimensions_are_dead_lettered_not_dropped(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    llm_call(tracker, "bad", None, resp(1, 1), tags={"stripe_dimensions": "feature=x"})
    llm_call(tracker, "good", None, resp(2, 1), tags={"stripe_dimensions": {}})
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("good", 2, 1))
    assert meter.stats()["invalid"] == 1


def test_call_without_usage_is_reported_not_billed(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    llm_call(tracker, "none", None, {"text": "no usage"})
    assert meter.flush(5)
    assert billed(fake_stripe) == []
    assert meter.stats()["no_usage"] == 1


def test_outermost_is_what_the_guard_asks_about(tracker: Tracker) -> None:
    assert tracker.outermost("out") is None
    tracker.enter("out", None, LLM)
    assert tracker.outermost("out") is None  # no Start yet
    tracker.start("out", {"stripe_customer_id": TAGGED}, MD)
    outer = tracker.outermost("out")
    assert outer is not None and outer.tags["stripe_customer_id"] == TAGGED
    assert outer.model_name == "gpt-4o" and outer.class_name == "Model"
    tracker.enter("in", "out", LLM)
    tracker.start("in", None, MD)
    assert tracker.outermost("in") is None  # its outer call was asked
    assert tracker.outermost(None) is None


def test_spans_are_bounded_and_evicted_streams_billed(
    make_meter: Callable[..., TokenMeter], fake_stripe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    meter = make_meter(default_customer_id=CUS)
    t = Tracker(meter, DictReading(), AdapterOptions.check(max_tracked=10))
    gens = [chunks() for _ in range(15)]
    with caplog.at_level(logging.WARNING, logger="llamaindex_stripe"):
        for i, gen in enumerate(gens):
            stream(t, f"s{i}", gen)
            t.progress(f"s{i}", resp(1, 1))
            assert t.tracked() <= 10
    assert caplog.text.count("spans open") == 1
    evicted = 15 - t.tracked()
    assert evicted == 5  # the kit's rule: past the bound, the oldest goes
    for i in range(15):
        t.end(f"s{i}", None, {})  # the evicted ones are gone: billed as unknown, no usage
    assert meter.flush(5)
    rids = sorted({r[0] for r in billed(fake_stripe)})
    assert rids == sorted(f"s{i}" for i in range(15))
    assert meter.stats()["no_usage"] == 5
    assert t.tracked() == 0


def test_call_made_inside_a_running_stream_nests_in_it(
    tracker: Tracker, meter: TokenMeter, fake_stripe: Any
) -> None:
    """An async stream's generator runs another LLM call while iterated; that call's
    parent span is the consumer's, yet it belongs to the stream (found by its frame)."""

    def body() -> Iterator[str]:
        llm_call(tracker, "inner", "consumer", resp(3, 1))
        yield "chunk"

    gen = body()
    tracker.enter("consumer", None, None)  # a query engine's span: not an LLM call
    stream(tracker, "s", gen, parent="consumer")
    assert list(gen) == ["chunk"]
    tracker.end("s", None, {})  # the stream reports no usage of its own
    tracker.exit("consumer", None)
    assert meter.flush(5)
    assert billed(fake_stripe) == sorted(one("s", 3, 1))
    assert tracker.tracked() == 0


@pytest.mark.parametrize("module", ["_billing", "_streams"])
def test_state_machine_imports_no_llama_index(module: str) -> None:
    """It stays testable without the framework: only the handlers and readings import it."""
    import ast
    from pathlib import Path

    import llamaindex_stripe

    source = Path(llamaindex_stripe.__file__).with_name(f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
    assert imported and not any(name.split(".")[0] == "llama_index" for name in imported)
