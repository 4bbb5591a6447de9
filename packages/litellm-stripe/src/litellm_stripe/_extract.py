"""Reading LiteLLM's callback arguments: usage, model, provider, identity, call id.

Only reads; builds plain values for `TokenMeter.record()`. All validation is the core's.

LiteLLM hands callbacks OpenAI-shaped, *inclusive* usage for every provider: in litellm
1.110 the Anthropic transformation (`llms/anthropic/chat/transformation.py`,
`AnthropicConfig.calculate_usage`) adds `cache_creation_input_tokens` and
`cache_read_input_tokens` into `prompt_tokens` and sets
`prompt_tokens_details.cached_tokens` to the cache reads, so the counts are recorded with
`counts="openai"` and the cache writes passed as `cache_write_tokens`. A raw Anthropic
usage block (exclusive `input_tokens`) is recognised by its shape and recorded with
`counts="anthropic"`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, Final

from stripe_token_meter.provider_usage import UsageReport, field, read_usage

from ._identity import CallIdentity

# Call types whose usage is the call's own consumption. Reads of stored objects
# (get_responses, file_content, batches...) report the usage of the call that created
# the object and must never be billed again.
BILLABLE_CALL_TYPES: Final = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "embedding",
        "aembedding",
        "responses",
        "aresponses",
        "anthropic_messages",
        "aanthropic_messages",
        "generate_content",
        "agenerate_content",
        "generate_content_stream",
        "agenerate_content_stream",
        "pass_through_endpoint",
    }
)
INPUT_ONLY_CALL_TYPES: Final = frozenset({"embedding", "aembedding"})


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first_str(*values: Any) -> str | None:
    """The first non-empty string among `values`."""
    for v in values:
        if isinstance(v, str) and v:
            return v
    return None


def call_metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's metadata: `litellm_params.metadata` over `litellm_params.litellm_metadata`.

    The proxy writes its `user_api_key_*` fields to one of the two (per route); the SDK's
    `metadata=` argument lands in `metadata`.
    """
    params = _mapping(kwargs.get("litellm_params"))
    merged: dict[str, Any] = dict(_mapping(params.get("litellm_metadata")))
    merged.update(_mapping(params.get("metadata")))
    return merged


def standard_payload(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(kwargs.get("standard_logging_object"))


def call_id(kwargs: Mapping[str, Any], slo: Mapping[str, Any] | None = None) -> str | None:
    """LiteLLM's per-call id (`litellm_call_id`), the same in pre-call and success hooks.

    Every firing of one call's success callbacks carries it, unlike the provider's response
    id (`standard_logging_object["id"]`), which servers and proxies repeat across calls.
    """
    cid = kwargs.get("litellm_call_id")
    if cid is None:
        cid = _mapping(kwargs.get("litellm_params")).get("litellm_call_id")
    if cid is None and slo is not None:
        cid = slo.get("litellm_call_id")
    return str(cid) if cid else None


def call_start(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> int | None:
    """When the call started, in microseconds: one value for all of a call's callbacks.

    Tells a repeat callback of one call from another call that reused its
    `litellm_call_id` (the proxy takes it from the client's `x-litellm-call-id` header).
    """
    start = kwargs.get("start_time")
    if isinstance(start, _dt.datetime):
        try:
            return round(start.timestamp() * 1_000_000)
        except (OverflowError, OSError, ValueError):
            return None
    raw = slo.get("startTime")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return round(raw * 1_000_000)
    return None


def is_cache_hit(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> bool:
    return slo.get("cache_hit") is True or kwargs.get("cache_hit") is True


def call_type(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> str | None:
    for raw in (slo.get("call_type"), kwargs.get("call_type")):
        value = getattr(raw, "value", raw)  # CallTypes enum members carry the name in .value
        if isinstance(value, str) and value:
            return value
    return None


def identity(
    kwargs: Mapping[str, Any], slo: Mapping[str, Any], metadata: Mapping[str, Any]
) -> CallIdentity:
    slo_meta = _mapping(slo.get("metadata"))

    def key_field(name: str) -> str | None:
        return _first_str(slo_meta.get(name), metadata.get(name))

    return CallIdentity(
        user=_first_str(kwargs.get("user"), _mapping(kwargs.get("optional_params")).get("user")),
        end_user=_first_str(slo.get("end_user"), key_field("user_api_key_end_user_id")),
        user_api_key_user_id=key_field("user_api_key_user_id"),
        user_api_key_team_id=key_field("user_api_key_team_id"),
        user_api_key_alias=key_field("user_api_key_alias"),
        metadata=metadata,
        key_metadata=_mapping(metadata.get("user_api_key_metadata")),
        team_metadata=_mapping(metadata.get("user_api_key_team_metadata")),
        call_id=call_id(kwargs),
    )


def provider(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> str | None:
    """`custom_llm_provider` as LiteLLM resolved it, else the prefix of the requested model."""
    params = _mapping(kwargs.get("litellm_params"))
    prov = _first_str(
        slo.get("custom_llm_provider"),
        kwargs.get("custom_llm_provider"),
        params.get("custom_llm_provider"),
    )
    if prov is None:
        for name in (slo.get("model"), kwargs.get("model")):
            if isinstance(name, str) and "/" in name:
                return name.partition("/")[0]
    return prov


def _aliases(
    kwargs: Mapping[str, Any], slo: Mapping[str, Any], metadata: Mapping[str, Any]
) -> set[str]:
    """The names the client asked for (Router / proxy model group, the request's `model`)."""
    body = _mapping(
        _mapping(_mapping(kwargs.get("litellm_params")).get("proxy_server_request")).get("body")
    )
    names = (
        slo.get("model_group"),
        metadata.get("model_group"),
        metadata.get("original_model_group"),
        body.get("model"),
    )
    return {n for n in names if isinstance(n, str) and n}


def deployment_model(
    kwargs: Mapping[str, Any], slo: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str | None:
    """The model the call was sent to: the deployment's `base_model`, else its `model`."""
    hidden = _mapping(slo.get("hidden_params"))
    return _first_str(
        _mapping(metadata.get("model_info")).get("base_model"),
        slo.get("model"),
        hidden.get("litellm_model_name"),
        metadata.get("deployment"),
        kwargs.get("model"),
    )


def model(
    response_obj: Any,
    kwargs: Mapping[str, Any],
    slo: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> str | None:
    """The model the provider says served the call (`gpt-4o-2024-08-06`), else the one asked for.

    The LiteLLM proxy rewrites `response.model` to the name the client asked for (its
    alias, `my-gpt`; `common_request_processing._override_openai_response_model`), often
    before the callback runs: a response model that is one of the call's aliases and not
    the deployment's model is that rewrite, so the deployment's model is billed instead.
    Passed raw: the core's normaliser strips date suffixes and never doubles a provider
    prefix (a Router or proxy model such as `openai/gpt-4o`).
    """
    answered = _first_str(
        field(response_obj, "model"),
        field(kwargs.get("complete_streaming_response"), "model"),
    )
    deployed = deployment_model(kwargs, slo, metadata)
    if answered is None:
        return deployed
    if (
        deployed is not None
        and answered != deployed
        and answered in _aliases(kwargs, slo, metadata)
    ):
        return deployed
    return answered


def _usage_object(response_obj: Any, kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> Any:
    for candidate in (
        response_obj,
        kwargs.get("complete_streaming_response"),
        kwargs.get("async_complete_streaming_response"),
    ):
        usage = field(candidate, "usage")
        if usage is not None:
            return usage
    usage = _mapping(slo.get("metadata")).get("usage_object")
    if usage:
        return usage
    if slo.get("prompt_tokens") is not None or slo.get("completion_tokens") is not None:
        return {
            "prompt_tokens": slo.get("prompt_tokens"),
            "completion_tokens": slo.get("completion_tokens"),
        }
    return None


def usage_fields(
    response_obj: Any, kwargs: Mapping[str, Any], slo: Mapping[str, Any], input_only: bool
) -> UsageReport | None:
    """`(counts, fields)` for `TokenMeter.record()`, or None when LiteLLM reported no usage.

    The shape is read by the core (`read_usage`); embeddings bill their input only.
    """
    found = read_usage(_usage_object(response_obj, kwargs, slo))
    if found is None or not input_only:
        return found
    counts, fields = found
    drop = ("completion_tokens", "reasoning_tokens", "output_tokens")
    return counts, {k: v for k, v in fields.items() if k not in drop}


def timestamp(end_time: Any) -> float | None:
    """When the call finished, as Unix seconds (LiteLLM passes naive local datetimes)."""
    if isinstance(end_time, _dt.datetime):
        try:
            return end_time.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(end_time, (int, float)) and not isinstance(end_time, bool):
        return float(end_time)
    return None
