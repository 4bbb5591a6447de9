"""Local OpenAI- and Anthropic-compatible HTTP servers on 127.0.0.1 for the real provider clients.

They answer with fixed text and the usage the test sets, in each provider's real shape,
streaming included (SSE), so adapters are tested against what real providers send.
Prompt text is never echoed into usage.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server:
    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append((self.path, body))
                owner.handle(self, self.path, body)

        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def send_sse(h: BaseHTTPRequestHandler, chunks: Iterator[str]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        for c in chunks:
            h.wfile.write(c.encode())
            h.wfile.flush()
        h.close_connection = True


class OpenAIServer(_Server):
    """`/v1/chat/completions` (stream or not), `/v1/completions`, `/v1/embeddings`.

    Usage: `prompt_tokens`, `completion_tokens`, `cached_tokens` (in
    `prompt_tokens_details`), `reasoning_tokens` (in `completion_tokens_details`).
    Streaming sends usage in a final chunk only when `stream_options.include_usage` is set,
    as OpenAI does.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-2024-08-06",
        prompt_tokens: int = 100,
        completion_tokens: int = 20,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        text: str = "Hello from the fake model",
        response_id: str | None = None,
    ) -> None:
        super().__init__()
        # one id for every response, as Ollama's `chatcmpl-<0..999>` and caching proxies do
        self.response_id = response_id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.text = text
        self.fail_next = 0  # answer 500 to the next N requests

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def handle(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            self.send_json(h, {"error": {"message": "boom", "type": "server_error"}}, 500)
            return
        cid = self.response_id or f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if path.endswith("/embeddings"):
            inputs = body.get("input")
            n = len(inputs) if isinstance(inputs, list) else 1
            self.send_json(
                h,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i in range(n)
                    ],
                    "model": self.model,
                    "usage": {
                        "prompt_tokens": self.prompt_tokens,
                        "total_tokens": self.prompt_tokens,
                    },
                },
            )
            return
        if path.endswith("/completions") and not path.endswith("/chat/completions"):
            self.send_json(
                h,
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": self.model,
                    "choices": [
                        {"text": self.text, "index": 0, "logprobs": None, "finish_reason": "stop"}
                    ],
                    "usage": self.usage(),
                },
            )
            return
        if not body.get("stream"):
            self.send_json(
                h,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": self.model,
                    "system_fingerprint": "fp_test",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self.usage(),
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunks() -> Iterator[str]:
            def chunk(
                delta: dict[str, Any], finish: str | None, usage: Any = None, choices: bool = True
            ) -> str:
                obj: dict[str, Any] = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.model,
                    "system_fingerprint": "fp_test",
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ]
                    if choices
                    else [],
                }
                if include_usage:
                    obj["usage"] = usage
                return f"data: {json.dumps(obj)}\n\n"

            yield chunk({"role": "assistant", "content": ""}, None)
            for word in self.text.split(" "):
                yield chunk({"content": word + " "}, None)
            yield chunk({}, "stop")
            if include_usage:
                yield chunk({}, None, self.usage(), choices=False)
            yield "data: [DONE]\n\n"

        self.send_sse(h, chunks())


class AnthropicServer(_Server):
    """`/v1/messages` (stream or not) with Anthropic's usage shape.

    `input_tokens` exclude `cache_read_input_tokens` and `cache_creation_input_tokens`.
    Streams report input and cache counts on `message_start`; `message_delta` has the
    output count, or with `cumulative_delta` every count again (cumulative, as the API
    may send it).
    """

    def __init__(
        self,
        *,
        model: str = "claude-3-5-sonnet-20241022",
        input_tokens: int = 50,
        output_tokens: int = 30,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        text: str = "Hello from the fake Claude",
        cumulative_delta: bool = False,
    ) -> None:
        super().__init__()
        # The API documents `message_delta.usage` as cumulative, and may repeat the input
        # and cache counts there: a client that adds them to `message_start`'s bills twice.
        self.cumulative_delta = cumulative_delta
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_input_tokens = cache_read_input_tokens
        self.cache_creation_input_tokens = cache_creation_input_tokens
        self.text = text

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        mid = f"msg_{uuid.uuid4().hex[:16]}"
        usage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }
        if not body.get("stream"):
            self.send_json(
                h,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [{"type": "text", "text": self.text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return

        def events() -> Iterator[str]:
            def ev(name: str, data: dict[str, Any]) -> str:
                return f"event: {name}\ndata: {json.dumps(data)}\n\n"

            start_usage = dict(usage, output_tokens=1)
            yield ev(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
            yield ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for word in self.text.split(" "):
                yield ev(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word + " "},
                    },
                )
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield ev(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": usage
                    if self.cumulative_delta
                    else {"output_tokens": self.output_tokens},
                },
            )
            yield ev("message_stop", {"type": "message_stop"})

        self.send_sse(h, events())


def cached_claude(*, cumulative_delta: bool, **kwargs: Any) -> AnthropicServer:
    """An Anthropic server whose every call reads 200 cached input tokens, writes 300 to the
    cache, takes 50 more and answers 30 (`cached_claude_events` is what that bills)."""
    return AnthropicServer(
        input_tokens=50,
        output_tokens=30,
        cache_read_input_tokens=200,
        cache_creation_input_tokens=300,
        cumulative_delta=cumulative_delta,
        **kwargs,
    )


def cached_claude_events(customer: str, model: str) -> dict[str, list[tuple[str, str, str, int]]]:
    """One `cached_claude` call's events, by `token_types`: all input counts together
    (50 + 200 + 300) in basic mode, each apart in detailed mode."""
    return {
        "basic": [(customer, model, "input", 550), (customer, model, "output", 30)],
        "detailed": [
            (customer, model, "cache_write", 300),
            (customer, model, "cached_input", 200),
            (customer, model, "input", 50),
            (customer, model, "output", 30),
        ],
    }
