"""The `stripe-token-meter` command: argparse and dispatch only; commands live in `commands/`.

Why thin: each subcommand is a small module that can be read and tested alone; this file
only knows their names, the global flags, and how an error becomes one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from .commands import (
    cancel,
    demo,
    errors,
    fake,
    flush,
    reconcile,
    replay,
    report,
    resolve,
    setup,
    status,
)
from .commands._config import add_global_flags
from .commands._errors import EXIT_USAGE, CliError, one_line, redact

PROG = "stripe-token-meter"
_COMMANDS = (demo, setup, report, status, flush, replay, resolve, cancel, errors, reconcile, fake)


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line saying what is wrong and where to look, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


class _RedactingFormatter(logging.Formatter):
    """Library log lines (and their tracebacks) may quote Stripe's messages: no key gets out."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def build_parser() -> argparse.ArgumentParser:
    """The parser; global flags work before or after the subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Bill LLM tokens to Stripe meters: demo, set up Stripe, inspect and "
        "deliver the local outbox.",
    )
    add_global_flags(parser, suppress=False)
    shared = _Parser(add_help=False)
    add_global_flags(shared, suppress=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub, [shared])
    return parser


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("stripe_token_meter", "stripe"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("stripe_token_meter").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed, 2 usage/config error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging()
    try:
        return int(func(args))
    except CliError as exc:
        sys.stderr.write(f"{PROG}: error: {redact(one_line(str(exc)))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
