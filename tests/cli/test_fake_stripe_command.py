"""`fake-stripe`: a standalone FakeStripe other commands (and apps) can point at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
