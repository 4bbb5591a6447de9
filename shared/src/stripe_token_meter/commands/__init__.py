"""The `stripe-token-meter` subcommands, one small module each.

Each command module exposes `register(subparsers, parents)` (its argparse subparser) and
`run(args) -> int` (its exit code); `stripe_token_meter.cli` only wires them together.
Modules starting with `_` are helpers shared by several commands.
"""
