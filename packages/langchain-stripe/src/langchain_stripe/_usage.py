"""Read token usage and the model name out of a LangChain `LLMResult`.

Two sources, never both: `AIMessage.usage_metadata` (chat models; LangChain's counts
are inclusive for every provider) and, only when no generation carries it, the legacy
`llm_output["token_usage"]` / `llm_output["usage"]` of plain LLMs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from uuid import UUID

from langchain_core.outputs import LLMResult
from stripe_token_meter.provider_usage import UsageReport as Found

__all__ = [
    "CACHE_HIT",
    "Found",
    "billing_provider",
    "extract_error_usage",
    "extract_usage",
    "from_usage_metadata",
    "later_batch_member",
    "model_in",
    "noted_provider",
    "only_message",
    "provider_in",
    "replayed",
    "response_model",
    "response_provider",
]
from stripe_token_meter.dimensions import (
    HOSTED_PROVIDERS,
    infer_provider,
    known_provider,
    normalize_provider,
)
from stripe_token_meter.provider_usage import read_usage

CACHE_HIT: Final = "cache_hit"
"""Returned instead of usage for a LangChain cache hit: no provider call, nothing to bill."""


def from_usage_metadata(um: Mapping[str, Any]) -> dict[str, Any]:
    """Counts as reported, a missing (`None`) one as 0; the core validates type and range."""
    inp = um.get("input_token_details")
    out = um.get("output_token_details")
    prompt = um.get("input_tokens")
    completion = um.get("output_tokens")
    read = inp.get("cache_read") if inp else None
    written = inp.get("cache_creation") if inp else None
    reasoning = out.get("reasoning") if out else None
    return {
        "prompt_tokens": 0 if prompt is None else prompt,
        "completion_tokens": 0 if completion is None else completion,
        "cached_tokens": 0 if read is None else read,
        "cache_write_tokens": 0 if written is None else written,
        "reasoning_tokens": 0 if reasoning is None else reasoning,
    }


def _add(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return part
    return {k: total[k] + part[k] for k in total}


def only_message(result: LLMResult) -> Any:
    """The message of a one-prompt, one-candidate result (nearly every call), else None."""
    gens = result.generations
    if len(gens) == 1 and len(gens[0]) == 1:
        return getattr(gens[0][0], "message", None)
    return None


def replayed(um: Mapping[str, Any], message_id: object, run_id: UUID | str | None) -> bool:
    """True for usage LangChain replayed from its cache (it marks it `total_cost: 0`).

    Not when LangChain named the message after this run (`lc_run--<run_id>...`): then it
    is the run's own answer, marked by a later hit on it. In `generate([[p], [p]])` with a
    cache the second prompt's hit marks the first run's own generation (LangChain edits
    cached generations in place) before either run ends. A message an integration named
    itself cannot be told apart so.
    """
    if um.get("total_cost", 1) != 0:
        return False
    return not (run_id is not None and isinstance(message_id, str) and str(run_id) in message_id)


def _message_usage(result: LLMResult, run_id: UUID | None) -> dict[str, Any] | str | None:
    """Summed `usage_metadata` of the result's generations, `CACHE_HIT`, or None if absent.

    Within one prompt's candidates (`n > 1`) ChatOpenAI copies the request's usage onto
    every candidate, so identical usages there are counted once, different ones summed.
    """
    total: dict[str, Any] | None = None
    for candidates in result.generations:
        usages: list[Mapping[str, Any]] = []
        for gen in candidates:
            message = getattr(gen, "message", None)
            um = getattr(message, "usage_metadata", None)
            if um:
                if replayed(um, getattr(message, "id", None), run_id):
                    return CACHE_HIT
                usages.append(um)
        if usages and all(u == usages[0] for u in usages[1:]):
            usages = usages[:1]
        for um in usages:
            total = _add(total, from_usage_metadata(um))
    return total


def extract_usage(
    result: LLMResult, *, legacy: bool = True, run_id: UUID | None = None
) -> Found | str | None:
    """`(counts, fields)` for `meter.record`, `CACHE_HIT`, or None when nothing was reported.

    `legacy=False` ignores `llm_output` (see `later_batch_member`); `run_id`: see `replayed`.
    """
    message = _message_usage(result, run_id)
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


def model_in(meta: object) -> str | None:
    """The model a `response_metadata` / `llm_output` mapping names, if any."""
    if isinstance(meta, (dict, Mapping)):  # dict first: it skips the ABC check
        name = meta.get("model_name") or meta.get("model")
        if isinstance(name, str) and name:
            return name
    return None


def response_model(result: LLMResult) -> str | None:
    """The model the provider says answered: message `response_metadata`, else `llm_output`."""
    only = only_message(result)
    if only is not None:
        name = model_in(getattr(only, "response_metadata", None))
        if name:
            return name
    else:
        for candidates in result.generations:
            for gen in candidates:
                name = model_in(getattr(getattr(gen, "message", None), "response_metadata", None))
                if name:
                    return name
    return model_in(result.llm_output)


def provider_in(meta: object) -> str | None:
    """The provider a `response_metadata` / `llm_output` mapping names (`model_provider`)."""
    if isinstance(meta, (dict, Mapping)):
        name = meta.get("model_provider")
        if isinstance(name, str) and name:
            return name
    return None


def response_provider(result: LLMResult) -> str | None:
    """The provider the answer names: message `response_metadata`, else `llm_output`."""
    for candidates in result.generations:
        for gen in candidates:
            name = provider_in(getattr(getattr(gen, "message", None), "response_metadata", None))
            if name:
                return name
    return provider_in(result.llm_output)


_CLASS_DEFAULTS: dict[str, frozenset[str]] = {}
"""Class name -> the `ls_provider` values LangChain would make up from it (see below)."""


def _class_defaults(class_name: str) -> frozenset[str]:
    """What `BaseChatModel._get_ls_params` / `BaseLLM._get_ls_params` derive from a class name.

    Chat models: a leading or trailing `Chat` stripped, lowercased (`MyCompanyModel` ->
    `mycompanymodel`); LLMs: a trailing `LLM` stripped, lowercased. The plain lowercased name
    too, should LangChain change its rule ("not a stable contract", its docstring says).
    """
    found = _CLASS_DEFAULTS.get(class_name)
    if found is None:
        chat = class_name
        if chat.startswith("Chat"):
            chat = chat[4:]
        elif chat.endswith("Chat"):
            chat = chat[:-4]
        found = frozenset(
            {chat.lower(), class_name.removesuffix("LLM").lower(), class_name.lower()}
        )
        if len(_CLASS_DEFAULTS) < 1024:
            _CLASS_DEFAULTS[class_name] = found
    return found


def noted_provider(ls_provider: object, class_name: object, llm_type: object) -> str | None:
    """The run's provider as its model's integration names it, or None if it names none.

    `ls_provider` is kept when the integration set it, or when it is a known provider name.
    LangChain derives it from the class name for models that do not set it: a custom
    `MyCompanyModel` would bill as `mycompanymodel/...`; such a made-up name is dropped here
    (`billing_provider` then looks elsewhere). `_type` (the model's `_llm_type`) counts only
    when it is a known provider name.
    """
    if isinstance(ls_provider, str) and ls_provider:
        if (
            isinstance(class_name, str)
            and ls_provider in _class_defaults(class_name)
            and known_provider(ls_provider) is None
        ):
            return None
        return ls_provider
    return llm_type if isinstance(llm_type, str) and known_provider(llm_type) else None


def billing_provider(reported: str | None, noted: str | None, model: str | None) -> str | None:
    """The provider to bill a run under, most telling first (`normalize_model` then maps it).

    1. The integration's own name when it is a cloud host (`azure`, `amazon_bedrock`,
       `google_vertexai`): their answers name the API they speak (AzureChatOpenAI's say
       `openai`), but the host sets the price.
    2. The answer's `response_metadata["model_provider"]` (LangChain's integrations set it).
    3. The integration's name, as `noted_provider` kept it.
    4. The provider of a model family only its maker serves (`gpt-4o` -> `openai`,
       `claude-...` -> `anthropic`, `gemini-...` -> `google`).
    5. None: the model is billed under its name as reported, without a provider prefix.
    """
    if noted and normalize_provider(noted) in HOSTED_PROVIDERS:
        return noted
    return reported or noted or infer_provider(model)
