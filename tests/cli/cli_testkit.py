"""Helpers shared by the `stripe-token-meter` command tests (imported by name: the
directory is put on sys.path by this folder's conftest)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "sk_test_CLIsecretVALUE0123456789"
"""The key given to commands in tests; asserted never to appear in any output."""


@dataclass
class Run:
    """One command's exit code and captured output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Run]


def dead_port() -> int:
    """A local port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seeded:
    """The seeded outbox and the FakeStripe its events went to."""

    path: Path
    fake: Any

    def flags(self, *, api_base: str | None = None) -> list[str]:
        """Global flags pointing a command at this outbox and FakeStripe."""
        return [
            "--outbox",
            str(self.path),
            "--api-key",
            KEY,
            "--api-base",
            api_base or self.fake.url,
        ]
