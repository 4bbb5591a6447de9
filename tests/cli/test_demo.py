"""`demo`: real LangChain, LiteLLM and LlamaIndex calls through the adapters; what it
prints is what Stripe received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from typing import Any

from cli_testkit import Cli


def test_demo_totals_equal_what_fake_stripe_received(cli: Cli, fake_stripe: Any) -> None:
    """The frameworks' part: the spend part (its own customer and meters) is tested in
    test_demo_spend.py."""
    r = cli("demo", "--json", "--burst", "0", "--no-spend", "--api-base", fake_stripe.url)
    assert r.code == 0, r.out + r.err
    d = json.loads(r.out)
    assert d["ok"] is True and d["problems"] == [] and d["skipped"] == {}
    assert d["mode"] == "external" and d["llm_calls"] == 30
    frameworks = {c["framework"]: c for c in d["customers"]}
    assert set(frameworks) == {"LangChain", "LiteLLM", "LlamaIndex"}

    events = fake_stripe.events(event_name="token-billing-tokens")
    received: dict[str, int] = defaultdict(int)
    for e in events:
        received[e.customer] += e.value
    assert d["totals"] == dict(received)
    assert {c["id"]: c["tokens"] for c in d["customers"]} == dict(received)
    assert {c["id"]: c["events"] for c in d["customers"]} == {
        cid: len(fake_stripe.events(customer=cid)) for cid in received
    }
    assert d["events"] == len(events)
    lines = {(x["customer"], x["model"], x["token_type"]): x["value"] for x in d["received"]}
    assert lines == fake_stripe.totals()

    # cached and reasoning tokens reached Stripe as their own token types, streaming included
    for c in d["customers"]:
        types = {x["token_type"] for x in d["received"] if x["customer"] == c["id"]}
        assert types == {"input", "cached_input", "output", "reasoning"}, c
        assert c["calls"] == 10 and c["streamed"] == 3

    # the invoices follow from those totals
    for cid, tokens in received.items():
        inv = d["invoices_cents"][cid]
        assert inv["payg"]["total"] == round(tokens * 0.15)
        over = max(0, tokens - 100_000)
        assert inv["fixed_overage"] == {
            "fee": 20000,
            "overage_tokens": over,
            "overage": round(over * 0.1),
            "total": 20000 + round(over * 0.1),
        }
        usage = round(tokens * 0.15)
        assert inv["credits"]["applied"] == min(usage, 10000)
        assert inv["credits"]["due"] == usage - min(usage, 10000)
    assert max(received.values()) > 100_000  # one customer pays overage

    again = cli(
        "demo", "--json", "--burst", "0", "--no-spend", "--frameworks", "langchain",
        "--api-base", fake_stripe.url,
    )  # fmt: skip
    assert again.code == 0  # customers and prices found again, not duplicated
    assert len(fake_stripe.customers()) == 3


def test_demo_on_a_fresh_machine_runs_its_own_fake_stripe() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stripe_token_meter.cli",
            "demo",
            "--frameworks",
            "langchain",
            "--burst",
            "200",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for text in (
        "What FakeStripe received",
        "Acme Robotics",
        "openai/gpt-4o",
        "reasoning",
        "cached_input",
        "events/s",
        "pay as you go",
        "fixed fee + overage",
        "credit burndown",
    ):
        assert text in r.stdout, text
    assert "problem" not in r.stdout


def test_demo_refuses_live_keys(cli: Cli) -> None:
    r = cli("demo", "--stripe", "--api-key", "rk_live_" + "x" * 24)
    assert r.code == 2 and "refuses live keys (rk_live" in r.err
    r = cli("demo", "--stripe")
    assert r.code == 2 and "needs a Stripe key" in r.err
    assert cli("demo", "--frameworks", "haystack").code == 2
