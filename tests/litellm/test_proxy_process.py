"""The real LiteLLM proxy in its own process, stopped with SIGTERM under load.

`litellm --config` with `callbacks: litellm_stripe.proxy_logger`, a model alias routed
to a local OpenAI-compatible server, the real openai client calling the proxy from four
threads, and FakeStripe behind the real stripe SDK. Every call the proxy answered must be
billed exactly once, to its customer, under the deployment's model (not the alias),
including the calls still in the dead proxy's journal, which a differently configured
meter (no default customer) takes over.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import openai
import pytest
from litellm_testkit import proxy_process
from stripe_token_meter import TokenMeter
from support.providers import OpenAIServer


def _env(fake_url: str, tmp: Path) -> dict[str, str]:
    return dict(
        STRIPE_API_KEY="sk_test_fake",
        STRIPE_API_BASE=fake_url,
        STRIPE_DEFAULT_CUSTOMER_ID="cus_default",
        STRIPE_TRUST_CLIENT_FIELDS="true",
        STRIPE_CUSTOMER_SOURCE="metadata,key_metadata",
        STRIPE_TOKEN_METER_OUTBOX=str(tmp / "outbox.sqlite3"),
    )


@pytest.mark.timeout(400)
def test_sigterm_under_load_bills_every_answered_call_once(
    fake_stripe: Any, tmp_path: Path
) -> None:
    with (
        OpenAIServer(response_id="chatcmpl-7") as upstream,  # ids repeated, as Ollama does
        proxy_process(tmp_path, upstream.base_url, _env(fake_stripe.url, tmp_path)) as (
            proc,
            client,
        ),
    ):
        try:
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
