"""The README's least-privilege roles work: an owner migrates, the app only reads and writes."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from stripe_token_meter.errors import OutboxError
from stripe_token_meter.storage import open_store
from support.events import stored_event

README = Path(__file__).resolve().parents[2] / "README.md"


def _as(url: str, user: str, schema: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = (parts.query + "&" if parts.query else "") + f"schema={schema}"
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, query, ""))


def test_the_readme_roles(postgres_url: str) -> None:
    [block] = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)
    tag = uuid.uuid4().hex[:8]
    owner, app, schema = f"stm_owner_{tag}", f"stm_app_{tag}", f"stm_{tag}"
    statements = (
        block.replace("stm_owner", owner)
        .replace("stm_app", app)
        .replace("stripe_token_meter", schema)
        .replace("'...'", "'x'")
    )
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for statement in statements.split(";"):
            code = "\n".join(
                line for line in statement.splitlines() if not line.strip().startswith("--")
            )
            if code.strip():
                admin.execute(code.encode())

    app_url = _as(postgres_url, app, schema)
    with pytest.raises(OutboxError, match="cannot set up schema"):
        open_store(app_url).counts()  # the app cannot create the tables itself
    first = open_store(_as(postgres_url, owner, schema))
    assert first.counts()["pending"] == 0  # the owner created them
    first.close()

    store = open_store(app_url)
    store.add([stored_event("a"), stored_event("b")], api="v2")
    rows = store.claim("w", 10, 30)
    store.mark_delivered([rows[0].id])
    store.mark_dead([(rows[1].id, "invalid_customer", "x")])
    assert store.requeue_dead() == 1
    store.reject("missing_customer", "customer_id", "none", {})
    store.set_meta("k", "v")
    store.record_adjustment(rows[0].event.identifier, "e", "cancelled", None)
    assert store.prune_delivered(0.0) == 0
    counts = store.counts()
    store.close()
    assert (counts["pending"], counts["cancelled"], counts["rejected"]) == (1, 1, 1)
    reader = open_store(app_url, readonly=True)
    assert reader.counts()["pending"] == 1
    reader.close()
