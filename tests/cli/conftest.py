"""Fixtures for the `stripe-token-meter` command: run it in-process, seed an outbox.

The outbox is seeded by real TokenMeters delivering to FakeStripe through the SDK, so
every status a row can have (delivered, dead, pending, local, rejected) comes from the
core itself, never from hand-written SQL.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter import TokenMeter, Usage
from stripe_token_meter.cli import main

# `cli_testkit` (helpers shared by these test modules) lives beside this file.
sys.path.append(str(Path(__file__).resolve().parent))

from cli_testkit import KEY, Cli, Run, Seeded, dead_port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No configuration leaks in from the machine; the default outbox is under tmp_path."""
    for name in (
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "STRIPE_METER_EVENT_NAME",
        "STRIPE_TOKEN_METER_OUTBOX",
        "COLUMNS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`cli("status", "--json")` runs `main(argv)` in this process and captures its output."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        assert KEY not in captured.out + captured.err, "an API key was printed"
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def seeded(fake_stripe: Any, tmp_path: Path) -> Iterator[Seeded]:
    """An outbox holding every kind of row, with exact, known token counts:

    delivered: ok1 (cus_known, openai/gpt-4o: input 1000, output 200)
    dead:      dead1 (cus_missing, unknown to Stripe: input 300, output 50)
    rejected:  one usage record with no customer (missing_customer)
    local:     loc1 (cus_local, recorded without a key: input 70, output 7)
    pending:   pend1 (cus_known, openai/gpt-4o-mini: input 40, output 4), Stripe unreachable
    """
    fake_stripe.auto_customers = False
    fake_stripe.create_customer("cus_known")
    path = tmp_path / "outbox.sqlite3"
    meter = TokenMeter(api_key=KEY, api_base=fake_stripe.url, outbox_path=path, api="v1")
    meter.record(_usage("cus_known", "openai/gpt-4o", 1000, 200, "ok1"))
    meter.record(_usage("cus_missing", "openai/gpt-4o", 300, 50, "dead1"))
    meter.record(
        counts="openai",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=10,
        completion_tokens=5,
        request_id="nocus",
    )
    assert meter.flush(10)
    meter.close(timeout=1)

    local = TokenMeter(outbox_path=path)
    local.record(_usage("cus_local", "openai/gpt-4o", 70, 7, "loc1"))
    assert local.flush(5)
    local.close(timeout=1)

    down = TokenMeter(
        api_key=KEY,
        api_base=f"http://127.0.0.1:{dead_port()}",
        outbox_path=path,
        api="v1",
        retry_base_delay=0.05,
    )
    down.record(_usage("cus_known", "openai/gpt-4o-mini", 40, 4, "pend1"))
    assert not down.flush(0.5)
    down.close(timeout=0.0)
    assert set(fake_stripe.identifiers()) == {
        "ok1:input:token-billing-tokens",
        "ok1:output:token-billing-tokens",
    }
    yield Seeded(path, fake_stripe)


def _usage(customer: str, model: str, inp: int, out: int, request_id: str) -> Usage:
    return Usage(
        customer_id=customer,
        model=model,
        input_tokens=inp,
        output_tokens=out,
        request_id=request_id,
    )


__all__ = ["Cli", "Run"]
