"""Where output goes: rich tables on stdout, progress and warnings on stderr, plain JSON.

Why: `--json` output must stay machine-readable (no colour codes, no wrapping), and
consoles are created per call so they write to whatever `sys.stdout` is at that moment.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

from ._errors import redact


def _width(tty: bool) -> int | None:
    """A terminal's own width, or `$COLUMNS` if set; else 120, so tables in pipes do not
    fold at rich's default of 80."""
    return None if tty or os.environ.get("COLUMNS") else 120


def out() -> Console:
    """Console for results (stdout)."""
    return Console(file=sys.stdout, width=_width(sys.stdout.isatty()), highlight=False)


def err() -> Console:
    """Console for progress and warnings (stderr), so stdout stays parseable."""
    return Console(file=sys.stderr, width=_width(sys.stderr.isatty()), highlight=False)


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
