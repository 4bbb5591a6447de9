"""Configuration problems: one line on stderr, exit code 2, what to do; never the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli_testkit import KEY, Cli, dead_port


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stripe-token-meter: error: ")
    return lines[0]


def test_publishable_key_is_rejected_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    secret = "pk_test_" + KEY[8:]
    r = cli("status", "--api-key", secret, "--outbox", str(tmp_path / "x.sqlite3"))
    assert r.code == 2
    line = _one_line(r.err)
    assert "publishable key (pk_)" in line and "restricted key (rk_)" in line
    assert secret not in r.err + r.out


def test_unknown_key_kind_and_env_source(cli: Cli, monkeypatch: Any) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "whsec_abc")
    line = _one_line(cli("report").err)
    assert line.startswith("stripe-token-meter: error: STRIPE_API_KEY: expected a Stripe secret")


def test_bad_flags_are_one_line(cli: Cli) -> None:
    for argv in (
        ["report", "--since", "last tuesday"],
        ["setup", "--pricing", "free"],
        ["--api", "v3", "status"],
        ["flush", "--timeout", "soon"],
        ["nonsense"],
    ):
        r = cli(*argv)
        assert r.code == 2, argv
        assert "see `" in _one_line(r.err)
    assert "--api-base: expected an http(s) URL" in _one_line(
        cli("status", "--api-base", "ftp://x").err
    )


def test_missing_and_unreadable_outbox(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    line = _one_line(cli("report", "--outbox", str(missing)).err)
    assert f"no outbox at {missing} (--outbox)" in line
    assert not missing.exists()  # never created by looking
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not sqlite" * 100)
    r = cli("status", "--outbox", str(garbage))
    assert r.code == 2 and "cannot read the outbox" in _one_line(r.err)


def test_no_network_names_the_url(cli: Cli) -> None:
    url = f"http://127.0.0.1:{dead_port()}"
    r = cli("setup", "--api-key", KEY, "--api-base", url)
    assert r.code == 2
    assert f"cannot reach Stripe at {url}" in _one_line(r.err)


def test_wrong_key_is_reported_without_the_key(cli: Cli, fake_stripe: Any) -> None:
    fake_stripe.valid_keys = {"sk_test_other"}
    r = cli("setup", "--api-key", KEY, "--api-base", fake_stripe.url)
    assert r.code == 2
    line = _one_line(r.err)
    assert "refused the API key" in line and "sk_test_***" in line
    assert KEY[-4:] not in line  # not even the last four Stripe echoes back


def test_python_dash_m_and_help() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    r = subprocess.run(
        [sys.executable, "-m", "stripe_token_meter.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0
    for command in (
        "demo",
        "setup",
        "report",
        "status",
        "flush",
        "replay",
        "cancel",
        "fake-stripe",
    ):
        assert command in r.stdout
    none = subprocess.run(
        [sys.executable, "-m", "stripe_token_meter.cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert none.returncode == 2
