"""`StripeCallbackHandler`: one `meter.record()` per LangChain LLM run, keyed by its run_id.

Start handlers note who pays and which model was asked for; end handlers hand the run's
usage to the meter. Both are a few dictionary look-ups: reading the usage, validation,
model normalisation and delivery happen on the meter's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from stripe_token_meter import CreditExhausted, TokenMeter, current_customer
from stripe_token_meter.adapter_kit import (
    CUSTOMER_KEY,
    DIMENSIONS_KEY,
    AdapterKit,
    AdapterOptions,
    InFlight,
    KitOptionsMixin,
    call_customer,
    merge_dimensions,
)

from ._usage import (
    CACHE_HIT,
    Found,
    billing_provider,
    extract_error_usage,
    extract_usage,
    from_usage_metadata,
    later_batch_member,
    model_in,
    noted_provider,
    only_message,
    provider_in,
    replayed,
    response_model,
    response_provider,
)

CustomerResolver = Callable[[Mapping[str, Any]], "str | None"]
"""Maps a run's LangChain metadata (e.g. your own `user_id`) to a Stripe customer id."""

__all__ = ["CUSTOMER_KEY", "DIMENSIONS_KEY", "CustomerResolver", "StripeCallbackHandler"]

SOURCE: Final = "langchain-stripe"
MISSING_USAGE_FIX: Final = (
    "pass stream_usage=True to ChatOpenAI (or model_kwargs stream_options include_usage)"
)
MAX_OPEN_RUNS: Final = 100_000
"""Bound on started-but-unfinished runs kept, should a framework never send their end."""

# (customer_id, model, provider, dimensions, batch_size), noted at the LLM run's start.
# provider: (ls_provider, the model's class name, _llm_type) as LangChain reported them,
# judged on the meter's worker (`noted_provider`), or None.
_Run = tuple["str | None", "str | None", "tuple[Any, Any, Any] | None", Any, int]


class StripeCallbackHandler(KitOptionsMixin, BaseCallbackHandler):
    """Bills each LLM run's tokens to a Stripe customer through `meter`.

    Customer, most specific first: `config["metadata"][CUSTOMER_KEY]`, then
    `customer_resolver(metadata)`, then a `meter.customer()` scope active when the LLM
    run started, then this handler's `customer_id`, then the meter's default.
    Extra dimensions: `dimensions` merged with `config["metadata"][DIMENSIONS_KEY]`
    (`stripe_token_meter.adapter_kit` holds the keys and the rules).
    Provider of the `model` dimension: see `_usage.billing_provider` (never a class name).

    With `TokenMeter(guard=...)` the start callback asks `meter.before_call()` for that
    customer and a refused call raises `CreditExhausted` into the caller before the
    provider is called (the handler sets `raise_error`; every other error stays
    contained). The run's hold is released when it ends, fails or is cancelled.
    """

    run_inline = True
    """Async runs call this sync handler on the event loop instead of an executor hop.

    It also keeps `on_llm_start` arriving when another inline handler (LangSmith's
    tracer, LangGraph's stream handlers) is attached: langchain-core's async
    `on_llm_start` then skips every non-inline handler.
    """

    def __init__(
        self,
        meter: TokenMeter,
        customer_id: str | None = None,
        dimensions: Mapping[str, str] | None = None,
        customer_resolver: CustomerResolver | None = None,
    ) -> None:
        super().__init__()
        self.meter = meter
        options = AdapterOptions.check(
            customer_id=customer_id, dimensions=dimensions, max_tracked=MAX_OPEN_RUNS
        )
        self._kit = AdapterKit(meter, options, SOURCE)
        self.customer_resolver = customer_resolver
        # LangChain re-raises handler errors only for raise_error handlers: the meter's
        # strict mode (the kit's strict rule: errors reach the caller) and a guarded meter
        # (`CreditExhausted` must stop the call). Every other error is contained here.
        self._guarded = self._kit.guarded
        self.raise_error = meter.strict or self._guarded
        # A run whose end never comes is forgotten, oldest first (the kit's one rule).
        self._runs: InFlight[UUID, _Run] = InFlight(options.max_tracked)

    # Chains, tools, agents and retrievers never carry tokens: skip their events entirely.
    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_agent(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    @property
    def open_runs(self) -> int:
        """LLM runs started and not yet ended (0 when idle)."""
        return len(self._runs)

    @property
    def open_holds(self) -> int:
        """Guard reservations of runs not yet ended (0 when idle)."""
        return self._kit.open_holds

    # -- start: note the run --------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, serialized, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, serialized, metadata, kwargs)

    def _start(
        self,
        run_id: UUID,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        try:
            meta = metadata or {}
            customer: Any = call_customer(meta)
            resolver = self.customer_resolver
            if customer is None and resolver is not None:
                customer = self._resolve(resolver, meta)
            if not customer:
                # The scope as seen by this run, not by whatever thread ends it.
                customer = current_customer()
            dims = merge_dimensions(self._kit.options, meta.get(DIMENSIONS_KEY))
            params = kwargs.get("invocation_params") or {}
            model = meta.get("ls_model_name") or params.get("model") or params.get("model_name")
            ident = serialized.get("id") if serialized else None
            cls_name = ident[-1] if isinstance(ident, list) and ident else None
            provider = (meta.get("ls_provider"), cls_name, params.get("_type"))
            self._runs.put(run_id, (customer, model, provider, dims, kwargs.get("batch_size") or 1))
            if self._guarded:
                named = noted_provider(*provider) or ""
                self._kit.reserve(run_id, customer, model=model, provider=named)
        except CreditExhausted:
            # raise_error is set: LangChain re-raises it as is, before the provider call.
            self._runs.pop(run_id)
            raise
        except Exception as exc:
            self._kit.failed("on_llm_start", exc)

    def _resolve(self, resolver: CustomerResolver, meta: Mapping[str, Any]) -> Any:
        """The app's resolver; if it fails the run still bills (scope, handler, default)."""
        try:
            return resolver(meta)
        except Exception as exc:
            self._kit.failed("customer_resolver", exc)
            return None

    def _no_run(self) -> _Run:
        """A run whose start was not seen (or was evicted): the handler's defaults."""
        return (None, None, None, merge_dimensions(self._kit.options, None), 1)

    # -- end: one record per run -----------------------------------------------------------

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._kit.release(run_id)
        run = self._runs.pop(run_id) or self._no_run()
        try:
            message = only_message(response)
            usage = getattr(message, "usage_metadata", None)
            if usage:
                # The usual call: one message with usage. Its dicts are read on the meter's
                # worker, not here. Everything is taken now: LangChain's cache later
                # *replaces* this message on the generation (a copy marked as a cache hit)
                # but never edits these dicts, and the app may re-point this handler's
                # customer_id for its next request.
                # Only counts, ids and names go to the meter's journal: never metadata
                # that may carry text (logprobs), so the two names are picked out here.
                meta, llm_output = getattr(message, "response_metadata", None), response.llm_output
                self.meter.record_later(
                    SOURCE,
                    self._read_message,
                    usage,
                    model_in(meta) or model_in(llm_output),
                    provider_in(meta) or provider_in(llm_output),
                    getattr(message, "id", None),
                    str(run_id),
                    run,
                    self.customer_id,
                )
                return
            # A batch, several candidates (n > 1) or a plain LLM: read here.
            # A plain-LLM batch reports one usage for all its prompts, on its first run.
            later = run[4] > 1 and later_batch_member(response)
            found = extract_usage(response, legacy=not later, run_id=run_id)
            if found is CACHE_HIT:
                return  # replayed from LangChain's cache: the provider was not called
            if found is None or isinstance(found, str):
                if not later:
                    model = response_model(response) or run[1]
                    self.meter.report_missing_usage(f"LangChain {model}", MISSING_USAGE_FIX)
                return
            model = response_model(response)
            reported = response_provider(response)
            self.meter.record(**_arguments(found, model, reported, run_id, run, self.customer_id))
        except Exception as exc:
            self._kit.failed("on_llm_end", exc)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        # Also a cancelled run or an abandoned stream (LangChain reports BaseException).
        self._kit.release(run_id)
        run = self._runs.pop(run_id) or self._no_run()
        try:
            # Failed calls are billed only for usage the provider did report (a partial
            # stream's, or one in the error's body): never estimated.
            response = kwargs.get("response")
            found = extract_error_usage(response)
            if found is not None:
                model = reported = None
                if isinstance(response, LLMResult):
                    model, reported = response_model(response), response_provider(response)
                self.meter.record(
                    **_arguments(found, model, reported, run_id, run, self.customer_id)
                )
        except Exception as exc:
            self._kit.failed("on_llm_error", exc)

    @staticmethod
    def _read_message(
        usage: Mapping[str, Any],
        model: str | None,
        reported: str | None,
        message_id: object,
        run_id: str,
        run: _Run,
        fallback_customer_id: str | None,
    ) -> dict[str, Any] | None:
        """On the meter's worker: one message's usage -> `record()`'s arguments."""
        if replayed(usage, message_id, run_id):
            return None  # replayed from LangChain's cache: the provider was not called
        found: Found = ("openai", from_usage_metadata(usage))
        return _arguments(found, model, reported, run_id, run, fallback_customer_id)


def _arguments(
    found: Found,
    model: str | None,
    reported: str | None,
    run_id: UUID | str,
    run: _Run,
    fallback_customer_id: str | None,
) -> dict[str, Any]:
    """`record()`'s keyword arguments for a run's usage and the model and provider that answered."""
    counts, fields = found
    customer, asked, named, dims, _ = run
    if dims:
        fields["dimensions"] = dims
    model = model or asked
    noted = noted_provider(*named) if named else None
    return {
        "counts": counts,
        "model": model,
        "provider": billing_provider(reported, noted, model),
        "customer_id": customer,
        "request_id": str(run_id),
        "fallback_customer_id": fallback_customer_id,
        **fields,
    }
