"""Every ```python block of packages/litellm-stripe/README.md runs as written.

In this process (LiteLLM is already imported: a fresh interpreter per block would spend
most of the folder's time budget importing it), each block in its own namespace, with no
Stripe key (local ledger) and the outbox in a temporary folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import litellm_stripe
import pytest
from litellm_stripe import StripeLogger
from stripe_token_meter import TokenMeter

README = Path(litellm_stripe.__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("STRIPE_API_BASE", raising=False)
    monkeypatch.setenv("STRIPE_TOKEN_METER_OUTBOX", str(tmp_path / "outbox.sqlite3"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"readme_block_{index}"}
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    finally:
        for value in namespace.values():
            meter = value.meter if isinstance(value, StripeLogger) else value
            if isinstance(meter, TokenMeter):
                meter.close(timeout=1.0)
