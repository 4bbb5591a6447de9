"""A real PostgreSQL for the tests: started once per session on a unix socket.

`STRIPE_TOKEN_METER_TEST_POSTGRES` (a URL) uses a server you run. Otherwise the system's
PostgreSQL when `pg_ctl` is on PATH and we are not root (initdb refuses root), else the
`pgserver` wheel's bundled binaries. Each test gets a schema of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote


@contextmanager
def postgres_server() -> Iterator[str]:
    """A URL of a running PostgreSQL (superuser), stopped at the end."""
    env = os.environ.get("STRIPE_TOKEN_METER_TEST_POSTGRES")
    if env:
        yield env
        return
    base = tempfile.mkdtemp(prefix="stm-pg-")
    try:
        if shutil.which("pg_ctl") and shutil.which("initdb") and os.geteuid() != 0:
            yield from _system(base)
        else:
            yield from _pgserver(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _system(base: str) -> Iterator[str]:
    data = os.path.join(base, "data")
    subprocess.run(
        ["initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses='' -c unix_socket_directories={base} -c fsync=off"
    subprocess.run(
        ["pg_ctl", "-D", data, "-o", opts, "-w", "-l", os.path.join(base, "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={quote(base)}"
    finally:
        subprocess.run(["pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)


def _pgserver(base: str) -> Iterator[str]:
    import pgserver

    server = pgserver.get_server(base, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_schema(url: str, schema: str | None = None) -> str:
    """`url` with a fresh `schema` parameter (the outbox creates the schema itself)."""
    schema = schema or f"t_{uuid.uuid4().hex[:12]}"
    return url + ("&" if "?" in url else "?") + f"schema={schema}"
