"""The README's python blocks run as written, against a local OpenAI server and a local ledger."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.providers import OpenAIServer

README = Path(__file__).resolve().parents[2] / "packages" / "llamaindex-stripe" / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_copy_paste_example() -> None:
    blocks = _blocks()
    assert len(blocks) >= 3
    assert "instrument(meter)" in blocks[0] and "TokenMeter()" in blocks[0]


def test_readme_python_blocks_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with OpenAIServer(model="gpt-4o-2024-08-06", prompt_tokens=12, completion_tokens=5) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.delenv("STRIPE_API_KEY", raising=False)
        monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(tmp_path / "ledger.sqlite3"))
        namespace: dict[str, Any] = {"__name__": "__readme__"}
        try:
            for block in _blocks():
                exec(compile(block, str(README), "exec"), namespace)
            meter = namespace["meter"]
            assert meter.flush(5)
            # chat + stream (cus_123) and complete (cus_456): 3 calls, input + output each
            rows = meter._outbox._query(
                "SELECT customer_id, model, token_type, value FROM events ORDER BY id"
            )
            assert sorted(rows) == sorted(
                [
                    ("cus_123", "openai/gpt-4o", "input", 12),
                    ("cus_123", "openai/gpt-4o", "output", 5),
                    ("cus_123", "openai/gpt-4o", "input", 12),
                    ("cus_123", "openai/gpt-4o", "output", 5),
                    ("cus_456", "openai/gpt-4o", "input", 12),
                    ("cus_456", "openai/gpt-4o", "output", 5),
                ]
            )
            assert meter.stats()["no_usage"] == 0
            assert "Hello from the fake model" in capsys.readouterr().out
        finally:
            if "meter" in namespace:
                namespace["meter"].close(timeout=1)
