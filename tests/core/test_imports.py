"""Importing the package or an adapter, and the local ledger, never load the stripe SDK.

The SDK is ~95 % of the package's import time (benchmarks/import_cost.py); it is loaded
when a meter with a key is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LEDGER = """
import sys
from stripe_token_meter import TokenMeter, Usage
meter = TokenMeter(outbox_path=sys.argv[1])
meter.record(Usage(customer_id="cus_a", model="openai/gpt-4o", input_tokens=3, request_id="r1"))
assert meter.flush(10)
assert meter.stats()["local"] == 1, meter.stats()
meter.close()
print("stripe" in sys.modules)
"""


def _run(code: str, *args: str) -> str:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("STRIPE_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "module", ["stripe_token_meter", "langchain_stripe", "litellm_stripe", "llamaindex_stripe"]
)
def test_import_does_not_load_the_sdk(module: str) -> None:
    assert _run(f"import sys, {module}; print('stripe' in sys.modules)") == "False"


def test_local_ledger_runs_without_the_sdk(tmp_path: Path) -> None:
    assert _run(LEDGER, str(tmp_path / "ledger.sqlite3")) == "False"


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
