"""`stripe-token-meter setup`: the meter, product and prices (seed steps 1-3) in one command.

Why: getting the meter's payload keys and the metered prices right by hand is where
integrations go wrong; this creates exactly what TokenMeter sends to, idempotently
(looked up before created, prices by lookup key), and `--dry-run` shows the plan first.
`--cost` adds the meter and price for `TokenMeter(pricing=...)`'s cost events.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..errors import InvalidUsage
from ..meter import DEFAULT_COST_EVENT_NAME
from ..usage import check_text
from ._config import Config, load_config
from ._cost_meter import ensure_cost_meter, ensure_cost_price
from ._errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, redact
from ._output import out, print_json, warn
from ._provision import Options, Provisioner, Step
from .pricing import PRICING_MODELS, Pricing, PricingModel, add_pricing_flags

_STYLE = {
    "exists": "green",
    "created": "bold green",
    "reactivated": "bold green",
    "replaced": "bold yellow",
    "create": "cyan",
    "reactivate": "cyan",
    "differs": "yellow",
    "failed": "red",
    "unchecked": "dim",
}


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "setup",
        parents=parents,
        help="create the meter, product and prices (idempotent)",
        description="Create (idempotently) the meter, a product and the metered prices for a "
        "pricing model through the Stripe API; optionally customers and subscriptions.",
    )
    p.add_argument(
        "--pricing",
        choices=[*PRICING_MODELS, "all"],
        default="payg",
        help="pricing model to create prices for (default payg)",
    )
    add_pricing_flags(p)
    p.add_argument(
        "--product-id", default="stm_llm_tokens", help="product id (default stm_llm_tokens)"
    )
    p.add_argument("--product-name", default="LLM tokens", help="product name")
    p.add_argument(
        "--lookup-prefix",
        metavar="PREFIX",
        help="prefix of the prices' lookup keys (default stm.<event name>)",
    )
    p.add_argument(
        "--customer-key",
        default="stripe_customer_id",
        help="meter payload key holding the customer id (TokenMeter's customer_payload_key)",
    )
    p.add_argument("--value-key", default="value", help="meter payload key holding the token count")
    p.add_argument(
        "--replace-prices",
        action="store_true",
        help="when a lookup key's price has other terms, create a new price and move the key",
    )
    p.add_argument(
        "--customer-email",
        action="append",
        default=[],
        metavar="EMAIL",
        help="also create this customer unless one with the email exists (repeatable)",
    )
    p.add_argument(
        "--subscribe",
        action="store_true",
        help="subscribe the --customer-email customers to the pricing model's prices",
    )
    p.add_argument(
        "--cost",
        action="store_true",
        help="also create the cost meter and its price (0.0001 cents per micro-unit) for "
        "TokenMeter(pricing=...)'s cost events",
    )
    p.add_argument(
        "--cost-event-name",
        default=DEFAULT_COST_EVENT_NAME,
        metavar="NAME",
        help=f"the cost meter's event_name (TokenMeter's cost_event_name; default "
        f"{DEFAULT_COST_EVENT_NAME})",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    p.add_argument("--json", action="store_true", help="print the steps as JSON")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace, models: tuple[PricingModel, ...]) -> Options:
    return Options(
        pricing=Pricing.from_args(args),
        models=models,
        product_id=args.product_id,
        product_name=args.product_name,
        lookup_prefix=args.lookup_prefix,
        customer_key=args.customer_key,
        value_key=args.value_key,
        replace_prices=args.replace_prices,
    )


def provision(
    prov: Provisioner, emails: list[str], subscribe: bool, cost_event_name: str | None = None
) -> list[Step]:
    """The seed's steps in order: meter, product, prices (and with `cost_event_name` the
    cost meter and its price), then customers and subscriptions."""
    prov.ensure_meter()
    prov.ensure_product()
    prov.ensure_prices()
    if cost_event_name is not None:
        meter = ensure_cost_meter(prov, cost_event_name)
        prefix = prov.opts.lookup_prefix or f"stm.{cost_event_name}"
        ensure_cost_price(prov, meter, prov.opts.pricing.currency, prefix)
    for email in emails:
        prov.ensure_customer(email)
    if subscribe:
        for email in emails:
            for model in prov.opts.models:
                prov.ensure_subscription(email, model)
    return prov.steps


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    models: tuple[PricingModel, ...] = PRICING_MODELS if args.pricing == "all" else (args.pricing,)
    if args.subscribe and not args.customer_email:
        warn("--subscribe without --customer-email: nobody to subscribe")
    client = None
    if cfg.api_key is not None or not args.dry_run:
        client = cfg.client("setup")
    cost_event_name = None
    if args.cost:
        try:
            cost_event_name = check_text("--cost-event-name", args.cost_event_name, 100)
        except InvalidUsage as exc:
            raise CliError(str(exc)) from None
        if cost_event_name == cfg.event_name:
            raise CliError(
                f"--cost-event-name must differ from the tokens meter's event name "
                f"({cfg.event_name}): cost events need their own meter",
                EXIT_USAGE,
            )
    prov = Provisioner(client, cfg, options_from_args(args, models), dry_run=args.dry_run)
    steps = provision(prov, args.customer_email, args.subscribe, cost_event_name)
    failed = any(s.state == "failed" for s in steps)
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "target": _target(cfg),
                "event_name": cfg.event_name,
                "steps": [s.to_json() for s in steps],
            }
        )
    else:
        _print(steps, cfg, args.dry_run, client is not None)
    return EXIT_FAILED if failed else EXIT_OK


def _target(cfg: Config) -> str:
    if cfg.api_base:
        return cfg.api_base
    return "Stripe live mode" if cfg.live else "Stripe test mode"


def _print(steps: list[Step], cfg: Config, dry_run: bool, checked: bool) -> None:
    console = out()
    title = f"{'Plan' if dry_run else 'Setup'} for {_target(cfg)}"
    if dry_run:
        title += (
            " (dry run: nothing created" + ("" if checked else "; no key, nothing looked up") + ")"
        )
    table = Table(title=title, title_justify="left")
    table.add_column("object", no_wrap=True)
    table.add_column("name / lookup key", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("what")
    for s in steps:
        what = s.detail + (f"\n[yellow]{s.note}[/]" if s.note else "")
        style = _STYLE.get(s.state, "")
        table.add_row(s.kind, s.name, f"[{style}]{s.state}[/]", s.id or "", redact(what))
    console.print(table)
    changed = sum(s.state in ("created", "reactivated", "replaced") for s in steps)
    failed = sum(s.state == "failed" for s in steps)
    if not dry_run:
        console.print(
            f"{changed} object(s) created or changed, {len(steps) - changed - failed} unchanged"
            + (f", [red]{failed} failed[/]." if failed else ".")
        )
    if cfg.live and not dry_run:
        console.print("[bold red]Live mode:[/] these objects are in your live account.")
