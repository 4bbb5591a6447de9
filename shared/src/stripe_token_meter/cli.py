"""The `stripe-token-meter` command: argparse and dispatch only; commands live in `commands/`.

Why thin: each subcommand is a small module that can be read and tested alone; this file
only knows their names, the global flags, and how an error becomes one line and exit 2.

The command's own dependencies (rich for tables and progress, httpx for one-off API calls)
are the `cli` extra, not the core's: `pip install 'stripe-token-meter[cli]'`. Without them
the command says so in one line (exit 2) instead of a traceback, so the commands' modules
are imported only once that check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Final, NoReturn

PROG = "stripe-token-meter"
EXIT_USAGE: Final = 2
CLI_EXTRA: Final = ("rich", "httpx")
"""What `stripe-token-meter[cli]` adds to the core: checked before any command is imported."""
INSTALL_HINT: Final = "pip install 'stripe-token-meter[cli]'"


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line saying what is wrong and where to look, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


class _RedactingFormatter(logging.Formatter):
    """Library log lines (and their tracebacks) may quote Stripe's messages: no key gets out."""

    def format(self, record: logging.LogRecord) -> str:
        from .commands._errors import redact

        return redact(super().format(record))


def missing_cli_extra() -> list[str]:
    """The `cli` extra's packages this environment lacks (empty when the command can run)."""
    return [name for name in CLI_EXTRA if importlib.util.find_spec(name) is None]


def build_parser() -> argparse.ArgumentParser:
    """The parser; global flags work before or after the subcommand."""
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

    parser = _Parser(
        prog=PROG,
        description="Bill LLM tokens to Stripe meters: demo, set up Stripe, inspect and "
        "deliver the local outbox.",
    )
    add_global_flags(parser, suppress=False)
    shared = _Parser(add_help=False)
    add_global_flags(shared, suppress=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands = (
        demo,
        setup,
        report,
        status,
        flush,
        replay,
        resolve,
        cancel,
        errors,
        reconcile,
        fake,
    )
    for module in commands:
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
    missing = missing_cli_extra()
    if missing:
        sys.stderr.write(
            f"{PROG}: error: the command needs {' and '.join(missing)}, which the core "
            f"package does not install: {INSTALL_HINT}\n"
        )
        return EXIT_USAGE
    from .commands._errors import CliError, one_line, redact

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
