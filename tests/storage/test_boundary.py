"""SQL lives only in the storage modules: everything else calls `OutboxStore` methods."""

from __future__ import annotations

import re
from pathlib import Path

import stripe_token_meter

SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE)\b.+\b(FROM|INTO|SET|WHERE)\b|\.execute\(|\.query\("
)


def test_no_sql_outside_storage() -> None:
    root = Path(stripe_token_meter.__file__).parent
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if path.parent.name != "storage"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert found == []


def test_query_is_not_part_of_the_interface() -> None:
    from stripe_token_meter.storage import OutboxStore

    assert not hasattr(OutboxStore, "query") and not hasattr(OutboxStore, "_query")
