"""Helpers shared by the LiteLLM tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm
import openai
from litellm_stripe import StripeLogger

MESSAGES = [{"role": "user", "content": "Say hello"}]


def model_response(
    *,
    model: str = "gpt-4o-2024-08-06",
    prompt: int = 100,
    completion: int = 20,
    cached: int = 0,
    reasoning: int = 0,
) -> litellm.ModelResponse:
    """A fresh `ModelResponse` (own id) with usage details, for `mock_response=`."""
    return litellm.ModelResponse(
        model=model,
        choices=[{"message": {"role": "assistant", "content": "Hello there friend"}}],
        usage=litellm.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details={"cached_tokens": cached},
            completion_tokens_details={"reasoning_tokens": reasoning},
        ),
    )


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def wait_stat(logger: StripeLogger, name: str, n: int, timeout: float = 10.0) -> None:
    """Wait until `logger.stats()[name] >= n` (LiteLLM's callbacks run late, elsewhere)."""
    wait_until(
        lambda: logger.stats()[name] >= n, timeout, f"stats()[{name!r}] >= {n}: {logger.stats()}"
    )


async def drain_litellm(timeout: float = 10.0) -> None:
    """Run LiteLLM's queued async success callbacks now, on this loop (LiteLLM's own flush).

    Without it, callbacks still queued when `asyncio.run()` returns wait for the next event
    loop or LiteLLM's atexit flush.
    """
    import asyncio

    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)


PROXY_MASTER_KEY = "sk-proxy-test-3f9a1c7e5b2d4f6081a3c5e7"


@contextlib.contextmanager
def proxy_process(
    tmp: Path, upstream: str, env: Mapping[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], openai.OpenAI]]:
    """The real `litellm --config` proxy in its own process, `litellm_stripe.proxy_logger`
    configured by `env` over os.environ, its alias `my-gpt` routed to `upstream`; yields
    the process and an openai client once it answers. Terminated on the way out unless
    the test stopped it; its log is `tmp / "proxy.log"`."""
    config = tmp / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: my-gpt\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-2024-08-06\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-upstream\n"
        "litellm_settings:\n"
        "  callbacks: litellm_stripe.proxy_logger\n"
        "general_settings:\n"
        "  master_key: os.environ/LITELLM_MASTER_KEY\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    full = dict(
        os.environ, LITELLM_MASTER_KEY=PROXY_MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True"
    )
    full.update(env)
    log_path = tmp / "proxy.log"
    cmd = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=full, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}", api_key=PROXY_MASTER_KEY, max_retries=0, timeout=30
        )
        deadline = time.monotonic() + 240
        while True:
            try:
                client.models.list()
                break
            except openai.APIError:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.5)
        yield proc, client
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)
