"""Read token usage and the model name out of a LangChain `LLMResult`.

Two sources, never both: `AIMessage.usage_metadata` (chat models; LangChain's counts
are inclusive for every provider) and, only when no generation carries it, the legacy
`llm_output["token_usage"]` / `llm_output["usage"]` of plain LLMs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from langchain_core.outputs import LLMResult
from stripe_token_meter.provider_usage import UsageReport as Found

__all__ = [
    "CACHE_HIT",
    "Found",
    "extract_error_usage",
    "extract_usage",
    "later_batch_member",
    "response_model",
]
from stripe_token_meter.provider_usage import read_usage

CACHE_HIT: Final = "cache_hit"
"""Returned instead of usage for a LangChain cache hit: no provider call, nothing to bill."""


def _num(value: object) -> Any:
    """A count as reported, `None` as 0 (the core validates type and range)."""
    return 0 if value is None else value


def _from_usage_metadata(um: Mapping[str, Any]) -> dict[str, Any]:
    inp = um.get("input_token_details") or {}
    out = um.get("output_token_details") or {}
    return {
        "prompt_tokens": _num(um.get("input_tokens")),
        "completion_tokens": _num(um.get("output_tokens")),
        "cached_tokens": _num(inp.get("cache_read")),
        "cache_write_tokens": _num(inp.get("cache_creation")),
        "reasoning_tokens": _num(out.get("reasoning")),
    }


def _add(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return part
    return {k: total[k] + part[k] for k in total}


def _message_usage(result: LLMResult) -> dict[str, Any] | str | None:
    """Summed `usage_metadata` of the result's generations, `CACHE_HIT`, or None if absent.

    Within one prompt's candidates (`n > 1`) ChatOpenAI copies the request's usage onto
    every candidate, so identical usages there are counted once, different ones summed.
    """
    total: dict[str, Any] | None = None
    for candidates in result.generations:
        usages: list[Mapping[str, Any]] = []
        for gen in candidates:
            um = getattr(getattr(gen, "message", None), "usage_metadata", None)
            if um:
                if "total_cost" in um and um["total_cost"] == 0:
                    return CACHE_HIT  # LangChain marks replayed cache entries this way
                usages.append(um)
        if usages and all(u == usages[0] for u in usages[1:]):
            usages = usages[:1]
        for um in usages:
            total = _add(total, _from_usage_metadata(um))
    return total


def extract_usage(result: LLMResult, *, legacy: bool = True) -> Found | str | None:
    """`(counts, fields)` for `meter.record`, `CACHE_HIT`, or None when nothing was reported.

    `legacy=False` ignores `llm_output` (see `later_batch_member`).
    """
    message = _message_usage(result)
    if isinstance(message, str):
        return message
    if message is not None:
        return "openai", message
    out = result.llm_output
    if not legacy or not isinstance(out, Mapping):
        return None
    return read_usage(out.get("token_usage")) or read_usage(out.get("usage"))


def later_batch_member(result: LLMResult) -> bool:
    """True for the 2nd..nth run of a plain-LLM batch, whose usage the first run carries.

    `LLMResult.flatten()` keeps the batch's `llm_output["token_usage"]` on the first run
    and sets it to `{}` on the others, but copies any other key (`usage`) unchanged.
    """
    out = result.llm_output
    return isinstance(out, Mapping) and out.get("token_usage") == {}


def extract_error_usage(result: object) -> Found | None:
    """Usage a provider reported for a failed call: a partial stream's, or the error body's."""
    if not isinstance(result, LLMResult):
        return None
    found = extract_usage(result)
    if found is not None and not isinstance(found, str):
        return found
    for candidates in result.generations:
        for gen in candidates:
            meta = getattr(getattr(gen, "message", None), "response_metadata", None) or {}
            body = meta.get("body")
            if isinstance(body, Mapping):
                usage = read_usage(body.get("usage"))
                if usage is not None:
                    return usage
    return None


def response_model(result: LLMResult) -> str | None:
    """The model the provider says answered: message `response_metadata`, else `llm_output`."""
    for candidates in result.generations:
        for gen in candidates:
            meta = getattr(getattr(gen, "message", None), "response_metadata", None)
            if meta:
                name = meta.get("model_name") or meta.get("model")
                if isinstance(name, str) and name:
                    return name
    out = result.llm_output
    if isinstance(out, Mapping):
        name = out.get("model_name") or out.get("model")
        if isinstance(name, str) and name:
            return name
    return None
