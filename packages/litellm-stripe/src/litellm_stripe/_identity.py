"""Who made a LiteLLM call, and ready-made resolvers that turn that into a Stripe customer.

`CallIdentity` is what a `customer_resolver` receives. Some of its fields are set by the
LiteLLM proxy from the virtual key that authenticated the request (trusted); others come
from the request body or headers, which the client controls (forgeable through the proxy).
`customer_from()` makes that choice explicit: client-supplied sources are refused unless
`trust_client_fields=True` is passed, as LiteLLM's own OpenMeter integration gates the
request `user` behind `OPENMETER_TRUST_REQUEST_USER`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stripe_token_meter import ConfigurationError
from stripe_token_meter.adapter_kit import CUSTOMER_KEY

__all__ = ["CUSTOMER_KEY", "CallIdentity", "CustomerResolver", "customer_from"]

CustomerResolver = Callable[["CallIdentity"], "str | None"]
"""`(identity) -> "cus_..." | None`; None lets the next source in precedence decide."""


@dataclass(frozen=True, slots=True)
class CallIdentity:
    """The identity fields of one LiteLLM call, as LiteLLM reports them.

    Set by the LiteLLM proxy from the virtual key (a client cannot forge them; the proxy
    strips any `user_api_key_*` a request sends):

    - `user_api_key_user_id`: the internal user that owns the key.
    - `user_api_key_team_id`: the key's team.
    - `user_api_key_alias`: the key's alias.
    - `key_metadata` / `team_metadata`: the metadata an admin stored on the key / team.

    Supplied by the caller (through the proxy: by whoever holds a key, so forgeable):

    - `user`: the request's `user` field (OpenAI's end-user parameter).
    - `end_user`: LiteLLM's end-user (customer) id, taken from the request's `user`,
      its metadata or the end-user headers.
    - `metadata`: the request's metadata (SDK: the `metadata=` argument).

    In the SDK every field is whatever your own code passed, so all are trustworthy there.
    """

    user: str | None = None
    end_user: str | None = None
    user_api_key_user_id: str | None = None
    user_api_key_team_id: str | None = None
    user_api_key_alias: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    key_metadata: Mapping[str, Any] = field(default_factory=dict)
    team_metadata: Mapping[str, Any] = field(default_factory=dict)
    call_id: str | None = None


def _meta_customer(meta: Mapping[str, Any]) -> str | None:
    value = meta.get(CUSTOMER_KEY)
    return value if isinstance(value, str) and value else None


# source name -> (reads it from the identity, set by the key (trusted)?)
_SOURCES: Final[dict[str, tuple[Callable[[CallIdentity], str | None], bool]]] = {
    "key_metadata": (lambda i: _meta_customer(i.key_metadata), True),
    "team_metadata": (lambda i: _meta_customer(i.team_metadata), True),
    "user_api_key_user_id": (lambda i: i.user_api_key_user_id, True),
    "team": (lambda i: i.user_api_key_team_id, True),
    "key_alias": (lambda i: i.user_api_key_alias, True),
    "metadata": (lambda i: _meta_customer(i.metadata), False),
    "end_user": (lambda i: i.end_user, False),
    "user": (lambda i: i.user, False),
}

SOURCES: Final = tuple(_SOURCES)
"""Every source name `customer_from()` accepts."""
TRUSTED_SOURCES: Final = tuple(name for name, (_, trusted) in _SOURCES.items() if trusted)
"""Sources the LiteLLM proxy sets from the authenticated virtual key."""
CLIENT_SOURCES: Final = tuple(name for name, (_, trusted) in _SOURCES.items() if not trusted)
"""Sources the caller supplies; through the proxy any key holder can set them to anything."""


def customer_from(
    *sources: str,
    customer_map: Mapping[str, str] | None = None,
    trust_client_fields: bool = False,
) -> CustomerResolver:
    """A resolver that tries `sources` in order and returns the first customer found.

    Sources: `key_metadata` and `team_metadata` (the customer under `CUSTOMER_KEY`
    stored on the virtual key / team by an admin), `user_api_key_user_id`, `team`,
    `key_alias` (set by the proxy from the key), and the client-supplied `metadata`
    (`CUSTOMER_KEY` in the request metadata), `end_user`, `user`.

    A value is used as the customer id as it is, or looked up in `customer_map` when one
    is given (ids missing from the map resolve to nothing, so the next source is tried).
    Client-supplied sources raise `ConfigurationError` unless `trust_client_fields=True`:
    through the proxy any key holder could bill their calls to another customer with them.
    """
    if not sources:
        raise ConfigurationError(
            "customer_from: name at least one source, e.g. customer_from('key_metadata')"
        )
    unknown = [s for s in sources if s not in _SOURCES]
    if unknown:
        raise ConfigurationError(
            f"customer_from: unknown source(s) {unknown}; choose from {list(SOURCES)}"
        )
    untrusted = [s for s in sources if not _SOURCES[s][1]]
    if untrusted and not trust_client_fields:
        raise ConfigurationError(
            f"customer_from: {untrusted} are supplied by the caller; through the LiteLLM proxy any key "
            "holder can set them and bill another customer. Pass trust_client_fields=True (proxy: "
            "STRIPE_TRUST_CLIENT_FIELDS=true) only if every caller is your own backend, or use a key-bound "
            f"source: {list(TRUSTED_SOURCES)}"
        )
    readers = tuple(_SOURCES[s][0] for s in sources)
    mapping = dict(customer_map) if customer_map is not None else None

    def resolve(identity: CallIdentity) -> str | None:
        for read in readers:
            value = read(identity)
            if not value:
                continue
            if mapping is None:
                return value
            mapped = mapping.get(value)
            if mapped:
                return mapped
        return None

    resolve.__qualname__ = resolve.__name__ = f"customer_from({', '.join(map(repr, sources))})"
    return resolve
