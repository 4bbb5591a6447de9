"""The benchmark scripts still run (`--quick`, a tiny version) and their exactly-once checks pass.

No timing is asserted here: the figures are the benchmarks' business, not the suite's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "throughput.py",
    "backlog.py",
    "multiprocess.py",
    "caller_overhead.py",
    "http_clients.py",
    "durability.py",
    "aggregation.py",
    "outbox_backends.py",
    "limits.py",
    "guard.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(script: str) -> None:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checks = [line for line in proc.stdout.splitlines() if line.startswith("| check")]
    assert checks, proc.stdout[-2000:]
    assert all("| OK |" in line for line in checks), "\n".join(checks)
