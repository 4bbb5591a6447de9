"""`fake-stripe`: a standalone FakeStripe other commands (and apps) can point at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import stripe
from cli_testkit import KEY, Cli


def test_fake_stripe_serves_until_sigterm(cli: Cli) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_token_meter.cli", "fake-stripe", "--customer", "cus_dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("url="):
                url = line.strip().removeprefix("url=")
        assert url is not None
        r = cli("setup", "--json", "--api-key", KEY, "--api-base", url)
        assert r.code == 0, r.err
        assert r.json()["steps"][0]["state"] == "exists"  # the meter --meter defaults to
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "FakeStripe stopped" in err


def test_fake_stripe_passes_fault_flags_and_dumps_identifiers(tmp_path: Path) -> None:
    dump = tmp_path / "identifiers.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_token_meter.cli",
            "fake-stripe",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--auto-customers",
            "--fail-every",
            "3",
            "--fail-status",
            "500,429",
            "--retry-after",
            "2.5",
            "--fault-path",
            "/v1/billing/meter_events",
            "--latency",
            "0.2",
            "--dump-identifiers",
            str(dump),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        for line in proc.stdout:
            banner.append(line.strip())
            if line.startswith("identifiers_url="):
                break
        url = next(b for b in banner if b.startswith("url=")).removeprefix("url=")
        assert url.startswith("http://127.0.0.1:")
        assert "fault latency 0.2s before every answer" in banner
        assert (
            "fault fail every 3 requests on paths starting with /v1/billing/meter_events "
            "with 500,429 (Retry-After on 429/503: 2.5)"
        ) in banner
        client = stripe.StripeClient(
            "sk_test_cli_fake",
            base_addresses={"api": url, "meter_events": url},
            http_client=stripe.RequestsClient(),
            max_network_retries=0,
        )
        outcomes: list[str] = []
        for i in range(6):
            started = time.perf_counter()
            try:
                client.v1.billing.meter_events.create(
                    {
                        "event_name": "token-billing-tokens",  # the default configured meter
                        "identifier": f"cli-{i}",
                        "payload": {"stripe_customer_id": "cus_any", "value": "1"},
                    }
                )
                outcomes.append("ok")
            except stripe.StripeError as exc:
                retry_after = (exc.headers or {}).get("Retry-After")
                outcomes.append(f"{exc.http_status} Retry-After={retry_after}")
            assert time.perf_counter() - started >= 0.2
        assert outcomes == ["ok", "ok", "500 Retry-After=None", "ok", "ok", "429 Retry-After=2.5"]
        with urllib.request.urlopen(url + "/_fake/identifiers", timeout=10) as response:
            live = json.loads(response.read())
        assert list(live["identifiers"]) == ["cli-0", "cli-1", "cli-3", "cli-4"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "4 events accepted" in err
    assert json.loads(dump.read_text(encoding="utf-8")) == live


def test_fake_stripe_help_and_bad_fault_flags(cli: Cli) -> None:
    r = cli("fake-stripe", "--help")
    assert r.code == 0
    for flag in (
        "--latency",
        "--rate-limit",
        "--fail-every",
        "--fail-status",
        "--retry-after",
        "--drop-every",
        "--drop-after-processing",
        "--fault-path",
        "--session-ttl",
        "--dump-identifiers",
        "/_fake/identifiers",
    ):
        assert flag in r.out, flag
    r = cli("fake-stripe", "--drop-after-processing")
    assert r.code == 2
    assert "--drop-after-processing needs --drop-every N" in r.err
    r = cli("fake-stripe", "--fail-every", "2", "--fail-status", "429,abc")
    assert r.code == 2
    assert "expected HTTP statuses like 429 or 429,500" in r.err
