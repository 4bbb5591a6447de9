"""`report`: long model names shown whole at any width; `--customer` counts only that
customer's rejected records; the API the events were sent with."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_testkit import Cli, Seeded
from stripe_token_meter import TokenMeter, Usage

LONG_MODEL = "acme-research/" + "-".join(["very-long-fine-tuned-deployment"] * 2) + "-2025-06-01"


def _model_column(table: str) -> str:
    """The `model` column's cells, top to bottom, joined: folded names join up again."""
    cells = []
    for line in table.splitlines():
        parts = line.split("│")
        if len(parts) > 3:
            cells.append(parts[2].strip())
    return "".join(cells)


def test_report_shows_a_long_model_name_whole_at_a_narrow_width(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.sqlite3"
    meter = TokenMeter(outbox_path=path, normalize_models=False)
    meter.record(Usage(customer_id="cus_a", model=LONG_MODEL, input_tokens=12, request_id="r1"))
    assert meter.flush(5)
    meter.close(timeout=1)
    assert len(LONG_MODEL) == 88
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("report", "--outbox", str(path))
    assert r.code == 0, r.err
    assert max(len(line) for line in r.out.splitlines()) <= 80
    assert "…" not in r.out
    assert _model_column(r.out) == LONG_MODEL


def test_report_customer_counts_only_its_own_rejected_records(cli: Cli, seeded: Seeded) -> None:
    """Seeded: one rejected record without a customer. Two more: one naming cus_known
    itself, one recorded in a `meter.customer("cus_missing")` scope."""
    meter = TokenMeter(outbox_path=seeded.path)
    meter.record(
        counts="openai",
        model="gpt-4o",
        prompt_tokens=-1,
        customer_id="cus_known",
        request_id="bad1",
    )
    with meter.customer("cus_missing"):
        meter.record(counts="openai", model="gpt-4o", prompt_tokens=-1, request_id="bad2")
    assert meter.flush(5)
    meter.close(timeout=1)
    base = ["report", "--json", "--outbox", str(seeded.path)]
    assert cli(*base).json()["rejected_records"] == 3
    assert cli(*base, "--customer", "cus_known").json()["rejected_records"] == 1
    assert cli(*base, "--customer", "cus_missing").json()["rejected_records"] == 1
    assert cli(*base, "--customer", "cus_local").json()["rejected_records"] == 0
    text = cli("report", "--outbox", str(seeded.path), "--customer", "cus_local")
    assert "rejected" not in text.out


def test_report_shows_the_api_the_events_were_sent_with(cli: Cli, seeded: Seeded) -> None:
    base = ["report", "--outbox", str(seeded.path)]
    assert cli(*base, "--json").json()["apis"] == {"v1": 6}  # local-ledger rows: never sent
    assert cli(*base, "--json", "--customer", "cus_local").json()["apis"] == {}
    assert "sent with api v1 (6 events)" in cli(*base).out


def test_report_keeps_cost_apart_from_tokens(cli: Cli, tmp_path: Path) -> None:
    """A priced meter's cost events are micro-units: summed under "costs", never as tokens."""
    from stripe_token_meter import Pricing

    path = tmp_path / "outbox.sqlite3"
    pricing = Pricing({"openai/gpt-4o": {"input": "2.50", "output": "10.00"}}, markup_percent=20)
    meter = TokenMeter(outbox_path=path, pricing=pricing)
    for i in range(3):
        meter.record(
            Usage(
                customer_id="cus_a",
                model="gpt-4o",
                input_tokens=1234,
                output_tokens=567,
                request_id=f"r{i}",
            )
        )
    assert meter.flush(5)
    meter.close(timeout=1)
    report = cli("report", "--json", "--outbox", str(path)).json()
    assert report["customers"]["cus_a"]["total"] == 3 * (1234 + 567)
    assert report["totals"]["total"] == 3 * (1234 + 567)
    assert {r["token_type"] for r in report["rows"]} == {"input", "output"}
    assert [(c["customer"], c["model"], c["total"]) for c in report["costs"]] == [
        ("cus_a", "gpt-4o", 3 * 10_506)
    ]
    assert report["events"]["total"] == 9
    table = cli("report", "--outbox", str(path))
    assert table.code == 0, table.err
    assert "31,518" in table.out
