"""Importing the package or an adapter, and the local ledger, never load the stripe SDK,
nor the CLI's rich.

The SDK is ~95 % of the package's import time (benchmarks/import_cost.py); it is loaded
when a meter with a key is built. rich (and httpx) are the CLI's, in the `cli` extra: the
core never imports them, and the command says how to install them when they are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]

LEDGER = """
import sys
from stripe_token_meter import TokenMeter, Usage
meter = TokenMeter(outbox_path=sys.argv[1])
meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=3, request_id="r1"))
assert meter.flush(10)
assert meter.stats()["local"] == 1, meter.stats()
meter.close()
print("stripe" in sys.modules, "rich" in sys.modules, "httpx" in sys.modules)
"""


def _run(code: str, *args: str, check: bool = True) -> str:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("STRIPE_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=check
    )
    return (out.stdout + out.stderr).strip().splitlines()[-1]


@pytest.mark.parametrize(
    "module", ["stripe_token_meter", "langchain_stripe", "litellm_stripe", "llamaindex_stripe"]
)
def test_import_does_not_load_the_sdk(module: str) -> None:
    assert _run(f"import sys, {module}; print('stripe' in sys.modules)") == "False"


@pytest.mark.parametrize("module", ["stripe_token_meter", "stripe_token_meter.testing"])
def test_import_does_not_load_the_cli_extra(module: str) -> None:
    code = f"import sys, {module}; print('rich' in sys.modules, 'httpx' in sys.modules)"
    assert _run(code) == "False False"


def test_local_ledger_runs_without_the_sdk_or_the_cli_extra(tmp_path: Path) -> None:
    assert _run(LEDGER, str(tmp_path / "ledger.sqlite3")) == "False False False"


def test_the_core_does_not_depend_on_the_cli_extra() -> None:
    """rich and httpx are in `stripe-token-meter[cli]`, not in the core's dependencies."""
    text = (ROOT / "shared" / "pyproject.toml").read_text()
    runtime = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = set(re.findall(r'"([A-Za-z0-9_.-]+)', runtime))
    assert names == {"stripe", "aiohttp", "anyio"}
    extras = text.split("[project.optional-dependencies]", 1)[1]
    assert re.search(r'cli = \[[^\]]*"rich>=[^\]]*"httpx>=', extras)


BLOCKED_CLI = """
import sys
sys.modules[sys.argv[1]] = None  # as if `pip install stripe-token-meter` without [cli]
from stripe_token_meter.cli import main
code = main(["status"])
print("exit", code, "rich.console" in sys.modules)
"""


@pytest.mark.parametrize("missing", ["rich", "httpx"])
def test_the_cli_without_its_extra_says_how_to_install_it(missing: str) -> None:
    env = dict(os.environ)
    env.pop("STRIPE_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, missing], env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "exit 2 False"
    assert out.stderr.splitlines() == [
        f"stripe-token-meter: error: the command needs {missing}, which the core package "
        "does not install: pip install 'stripe-token-meter[cli]'"
    ]


def test_a_meter_with_a_key_loads_it_when_built(tmp_path: Path) -> None:
    code = (
        "import sys; from stripe_token_meter import TokenMeter; "
        "m = TokenMeter('sk_test_x', api_base='http://127.0.0.1:9', outbox_path=sys.argv[1]); "
        "print('stripe' in sys.modules); m.close(timeout=0)"
    )
    assert _run(code, str(tmp_path / "o.sqlite3")) == "True"


def test_psycopg_is_imported_only_for_a_postgresql_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL extra is optional: the core and a SQLite meter never import it."""
    code = (
        "import sys; from stripe_token_meter import TokenMeter; "
        "import stripe_token_meter.outbox, stripe_token_meter.storage; "
        "m = TokenMeter(outbox_path=sys.argv[1]); m.close(); a = 'psycopg' in sys.modules; "
        "TokenMeter(outbox_path='postgresql://u@127.0.0.1:9/db').close(timeout=0); "
        "print(a, 'psycopg' in sys.modules)"
    )
    monkeypatch.setenv("STRIPE_TOKEN_METER_JOURNAL_DIR", str(tmp_path / "journal"))
    assert _run(code, str(tmp_path / "o.sqlite3")) == "False True"
