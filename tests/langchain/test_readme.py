"""The README's python blocks run as written (in order, one namespace), so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "packages" / "langchain-stripe" / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(tmp_path / "ledger.sqlite3"))
    blocks = _blocks()
    assert len(blocks) >= 3
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{README.name}[python block {i}]", "exec"), namespace)

    assert "2 events in the ledger" in capsys.readouterr().out
    from stripe_token_meter.outbox import Outbox

    rows = Outbox(tmp_path / "ledger.sqlite3")._query(
        "SELECT customer_id, model, token_type, value, payload FROM events ORDER BY id"
    )
    got = [(r[0], r[1], r[2], r[3]) for r in rows]
    # LangChain names the fake's provider after its class; the answer's model names it.
    model = "openai/gpt-4o"
    assert got == [
        ("cus_NffrFeUfNV2Hib", model, "input", 12),
        ("cus_NffrFeUfNV2Hib", model, "output", 3),
        ("cus_Q1w2E3r4T5y6U7", model, "input", 12),
        ("cus_Q1w2E3r4T5y6U7", model, "output", 3),
        ("cus_NffrFeUfNV2Hib", model, "input", 12),
        ("cus_NffrFeUfNV2Hib", model, "output", 3),
    ]
    assert '"feature": "summarise"' in rows[-1][4] or '"feature":"summarise"' in rows[-1][4]
