"""`stripe-token-meter demo`: the README's first command, on a fresh machine with no key.

Why: one command that shows the whole path working: FakeStripe (or your Stripe sandbox
with `--stripe`), a meter, customers and prices made through the real SDK, real
LangChain / LiteLLM / LlamaIndex calls through the three adapters, delivery, and what
each customer's invoice would be under the seed's three pricing models; then spend
control: a prepaid customer refused once its credit grant is spent (`demo_spend.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..meter import TokenMeter
from ..testing import FakeStripe
from ._config import Config, load_config
from ._demo_calls import FrameworkRun, FrameworkUnavailable
from ._demo_output import DemoResult, print_result
from ._errors import EXIT_FAILED, EXIT_OK, CliError
from ._output import err, print_json
from ._provision import Options, Provisioner
from .demo_spend import PREPAID_NAME, run_spend
from .pricing import PRICING_MODELS, Pricing, add_pricing_flags

FAKE_KEY = "sk_test_stripe_token_meter_demo"
"""Any sk_test_ key works with FakeStripe; a real key is never sent to it."""


@dataclasses.dataclass(frozen=True)
class DemoCustomer:
    framework: str
    label: str
    name: str
    email: str


CUSTOMERS = (
    DemoCustomer("langchain", "LangChain", "Acme Robotics", "acme@demo.stripe-token-meter.dev"),
    DemoCustomer("litellm", "LiteLLM", "Globex AI", "globex@demo.stripe-token-meter.dev"),
    DemoCustomer("llamaindex", "LlamaIndex", "Initech Labs", "initech@demo.stripe-token-meter.dev"),
)
FRAMEWORK_NAMES = tuple(c.framework for c in CUSTOMERS)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="bill LangChain, LiteLLM and LlamaIndex calls to FakeStripe and show the invoices",
        description="Start FakeStripe in-process (or use --stripe / --api-base), create a "
        "meter, prices and three customers, run real LangChain, LiteLLM and LlamaIndex calls "
        "(their fake models, streaming included) through the adapters, deliver, and print "
        "what Stripe received and each customer's invoice under three pricing models; then "
        "give a prepaid customer a $0.50 credit grant and show CreditGuard refusing its "
        "LangChain calls once it is spent (--no-spend to skip).",
    )
    p.add_argument(
        "--stripe",
        action="store_true",
        help="use your Stripe sandbox (test-mode key only: sk_test_/rk_test_) instead of FakeStripe",
    )
    p.add_argument(
        "--calls", type=int, default=10, metavar="N", help="LLM calls per framework (default 10)"
    )
    p.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORK_NAMES),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(FRAMEWORK_NAMES)}",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=2000,
        metavar="N",
        help="FakeStripe only: also time N extra events on a separate throughput meter "
        "(default 2000; 0 to skip)",
    )
    p.add_argument(
        "--no-spend",
        dest="spend",
        action="store_false",
        help="skip the spend-control part (a prepaid customer with a $0.50 credit grant, "
        "refused by CreditGuard once it is spent)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_pricing_flags(p)
    p.set_defaults(func=run)


def _frameworks(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in FRAMEWORK_NAMES]
    if bad or not names:
        raise CliError(f"--frameworks: expected some of {','.join(FRAMEWORK_NAMES)}, got {text!r}")
    return names


def _demo_key(cfg: Config, real: bool) -> str:
    """The key the demo sends: never a live one, and none of yours to a FakeStripe it started."""
    if not real and not cfg.api_base:
        return FAKE_KEY  # in-process FakeStripe: a configured key is not used at all
    if cfg.live:
        raise CliError(
            f"demo refuses live keys ({cfg.key_kind} from {cfg.key_source}): use a test-mode "
            "sk_test_/rk_test_ key (or no key at all for FakeStripe)"
        )
    if real:
        key = cfg.require_key("demo --stripe")
        if cfg.key_kind not in ("sk_test", "rk_test"):
            raise CliError("demo --stripe needs a test-mode key: sk_test_... or rk_test_...")
        return key
    return cfg.api_key or FAKE_KEY


@contextlib.contextmanager
def _target(cfg: Config, real: bool) -> Iterator[tuple[Config, FakeStripe | None]]:
    """The Stripe to bill: your sandbox, `--api-base`, or a FakeStripe started here."""
    if real or cfg.api_base:
        yield cfg, None
        return
    with FakeStripe() as fake:
        yield dataclasses.replace(cfg, api_base=fake.url), fake


@contextlib.contextmanager
def _outbox_path(cfg: Config) -> Iterator[Path | str]:
    """The demo never writes into your real outbox unless `--outbox` says so (a file or a
    PostgreSQL URL)."""
    if cfg.outbox_source == "--outbox":
        yield cfg.outbox_path
        return
    with tempfile.TemporaryDirectory(prefix="stripe-token-meter-demo-") as tmp:
        yield Path(tmp) / "outbox.sqlite3"


def _load_runner(name: str) -> Callable[[TokenMeter, str, int], FrameworkRun]:
    module = importlib.import_module(f"stripe_token_meter.commands.demo_{name}")
    runner: Callable[[TokenMeter, str, int], FrameworkRun] = module.run
    return runner


def _wait_recorded(meter: TokenMeter, expected: int, timeout: float) -> bool:
    """LiteLLM reports from its own logging thread: wait until every call reached the meter."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = meter.stats()
        if s["recorded"] + s["queued"] + s["no_usage"] + s["adapter_errors"] >= expected:
            return True
        time.sleep(0.01)
    return False


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    names = _frameworks(args.frameworks)
    if args.calls < 1:
        raise CliError("--calls: must be at least 1")
    key = _demo_key(cfg, args.stripe)
    pricing = Pricing.from_args(args)
    started = time.perf_counter()
    with _target(cfg, args.stripe) as (target, fake), _outbox_path(cfg) as outbox_path:
        result = DemoResult(
            mode="fake" if fake is not None else ("external" if target.api_base else "stripe"),
            url=target.url,
            api=target.api,
            event_name=target.event_name,
            pricing=pricing,
            outbox=cfg.outbox_label if cfg.outbox_source == "--outbox" else None,
        )
        progress = err()
        progress.print(f"[dim]Stripe: {result.describe_target()}; setting up...[/]")
        client = dataclasses.replace(target, api_key=key).client("demo")
        prov = Provisioner(
            client, target, Options(pricing=pricing, models=PRICING_MODELS), dry_run=False
        )
        prov.ensure_meter()
        prov.ensure_product()
        prov.ensure_prices()
        result.meter_id = prov.meter_id
        result.prices = dict(prov.price_ids)
        meter = TokenMeter(
            api_key=key,
            api_base=target.api_base,
            event_name=target.event_name,
            outbox_path=outbox_path,
            api=target.api,
            token_types="detailed",
        )
        try:
            _run_frameworks(meter, prov, names, args.calls, result)
            expected = sum(r.calls for r in result.runs)
            if not _wait_recorded(meter, expected, timeout=15.0):
                result.problems.append("some LLM calls never reached the meter within 15 s")
            meter.flush(timeout=60.0)
            result.delivered_at = time.perf_counter()
            result.collect(meter._outbox, fake)
            if args.burst > 0 and result.mode != "stripe":  # real Stripe: test-mode rate limits
                result.throughput = _burst(target, key, prov, args.burst)
        finally:
            meter.close(timeout=5.0)
        if args.spend:
            _spend(prov, target, key, fake, result)
    result.seconds = time.perf_counter() - started
    if args.json:
        print_json(result.to_json())
    else:
        print_result(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def _run_frameworks(
    meter: TokenMeter, prov: Provisioner, names: list[str], calls: int, result: DemoResult
) -> None:
    """One framework per customer; a framework that is not installed is skipped, with why."""
    progress = err()
    runners: list[tuple[DemoCustomer, Callable[[TokenMeter, str, int], FrameworkRun], str]] = []
    for c in CUSTOMERS:
        if c.framework not in names:
            continue
        progress.print(f"[dim]importing {c.label}...[/]")
        try:
            runner = _load_runner(c.framework)  # imports first: not part of the timings
        except FrameworkUnavailable as exc:
            result.skipped[c.framework] = str(exc)
            continue
        step = prov.ensure_customer(c.email, c.name)
        assert step.id is not None
        result.customers[step.id] = c.name
        result.frameworks[step.id] = c.label
        runners.append((c, runner, step.id))
    result.first_call = time.perf_counter()
    for c, runner, customer_id in runners:
        progress.print(f"[dim]{c.label}: {calls} calls for {c.name} ({customer_id})...[/]")
        try:
            result.runs.append(runner(meter, customer_id, calls))
        except Exception as exc:  # a framework version we do not know: say so, go on
            result.problems.append(f"{c.label} failed: {type(exc).__name__}: {exc}")
    result.last_call = time.perf_counter()


def _spend(
    prov: Provisioner, target: Config, key: str, fake: FakeStripe | None, result: DemoResult
) -> None:
    """The spend-control part, after the frameworks' delivery so it changes none of their
    numbers; its failures become problems (exit 1), never a crash of the demo."""
    err().print(f"[dim]spend control: {PREPAID_NAME}, $0.50 of credit, calls until refused...[/]")
    try:
        spend = run_spend(prov, target, key, fake)
    except CliError as exc:
        result.problems.append(f"spend control failed: {exc}")
        return
    except Exception as exc:  # an SDK or framework version we do not know: say so, go on
        result.problems.append(f"spend control failed: {type(exc).__name__}: {exc}")
        return
    if isinstance(spend, str):
        result.spend_skipped = spend
        return
    result.spend = spend
    result.problems.extend(spend.problems())


def _burst(target: Config, key: str, prov: Provisioner, calls: int) -> dict[str, Any]:
    """Time raw delivery on a separate FakeStripe meter, so invoices stay the frameworks' own."""
    burst_cfg = dataclasses.replace(target, event_name=f"{target.event_name}-throughput")
    burst_prov = Provisioner(prov.client, burst_cfg, prov.opts, dry_run=False)
    burst_prov.ensure_meter()
    customers = list(prov.customer_ids.values()) or ["cus_demo"]
    with tempfile.TemporaryDirectory(prefix="stripe-token-meter-burst-") as tmp:
        meter = TokenMeter(
            api_key=key,
            api_base=target.api_base,
            event_name=burst_cfg.event_name,
            outbox_path=Path(tmp) / "outbox.sqlite3",
            api=target.api,
        )
        try:
            start = time.perf_counter()
            for i in range(calls // 2 or 1):
                meter.record(
                    customer_id=customers[i % len(customers)],
                    model="openai/gpt-4o-mini",
                    input_tokens=100 + i % 50,
                    output_tokens=20 + i % 7,
                    request_id=f"burst-{i}",
                )
            recorded = time.perf_counter()
            meter.flush(timeout=60.0)
            done = time.perf_counter()
            delivered = meter.stats()["delivered"]
        finally:
            meter.close(timeout=2.0)
    return {
        "events": delivered,
        "record_seconds": round(recorded - start, 4),
        "seconds": round(done - start, 3),
        "events_per_second": round(delivered / max(done - start, 1e-9)),
    }


__all__ = ["CUSTOMERS", "FAKE_KEY", "register", "run"]
