"""Backends for the contract suite: each test runs once per backend, on a fresh outbox."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stripe_token_meter.storage import OutboxStore, open_store

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL server for the session (see support/postgres.py)."""
    from support.postgres import postgres_server

    with postgres_server() as url:
        yield url


class Clock:
    """`time.time()` as the stores see it, moved by the test (leases, retention, 24 h)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time()
        monkeypatch.setattr(time, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh outbox of the backend lives (a file, or a URL with its own schema)."""
    if request.param == "sqlite":
        return str(tmp_path / "outbox.sqlite3")
    from support.postgres import with_schema

    url: str = request.getfixturevalue("postgres_url")
    return with_schema(url)


@pytest.fixture
def open_stores(target: str) -> Iterator[Callable[..., OutboxStore]]:
    """Open stores on `target` (several: as several processes would)."""
    opened: list[OutboxStore] = []

    def make(**kwargs: Any) -> OutboxStore:
        store = open_store(target, **kwargs)
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(open_stores: Callable[..., OutboxStore]) -> OutboxStore:
    return open_stores()
