"""Every ```python block of the README runs as written (each in a fresh interpreter)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


BLOCKS = python_blocks(ROOT / "README.md")
# The core package's PyPI page: its examples must run too.
SHARED_BLOCKS = python_blocks(ROOT / "shared" / "README.md")


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


def test_shared_readme_has_examples() -> None:
    assert len(SHARED_BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS) + len(SHARED_BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path) -> None:
    blocks = BLOCKS + SHARED_BLOCKS
    env = dict(os.environ, STRIPE_TOKEN_METER_OUTBOX=str(tmp_path / "outbox.sqlite3"))
    env.pop("STRIPE_API_KEY", None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    proc = subprocess.run(
        [sys.executable, "-c", blocks[index]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"README block {index} failed:\n{blocks[index]}\n{proc.stderr[-3000:]}"
    )
