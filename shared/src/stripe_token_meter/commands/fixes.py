"""What each dead-letter / rejection code means and how to fix it.

Why: an operator looking at `status` needs the next action, not Stripe's error code;
`replayable` says whether `stripe-token-meter replay` can deliver it after the fix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fix:
    """The fix for one error code."""

    fix: str
    replayable: bool


_REPLAY = "then `stripe-token-meter replay --code {code}`"
_SETTLE = (
    "; the records kept were not billed: once handled, `stripe-token-meter resolve --code {code}`"
)

FIXES: dict[str, Fix] = {
    # Stripe's answers to meter events (events table, status 'dead')
    "meter_event_customer_not_found": Fix(
        "the customer does not exist in this Stripe account/mode: create it, or fix the "
        "mapping that produced the id (customer_resolver / stripe_customer_id), " + _REPLAY,
        True,
    ),
    "meter_event_no_customer_defined": Fix(
        "the payload lacks the meter's customer key: make TokenMeter(customer_payload_key=...) "
        "match the meter's customer_mapping.event_payload_key, " + _REPLAY,
        True,
    ),
    "meter_event_invalid_value": Fix(
        "the meter's value key is not what TokenMeter sends: make value_payload_key match the "
        "meter's value_settings.event_payload_key, " + _REPLAY,
        True,
    ),
    "timestamp_too_far_in_past": Fix(
        "Stripe only accepts events from the last 35 days: these cannot be sent as meter "
        "events; bill them with an invoice item if they matter (replay will not help)",
        False,
    ),
    "timestamp_too_far_in_future": Fix(
        "the recording host's clock was ahead by more than 5 minutes: fix NTP, " + _REPLAY,
        True,
    ),
    "archived_meter": Fix(
        "the meter for this event_name is deactivated: reactivate it (`stripe-token-meter "
        "setup` does) or point --event-name at an active meter, " + _REPLAY,
        True,
    ),
    "unconfirmed_past_dedup_window": Fix(
        "a send got no confirmed answer (timeout, dropped connection, 5xx) and the event was "
        "still unconfirmed a day later, past Stripe's 24 h duplicate check: look for this "
        "customer's usage at that time in Stripe (meter event summaries); if it is missing, "
        + _REPLAY
        + ", else `stripe-token-meter resolve --code {code}`",
        True,
    ),
    "no_meter": Fix(
        "no meter has this event_name: create it with `stripe-token-meter setup`, " + _REPLAY,
        True,
    ),
    "resource_missing": Fix(
        "Stripe could not find an object the event refers to (meter or customer): create "
        "it, " + _REPLAY,
        True,
    ),
    # Usage records the meter rejected before any event existed (table 'rejected')
    "missing_customer": Fix(
        "no customer for the call: pass stripe_customer_id in the call's metadata, wrap it in "
        "`with meter.customer('cus_...')`, or set a handler customer_id / default_customer_id"
        + _SETTLE,
        False,
    ),
    "invalid_customer": Fix(
        "customer ids must be Stripe ids (cus_...): map your own user ids with a customer_resolver"
        + _SETTLE,
        False,
    ),
    "invalid_token_count": Fix(
        "a framework reported a negative, fractional or non-numeric token count: upgrade the "
        "adapter/framework and report it with the record shown" + _SETTLE,
        False,
    ),
    "invalid_timestamp": Fix(
        "the call's timestamp was outside Stripe's window (35 days past, 5 minutes ahead): "
        "check the host clock" + _SETTLE,
        False,
    ),
    "invalid_identifier": Fix(
        "a request id, event name or model name was empty or too long (100 characters max)"
        + _SETTLE,
        False,
    ),
    "invalid_dimension": Fix(
        "extra dimensions must be non-empty strings and may not reuse model, token_type or "
        "the customer/value keys" + _SETTLE,
        False,
    ),
    "invalid_usage": Fix("the record broke a meter event rule: see the message" + _SETTLE, False),
}


def fix_for(code: str | None) -> Fix:
    """The fix for `code`, with `{code}` filled in; a generic one for unknown codes."""
    code = code or "unknown"
    found = FIXES.get(code)
    if found is None:
        return Fix(
            f"see the message, fix the cause, then `stripe-token-meter replay --code {code}`",
            True,
        )
    return Fix(found.fix.replace("{code}", code), found.replayable)
