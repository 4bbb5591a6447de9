"""The real LiteLLM proxy in its own process, stopped with SIGTERM under load.

`litellm --config` with `callbacks: litellm_stripe.proxy_logger`, a model alias routed
to a local OpenAI-compatible server, the real openai client calling the proxy from four
threads, and FakeStripe behind the real stripe SDK. Every call the proxy answered must be
billed exactly once, to its customer, under the deployment's model (not the alias),
including the calls still in the dead proxy's journal, which a differently configured
meter (no default customer) takes over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import openai
import pytest
from stripe_token_meter import TokenMeter
from support.providers import OpenAIServer

MASTER_KEY = "sk-proxy-test-3f9a1c7e5b2d4f6081a3c5e7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_proxy(tmp: Path, upstream: str, fake_url: str) -> tuple[subprocess.Popen[bytes], int]:
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
    port = _free_port()
    env = dict(
        os.environ,
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        STRIPE_API_KEY="sk_test_fake",
        STRIPE_API_BASE=fake_url,
        STRIPE_DEFAULT_CUSTOMER_ID="cus_default",
        STRIPE_TRUST_CLIENT_FIELDS="true",
        STRIPE_CUSTOMER_SOURCE="metadata,key_metadata",
        STRIPE_TOKEN_METER_OUTBOX=str(tmp / "outbox.sqlite3"),
    )
    log = (tmp / "proxy.log").open("wb")
    cmd = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), port


@pytest.mark.timeout(400)
def test_sigterm_under_load_bills_every_answered_call_once(
    fake_stripe: Any, tmp_path: Path
) -> None:
    with OpenAIServer(response_id="chatcmpl-7") as upstream:  # ids repeated, as Ollama does
        proc, port = _start_proxy(tmp_path, upstream.base_url, fake_stripe.url)
        try:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}", api_key=MASTER_KEY, max_retries=0, timeout=30
            )
            deadline = time.monotonic() + 240
            while True:
                try:
                    client.models.list()
                    break
                except openai.APIError:
                    assert proc.poll() is None, (tmp_path / "proxy.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the proxy did not start"
                    time.sleep(0.5)
            answered: Counter[str] = Counter()
            stop = threading.Event()
            lock = threading.Lock()

            def load(customer: str | None) -> None:
                extra = {"metadata": {"stripe_customer_id": customer}} if customer else None
                while not stop.is_set():
                    try:
                        client.chat.completions.create(
                            model="my-gpt",
                            messages=[{"role": "user", "content": "hi"}],
                            extra_body=extra,
                        )
                    except (openai.APIError, openai.APIConnectionError):
                        if proc.poll() is not None or stop.is_set():
                            return
                        continue
                    with lock:
                        answered[customer or "cus_default"] += 1

            threads = [
                threading.Thread(target=load, args=(c,)) for c in (None, None, "cus_b", "cus_b")
            ]
            for t in threads:
                t.start()
            time.sleep(4.0)
            proc.send_signal(signal.SIGTERM)  # what every deploy does
            proc.wait(90)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert sum(answered.values()) > 20, answered
    # A meter configured differently takes over what the proxy left in its journal.
    meter = TokenMeter(
        api_key="sk_test_fake", api_base=fake_stripe.url, outbox_path=tmp_path / "outbox.sqlite3"
    )
    assert meter.flush(60)
    assert meter.stats()["invalid"] == 0
    meter.close()
    sums: dict[tuple[str, str, str], int] = defaultdict(int)
    for e in fake_stripe.events():
        sums[(e.customer, e.payload["model"], e.payload["token_type"])] += e.value
    usage = upstream.usage()
    want = {}
    for customer, n in answered.items():
        want[(customer, "openai/gpt-4o", "input")] = n * usage["prompt_tokens"]
        want[(customer, "openai/gpt-4o", "output")] = n * usage["completion_tokens"]
    assert dict(sums) == want
    ids = Counter(fake_stripe.identifiers())
    assert [k for k, c in ids.items() if c > 1] == []
