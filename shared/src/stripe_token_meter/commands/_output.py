"""Where output goes: rich tables on stdout, progress and warnings on stderr, plain JSON.

Why: `--json` output must stay machine-readable (no colour codes, no wrapping), and
consoles are created per call so they write to whatever `sys.stdout` is at that moment.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from ._errors import redact


def out() -> Console:
    """Console for results (stdout); wide enough that tables do not fold in pipes."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)


def err() -> Console:
    """Console for progress and warnings (stderr), so stdout stays parseable."""
    return Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120, highlight=False)


def print_json(obj: Any) -> None:
    """Stable, plain JSON on stdout (keys sorted); key-like strings redacted."""
    sys.stdout.write(redact(json.dumps(obj, indent=2, sort_keys=True, default=str)) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """One warning line on stderr."""
    err().print(f"[yellow]warning:[/] {redact(message)}", markup=True, soft_wrap=True)


def ago(seconds: float | None) -> str:
    """`3 s`, `4 min`, `2.5 h`, `3.1 d`: ages for humans."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"
