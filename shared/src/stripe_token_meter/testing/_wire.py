"""Wire-format helpers for FakeStripe: form un-nesting, timestamps, JSON, errors.

Kept separate so the server module reads as Stripe's rules, not as string juggling.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import parse_qsl

ApiVersion = Literal["v1", "v2"]
Response = tuple[int, bytes, list[tuple[str, str]]]
"""(status, JSON body, extra headers) as handed to the HTTP layer."""

TEST_ONLY_PREFIX = "/_fake/"
"""FakeStripe's own endpoints (``GET /_fake/identifiers``): no auth, faults, latency, counts."""

_BRACKETS = re.compile(r"\[([^\]]*)\]")
_NO_LISTIFY = frozenset({"payload", "metadata"})
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> bytes:
    """Compact JSON, because every byte is written once per request."""
    return _DUMPS(obj).encode("utf-8")


def new_id(prefix: str) -> str:
    """Stripe-looking object id (``cus_...``); random so ids never collide across runs."""
    return f"{prefix}_{secrets.token_hex(12)}"


def iso(t: float) -> str:
    """RFC 3339 UTC with milliseconds, the format Stripe's v2 API uses (``...000Z``)."""
    whole = int(t)
    ms = int((t - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_iso(value: str) -> int:
    """Parse a v2 RFC 3339 timestamp to unix seconds; ``ValueError`` if it is not one."""
    text = value
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() // 1)


def parse_form(raw: str) -> dict[str, Any]:
    """Un-nest the SDK's v1 form encoding (``a[b]=1``, ``a[0]=x``, ``a[0][b]=y``, ``a[]=x``)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        i = key.find("[")
        if i <= 0:
            root[key] = value
            continue
        parts = [key[:i], *_BRACKETS.findall(key, i)]
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        node[str(len(node)) if last == "" else last] = value
    for key, value in root.items():
        if key not in _NO_LISTIFY and isinstance(value, dict):
            root[key] = _listify(value)
    return root


def _listify(node: dict[str, Any]) -> Any:
    """Turn ``{"0": a, "1": b}`` into ``[a, b]`` recursively (Stripe's indexed arrays)."""
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _listify(value)
    if node and all(k.isdigit() for k in node):
        return [node[k] for k in sorted(node, key=int)]
    return node


def mask_key(key: str) -> str:
    """Mask an API key the way Stripe's 401 message does: keep the prefix and last four."""
    if len(key) <= 12:
        return key[: min(3, len(key))] + "*" * max(0, len(key) - 3)
    prefix = key[: key.find("_", 3) + 1] if key.count("_") >= 2 else key[:3]
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]


class ApiError(Exception):
    """A Stripe error response; rendered in v1 or v2 shape depending on the route."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        v2_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or []
        self.v2_type = v2_type

    def render(self, api: ApiVersion) -> Response:
        """Serialize as ``{"error": {...}}``, the shape the SDK's error mapping reads."""
        err: dict[str, Any] = {
            "type": self.v2_type if api == "v2" and self.v2_type else self.type,
            "message": self.message,
        }
        if self.code is not None:
            err["code"] = self.code
            if api == "v1":
                err["doc_url"] = (
                    f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
                )
        if self.param is not None:
            err["param"] = self.param
        return self.status, dumps({"error": err}), list(self.headers)


def invalid(
    message: str,
    code: str | None = None,
    param: str | None = None,
    *,
    status: int = 400,
    headers: list[tuple[str, str]] | None = None,
) -> ApiError:
    """Shorthand for the common ``invalid_request_error``."""
    return ApiError(
        status, "invalid_request_error", message, code=code, param=param, headers=headers
    )


def missing(param: str) -> ApiError:
    """Stripe's ``parameter_missing`` error."""
    return invalid(f"Missing required param: {param}.", "parameter_missing", param)


def unknown_param(param: str) -> ApiError:
    """Stripe's ``parameter_unknown`` error (it rejects parameters it does not know)."""
    return invalid(
        f"Received unknown parameter: {param}",
        "parameter_unknown",
        param,
    )


def not_found(kind: str, ident: str, param: str = "id") -> ApiError:
    """Stripe's 404 ``resource_missing``."""
    return invalid(f"No such {kind}: '{ident}'", "resource_missing", param, status=404)


def rate_limited(retry_after: float | None) -> ApiError:
    """429 that maps to ``stripe.RateLimitError`` for both v1 and v2 routes."""
    headers = [] if retry_after is None else [("Retry-After", f"{retry_after:g}")]
    return ApiError(
        429,
        "invalid_request_error",
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers=headers,
        v2_type="rate_limit",
    )


def server_error(status: int, retry_after: float | None = None) -> ApiError:
    """5xx ``api_error``; maps to ``stripe.APIError``."""
    headers = [] if retry_after is None else [("Retry-After", f"{retry_after:g}")]
    return ApiError(
        status,
        "api_error",
        "An unknown error occurred (injected by FakeStripe).",
        headers=headers,
    )


def opt_str(params: dict[str, Any], name: str) -> str | None:
    """A string parameter or None; anything else is a 400 like Stripe's type checks."""
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    raise invalid(f"Invalid string: {name}", "parameter_invalid_string", name)


def req_str(params: dict[str, Any], name: str) -> str:
    """A required, non-empty string parameter."""
    value = opt_str(params, name)
    if not value:
        raise missing(name)
    return value


def opt_int(params: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """An integer parameter (form strings or JSON ints)."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        raise invalid(f"Invalid integer: {value}", "parameter_invalid_integer", name)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and value.isascii():
        return int(value)
    raise invalid(f"Invalid integer: {value}", "parameter_invalid_integer", name)


def opt_bool(params: dict[str, Any], name: str) -> bool | None:
    """A boolean parameter (``true``/``false`` in form encoding)."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if value in ("true", "false"):
        return bool(value == "true")
    raise invalid(f"Invalid boolean: {value}", "parameter_invalid_boolean", name)


def str_dict(value: Any, name: str) -> dict[str, str]:
    """A ``{str: str}`` hash such as ``metadata`` or ``payload``."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise invalid(
        f"Invalid hash: {name} must be a map of strings", "parameter_invalid_string", name
    )


def paginate(items: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    """Stripe list object with ``limit``/``starting_after``/``ending_before`` cursor paging."""
    limit = opt_int(params, "limit", 10) or 10
    if not 1 <= limit <= 100:
        raise invalid(
            "Invalid limit: must be between 1 and 100", "parameter_invalid_integer", "limit"
        )
    after = opt_str(params, "starting_after")
    before = opt_str(params, "ending_before")
    cursor = after or before
    if cursor:
        idx = next((i for i, obj in enumerate(items) if obj.get("id") == cursor), -1)
        if idx < 0:
            raise invalid(
                f"No such object: '{cursor}'",
                "resource_missing",
                "starting_after" if after else "ending_before",
            )
        if after:
            items = items[idx + 1 :]
        else:
            items = items[:idx]
            return {
                "object": "list",
                "data": items[-limit:],
                "has_more": len(items) > limit,
                "url": url,
            }
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}
